"""Serving benchmark: Classify over a real ``camseg serve`` against bare ONNX Runtime.

What is measured
----------------
One model (an exported camseg classifier: ``--arch``, ``--size``; random weights are
enough for speed) is served by a real ``camseg serve`` process on loopback. An
asyncio gRPC client, in this process (the server is another), keeps ``c`` Classify
calls in flight (c = 1, 8, 32) for ``--seconds`` and records images per second and
the p50/p99 latency, with dynamic batching on and off, for PNG images and for raw
uint8 arrays (no decode: how a high-rate caller would send), one image a call and 8.
Each row also gives the CPU seconds the client and the server spent per image
(``time.process_time`` here, ``/proc/<pid>/stat`` for the server), so the server's
share is known. In the same run, bare ONNX Runtime ``session.run`` on the same model
and prepared images gives the baseline: batch 1 and batch ``--max-batch``. Explain
(one-pass ONNX and torch Grad-CAM) and Segment come last, at concurrency 32 and 8.

Goals, reported whether met or not (at 128 px): Classify at concurrency 32 reaches
85% of bare ONNX Runtime at batch 32 with raw uint8 input and 70% with PNG input; at
concurrency 1 its p50 latency is at most 1 ms above bare ``session.run`` at batch 1;
Explain through the one-pass ONNX path reaches 80% of Classify's throughput (both
PNG, concurrency 32). Client and server share this machine's cores, so the client's
own cost counts against the server here.

Run from the repository root: ``python bench/serve_bench.py``. It prints a table and
writes ``bench/results/serve_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camseg.data.synth import SynthConfig, synthesize  # noqa: E402
from camseg.models import ModelSpec, build  # noqa: E402
from camseg.models.export import export_model  # noqa: E402
from camseg.models.modeldir import save_model  # noqa: E402
from camseg.models.runtime import make_session  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2 as pb  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc  # noqa: E402
from services.process import spawn  # noqa: E402

logger = logging.getLogger("serve_bench")
GOAL_RAW = 0.85  # Classify c=32, raw uint8, vs bare ONNX Runtime at batch 32
GOAL_PNG = 0.70  # the same with PNG input
GOAL_P50_MS = 1.0  # Classify c=1 p50 minus bare session.run p50 at batch 1
GOAL_EXPLAIN = 0.80  # Explain (one-pass ONNX) vs Classify throughput, PNG, c=32
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    rpc: str
    engine: str
    batching: bool | None
    concurrency: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    images_per_call: int = 1
    client_cpu_ms_per_image: float | None = None
    server_cpu_ms_per_image: float | None = None


def make_repo(root: Path, arch: str, size: int) -> Path:
    data = synthesize(root / "data", SynthConfig(n=64, size=size, seed=0))
    model = build(ModelSpec(arch=arch, input_size=size)).eval()
    version = root / "repo" / arch / "1"
    save_model(version, model, {
        "architecture": arch, "spec": asdict(model.spec), "classes": ["normal", "tumor"],
        "gradcam_layer": model.cam_layer, "layers": model.layer_names, "metrics": {},
        "data": {"path": str(data)}})
    export_model(version, data_dir=data)
    return root / "repo"


def images(root: Path, n: int) -> list[bytes]:
    files = sorted((root / "data" / "images").glob("*.png"))[:n]
    return [f.read_bytes() for f in files]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its waited-for children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


async def load(port: int, rpc: str, make: Any, concurrency: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.SegmentationStub(ch)
        call = getattr(stub, rpc)
        await call(make(0), timeout=60)  # warm-up
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    await call(make(i), timeout=60)
                    latencies.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return latencies, errors


def row(rpc: str, engine: str, batching: bool | None, c: int, lat: list[float], errors: int, seconds: float,
        per_call: int = 1, cpu: tuple[float, float] | None = None) -> Row:
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    n = max(len(lat) * per_call, 1)
    return Row(rpc, engine, batching, c, len(lat) * per_call / seconds, 1e3 * q[49], 1e3 * q[98], len(lat), errors,
               per_call, 1e3 * cpu[0] / n if cpu else None, 1e3 * cpu[1] / n if cpu else None)


def measured(server_pid: int, port: int, rpc: str, make: Any, c: int, seconds: float) -> tuple[
        list[float], int, tuple[float, float]]:
    """One load, with the CPU seconds the client (this process) and the server spent on it."""
    client0, server0 = time.process_time(), cpu_seconds(server_pid)
    lat, err = asyncio.run(load(port, rpc, make, c, seconds))
    return lat, err, (time.process_time() - client0, cpu_seconds(server_pid) - server0)


def bare_ort(model_dir: Path, x: np.ndarray, batch: int, seconds: float, threads: int) -> Row:
    session = make_session(model_dir / "model.onnx", threads=threads)
    xb = np.ascontiguousarray(np.repeat(x, batch // len(x) + 1, axis=0)[:batch])
    session.run(["probabilities"], {"input": xb})
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(["probabilities"], {"input": xb})
        lat.append(time.perf_counter() - t0)
    return row("session.run", f"onnxruntime, batch {batch}", None, 1, lat, 0, sum(lat), per_call=batch)


def main() -> int:
    p = argparse.ArgumentParser(description="Classify/Explain/Segment over a real server vs bare ONNX Runtime")
    p.add_argument("--arch", default="resnet")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_bench.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    levels = [int(c) for c in args.concurrency.split(",")]
    top = max(levels)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), args.arch, args.size)
        pngs = images(Path(tmp), 32)
        x = np.stack([np.asarray(Image.open(io.BytesIO(b)), dtype=np.float32)[None] / 255.0 for b in pngs])
        raws = [np.asarray(Image.open(io.BytesIO(b))) for b in pngs]

        def raw(i: int) -> Any:
            a = raws[i % len(raws)]
            return pb.Image(raw=pb.RawArray(dtype=a.dtype.name, shape=list(a.shape), data=a.tobytes()))

        def png(i: int) -> Any:
            return pb.Image(encoded=pngs[i % len(pngs)])

        classify_inputs = {
            "PNG": (lambda i: pb.ClassifyRequest(images=[png(i)]), 1),
            "raw uint8": (lambda i: pb.ClassifyRequest(images=[raw(i)]), 1),
            "raw uint8, 8 a call": (lambda i: pb.ClassifyRequest(images=[raw(8 * i + k) for k in range(8)]), 8),
            "PNG, 8 a call": (lambda i: pb.ClassifyRequest(images=[png(8 * i + k) for k in range(8)]), 8),
        }
        for batching in (True, False):
            server = spawn(repo, *([] if batching else ["--no-batching"]),
                           env={"CAMSEG_TORCH_THREADS": str(args.threads)})
            port, pid = server.port, server.proc.pid
            try:
                for name, (make, per_call) in classify_inputs.items():
                    if not batching and name != "PNG":
                        continue
                    for c in levels:
                        lat, err, cpu = measured(pid, port, "Classify", make, c, args.seconds)
                        rows.append(row("Classify", f"server, {name}", batching, c, lat, err, args.seconds,
                                        per_call, cpu))
                if batching:
                    for rpc, method, engine, c in (("Explain", pb.CAM_METHOD_GRADCAM, "onnx one-pass", top),
                                                   ("Explain", pb.CAM_METHOD_GRADCAM, "onnx one-pass", 8),
                                                   ("Explain", pb.CAM_METHOD_LAYERCAM, "onnx one-pass", 8),
                                                   ("Explain", pb.CAM_METHOD_FUSED, "torch", 8),
                                                   ("Segment", pb.CAM_METHOD_GRADCAM, "onnx one-pass", 8)):
                        def make(i: int, rpc: str = rpc, method: Any = method) -> Any:
                            img = [png(i)]
                            opts = pb.ExplainOptions(method=method)
                            if rpc == "Explain":
                                return pb.ExplainRequest(images=img, options=opts)
                            return pb.SegmentRequest(images=img, options=opts)
                        lat, err, cpu = measured(pid, port, rpc, make, c, args.seconds)
                        rows.append(row(rpc, f"{engine} ({pb.CamMethod.Name(method)}), PNG", True, c, lat, err,
                                        args.seconds, 1, cpu))
            finally:
                server.stop(timeout=60)
        model_dir = repo / args.arch / "1"
        rows.append(bare_ort(model_dir, x, 1, args.seconds, args.threads))
        rows.append(bare_ort(model_dir, x, args.max_batch, args.seconds, args.threads))

    def find(rpc: str, engine: str, c: int, batching: bool | None = True) -> Row:
        return next(r for r in rows if r.rpc == rpc and r.engine == engine and r.batching == batching
                    and r.concurrency == c)

    bare1, bare_batched = rows[-2], rows[-1]
    goals = {
        "classify_raw_c32_vs_bare_batch": (find("Classify", "server, raw uint8", top).images_per_s
                                           / bare_batched.images_per_s, GOAL_RAW),
        "classify_png_c32_vs_bare_batch": (find("Classify", "server, PNG", top).images_per_s
                                           / bare_batched.images_per_s, GOAL_PNG),
        "classify_c1_p50_minus_bare_ms": (find("Classify", "server, raw uint8", 1).p50_ms - bare1.p50_ms,
                                          GOAL_P50_MS),
        "explain_onepass_vs_classify_c32": (find("Explain", "onnx one-pass (CAM_METHOD_GRADCAM), PNG", top).images_per_s
                                            / find("Classify", "server, PNG", top).images_per_s, GOAL_EXPLAIN),
    }
    t = Table(title=f"camseg serve ({args.arch}, {args.size}px, {args.threads} threads) vs bare ONNX Runtime")
    for col in ("rpc", "engine", "batching", "c", "images/s", "p50 ms", "p99 ms", "calls", "errors",
                "client CPU ms/img", "server CPU ms/img"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.rpc, r.engine, "" if r.batching is None else ("on" if r.batching else "off"),
                  str(r.concurrency), f"{r.images_per_s:.1f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.calls),
                  str(r.errors), "" if r.client_cpu_ms_per_image is None else f"{r.client_cpu_ms_per_image:.2f}",
                  "" if r.server_cpu_ms_per_image is None else f"{r.server_cpu_ms_per_image:.2f}")
    console.print(t)
    met = {}
    for name, (value, goal) in goals.items():
        ok = value <= goal if name.endswith("_ms") else value >= goal
        met[name] = {"value": value, "goal": goal, "met": ok}
        shown = f"{value:.2f} ms (goal <= {goal:g})" if name.endswith("_ms") else \
            f"{100 * value:.0f}% (goal >= {100 * goal:.0f}%)"
        console.print(f"{name}: {shown}: {'met' if ok else 'NOT met'}")
    out = args.out
    out.write_text(json.dumps({
        "benchmark": "camseg serve Classify/Explain/Segment vs bare onnxruntime session.run",
        "environment": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average": os.getloadavg()[0]},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
        "goals": met,
    }, indent=2) + "\n")
    console.print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
