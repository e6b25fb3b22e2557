"""Serving benchmark: Classify over a real ``camseg serve`` against bare ONNX Runtime.

What is measured
----------------
One model (an exported camseg classifier: ``--arch``, ``--size``; random weights are
enough for speed) is served by a real ``camseg serve`` process on loopback. An
asyncio gRPC client keeps ``c`` Classify calls of one image each in flight
(c = 1, 8, 32) for ``--seconds`` and records images per second and the p50/p99
latency, with dynamic batching on and off, for PNG images and for raw uint8 arrays (no
decode: how a high-rate caller would send). In the same run, bare ONNX Runtime
``session.run`` on the same model and images gives the baseline: batch 1 and batch
``--max-batch``. Explain (one-pass ONNX and torch Grad-CAM) and Segment images per
second come last, at concurrency 8.

Goal, reported whether met or not: at concurrency 32, the server reaches at least 85%
of bare ONNX Runtime's batched throughput. Client and server share this machine's
cores, so the client's own cost counts against the server here.

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
from camseg.export import export_model  # noqa: E402
from camseg.modeldir import save_model  # noqa: E402
from camseg.models import ModelSpec, build  # noqa: E402
from camseg.runtime import make_session  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2 as pb  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc  # noqa: E402
from services.process import spawn  # noqa: E402

logger = logging.getLogger("serve_bench")
GOAL = 0.85


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
        per_call: int = 1) -> Row:
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return Row(rpc, engine, batching, c, len(lat) * per_call / seconds, 1e3 * q[49], 1e3 * q[98], len(lat), errors)


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
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_bench.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), args.arch, args.size)
        pngs = images(Path(tmp), 32)
        x = np.stack([np.asarray(Image.open(io.BytesIO(b)), dtype=np.float32)[None] / 255.0 for b in pngs])

        raws = [np.asarray(Image.open(io.BytesIO(b))) for b in pngs]

        def classify(i: int) -> Any:
            return pb.ClassifyRequest(images=[pb.Image(encoded=pngs[i % len(pngs)])])

        def classify_raw(i: int) -> Any:
            a = raws[i % len(raws)]
            return pb.ClassifyRequest(images=[pb.Image(raw=pb.RawArray(dtype=a.dtype.name, shape=list(a.shape),
                                                                         data=a.tobytes()))])

        for batching in (True, False):
            server = spawn(repo, *([] if batching else ["--no-batching"]),
                           env={"CAMSEG_TORCH_THREADS": str(args.threads)})
            port = server.port
            try:
                for c in levels:
                    lat, err = asyncio.run(load(port, "Classify", classify, c, args.seconds))
                    rows.append(row("Classify", "server, PNG", batching, c, lat, err, args.seconds))
                if batching:
                    for c in levels:
                        lat, err = asyncio.run(load(port, "Classify", classify_raw, c, args.seconds))
                        rows.append(row("Classify", "server, raw uint8", batching, c, lat, err, args.seconds))
                if batching:
                    for rpc, method, engine in (("Explain", pb.CAM_METHOD_GRADCAM, "onnx one-pass"),
                                                ("Explain", pb.CAM_METHOD_LAYERCAM, "onnx one-pass"),
                                                ("Explain", pb.CAM_METHOD_FUSED, "torch"),
                                                ("Segment", pb.CAM_METHOD_GRADCAM, "onnx one-pass")):
                        def make(i: int, rpc: str = rpc, method: Any = method) -> Any:
                            img = [pb.Image(encoded=pngs[i % len(pngs)])]
                            opts = pb.ExplainOptions(method=method)
                            if rpc == "Explain":
                                return pb.ExplainRequest(images=img, options=opts)
                            return pb.SegmentRequest(images=img, options=opts)
                        lat, err = asyncio.run(load(port, rpc, make, 8, args.seconds))
                        rows.append(row(rpc, f"{engine} ({pb.CamMethod.Name(method)})", True, 8, lat, err,
                                        args.seconds))
            finally:
                server.stop(timeout=60)
        model_dir = repo / args.arch / "1"
        rows.append(bare_ort(model_dir, x, 1, args.seconds, args.threads))
        rows.append(bare_ort(model_dir, x, args.max_batch, args.seconds, args.threads))
    bare_batched = rows[-1].images_per_s
    top = max(c for c in levels)
    served = next(r for r in rows if r.rpc == "Classify" and r.engine == "server, PNG" and r.batching
                  and r.concurrency == top)
    ratio = served.images_per_s / bare_batched
    t = Table(title=f"camseg serve ({args.arch}, {args.size}px, {args.threads} threads) vs bare ONNX Runtime")
    for col in ("rpc", "engine", "batching", "concurrency", "images/s", "p50 ms", "p99 ms", "calls", "errors"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.rpc, r.engine, "" if r.batching is None else ("on" if r.batching else "off"),
                  str(r.concurrency), f"{r.images_per_s:.1f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.calls),
                  str(r.errors))
    console.print(t)
    console.print(f"server at concurrency {top} with batching: {served.images_per_s:.1f} images/s = "
                  f"{100 * ratio:.0f}% of bare ONNX Runtime at batch {args.max_batch} ({bare_batched:.1f}); "
                  f"goal {100 * GOAL:.0f}%: {'met' if ratio >= GOAL else 'not met'}")
    out = args.out
    out.write_text(json.dumps({
        "benchmark": "camseg serve Classify/Explain/Segment vs bare onnxruntime session.run",
        "environment": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "platform": platform.platform()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
        "goal": {"ratio_required": GOAL, "ratio": ratio, "met": ratio >= GOAL},
    }, indent=2) + "\n")
    console.print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
