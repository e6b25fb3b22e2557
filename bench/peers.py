"""Peer benchmark: camseg serve beside the Python model servers a user would pick instead.

What is measured
----------------
One exported camseg classifier (``--arch`` resnet at ``--size`` 128 px, random weights;
made as ``serve_bench.py`` makes it) is served, one server at a time, by:

- ``camseg serve`` with dynamic batching, and without (``--no-batching``);
- KServe's Python model server (``kserve`` 0.21.0, a custom ``kserve.Model``), gRPC v2;
- MLServer 1.7.1 (a custom ``MLModel``: MLServer ships no ONNX runtime), gRPC v2,
  ``parallel_workers: 0`` so inference runs in the server process, adaptive batching off;
- LitServe 0.2.19 (a ``LitAPI``), over HTTP with JSON: LitServe speaks no gRPC.

``mlserver-adaptive`` (MLServer's adaptive batching) and ``litserve-batch`` (LitServe's
batching), each up to ``--peer-max-batch`` requests waiting ``--peer-batch-ms``, run when
named in ``--servers``; the default run leaves them out to stay short.

Every peer runs the same ONNX file through ONNX Runtime 1.31.1 (CPU) with ``--threads``
intra-op threads and one inter-op thread, in a virtual environment this script makes for it
under ``.venv-peers/<name>`` (``python -m venv`` + ``pip install`` of the pinned versions in
``PEERS``; kept while its pins do not change). camseg serves with ``CAMSEG_TORCH_THREADS``
= ``--threads``. A peer that does not install is reported and skipped.

One client harness (``bench/peer_client.py``), a separate process, drives each server:
the v2 gRPC ``ModelInfer`` call (``tritonclient.grpc``'s stub and messages) for every server
that speaks it, camseg included once it answers ``inference.GRPCInferenceService/ServerLive``
(until then camseg.v1 ``Classify`` with the image as a raw float32 array; the table says
which), and HTTP for LitServe. One float32 image (1, 1, H, W) a call, c = 1, 8, 32 calls
in flight for ``--seconds`` each after ``--warmup``. Each image has one pixel at 0 and one at
1 so camseg's min-max scaling of float arrays leaves it as every other server sees it; the
harness checks each answer against its own ONNX Runtime session (``max |dp|``).

Right after each point, with the server idle, bare ONNX Runtime ``session.run`` runs in the
harness process (the same threads) at batch c for as long; a server's share at c is its
images/s over bare ONNX Runtime's at batch c in that pair. Server CPU per image is the
server's process tree's utime + stime (``/proc/<pid>/stat``) over the recorded window,
divided by the images answered.

The machine has 2 cores: the harness and the server share them, so the client's own cost
counts against every server alike (client CPU per image is reported too).

Run from the repository root: ``python bench/peers.py`` (``make bench-peers``). It prints a
table and writes ``bench/results/peers.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_bench import images, make_repo  # noqa: E402

from services.process import spawn  # noqa: E402

logger = logging.getLogger("peers")
ORT = "onnxruntime==1.31.1"
PEERS: dict[str, list[str]] = {
    "kserve": ["kserve==0.21.0", ORT],
    "mlserver": ["mlserver==1.7.1", ORT],
    "litserve": ["litserve==0.2.19", ORT],
}
SERVERS = ("camseg", "camseg-nobatch", "kserve", "mlserver", "litserve")
BATCHING_PEERS = ("mlserver-adaptive", "litserve-batch")  # by name only: --servers ...,mlserver-adaptive
PEER_DIR = ROOT / "bench" / "peer_servers"
MODEL_NAME = "classifier"  # bench/peer_servers/common.py


@dataclass
class Server:
    name: str
    label: str
    batching: str
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    protocol: str = "v2"
    model: str = MODEL_NAME
    stop: Any = None
    log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_venv(name: str, root: Path, console: Console) -> Path | str:
    """The peer's virtual environment's python, made if missing or its pins changed; or why it failed."""
    venv = root / name
    stamp = venv / ".installed"
    want = "\n".join(PEERS[name])
    if stamp.is_file() and stamp.read_text() == want:
        return venv / "bin" / "python"
    shutil.rmtree(venv, ignore_errors=True)
    console.print(f"[bold]{name}[/]: making {venv} ({', '.join(PEERS[name])})")
    steps = ([sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *PEERS[name]])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
            return f"did not install: {lines[-1] if lines else f'exit {done.returncode}'}"
    stamp.write_text(want)
    return venv / "bin" / "python"


def wait_v2(address: str, model: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    async def ready() -> bool:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = v2_grpc.GRPCInferenceServiceStub(ch)
            try:
                reply = await stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=2)
                return bool(reply.ready)
            except grpc.aio.AioRpcError:
                return False

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        if asyncio.run(ready()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout:.0f} s")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout:.0f} s")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (LitServe's workers are its children), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind by a leader that exited


def start(name: str, python: Path | None, model: Path, repo: Path, tmp: Path, args: argparse.Namespace) -> Server:
    """Start one server and wait until it answers; the returned Server knows how to stop it."""
    env = {**os.environ, "PEER_MODEL": str(model), "PEER_THREADS": str(args.threads),
           "PEER_SPINNING": "1" if args.peer_spinning else "0", "OMP_NUM_THREADS": str(args.threads)}
    if name.startswith("camseg"):
        batched = name == "camseg"
        served = spawn(repo, *([] if batched else ["--no-batching"]),
                       env={"CAMSEG_TORCH_THREADS": str(args.threads)})
        return Server(name, "camseg serve", "dynamic" if batched else "off", served.proc,  # type: ignore[arg-type]
                      served.address, "camseg", args.arch, lambda: served.stop(timeout=60), served.log)
    assert python is not None
    log = tmp / f"{name}.log"
    http_port, grpc_port = free_port(), free_port()
    env.update(PEER_HTTP_PORT=str(http_port), PEER_GRPC_PORT=str(grpc_port))
    if name.startswith("mlserver"):
        home = tmp / name
        (home / MODEL_NAME).mkdir(parents=True, exist_ok=True)
        (home / "settings.json").write_text(json.dumps({
            "http_port": http_port, "grpc_port": grpc_port, "metrics_port": free_port(), "parallel_workers": 0,
            "debug": False}))
        (home / MODEL_NAME / "model-settings.json").write_text(json.dumps({
            "name": MODEL_NAME, "implementation": "mlserver_model.OnnxClassifier",
            **({"max_batch_size": args.peer_max_batch, "max_batch_time": args.peer_batch_ms / 1e3}
               if name == "mlserver-adaptive" else {"max_batch_size": 0})}))
        env["PYTHONPATH"] = str(PEER_DIR)
        cmd = [str(python.parent / "mlserver"), "start", str(home)]
        label = "MLServer 1.7.1"
        adaptive = name.endswith("adaptive")
        batching = f"adaptive ({args.peer_max_batch}, {args.peer_batch_ms:g} ms)" if adaptive else "off"
    elif name == "kserve":
        cmd = [str(python), str(PEER_DIR / "kserve_server.py")]
        label, batching = "KServe 0.21.0 Python server", "none"
    else:
        cmd = [str(python), str(PEER_DIR / "litserve_server.py")]
        label, batching = "LitServe 0.2.19", "off"
        if name == "litserve-batch":
            env.update(PEER_MAX_BATCH=str(args.peer_max_batch), PEER_BATCH_TIMEOUT=str(args.peer_batch_ms / 1e3))
            batching = f"on ({args.peer_max_batch}, {args.peer_batch_ms:g} ms)"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
    server = Server(name, label, batching, proc, f"127.0.0.1:{grpc_port}", "v2", log=log)
    server.stop = lambda: stop_group(proc)
    try:
        if name.startswith("litserve"):
            server.address, server.protocol = f"127.0.0.1:{http_port}", "http"
            wait_http(f"http://127.0.0.1:{http_port}/health", proc, args.start_timeout)
        else:
            wait_v2(server.address, MODEL_NAME, proc, args.start_timeout)
    except RuntimeError:
        server.stop()
        raise
    return server


def harness(args: argparse.Namespace, inputs: Path, model: Path, out: Path, server: Server) -> dict[str, Any]:
    assert server.proc is not None
    cmd = [sys.executable, str(ROOT / "bench" / "peer_client.py"), "--levels", args.concurrency,
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--inputs", str(inputs), "--reference-model", str(model), "--out", str(out),
           "--protocol", server.protocol, "--address", server.address, "--model", server.model,
           "--pid", str(server.proc.pid)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def inputs_of(tmp: Path, n: int) -> np.ndarray:
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)), dtype=np.float32)[None] / 255.0 for b in images(tmp, n)])
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # min 0, max 1: min-max scaling (camseg's, of float arrays) is identity
    return np.ascontiguousarray(x)


def main() -> int:
    p = argparse.ArgumentParser(description="camseg serve beside KServe, MLServer and LitServe, and bare ONNX Runtime")
    p.add_argument("--arch", default="resnet")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=5.0, help="recorded seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each point")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads in every server")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"any of {','.join(SERVERS + BATCHING_PEERS)} (default: all but the last two)")
    p.add_argument("--peer-max-batch", type=int, default=32, help="the batching peers' largest batch")
    p.add_argument("--peer-batch-ms", type=float, default=2.0, help="the batching peers' longest wait")
    p.add_argument("--peer-spinning", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX Runtime's spin-wait in the peers' sessions (its default; camseg turns it off)")
    p.add_argument("--venvs", type=Path, default=ROOT / ".venv-peers")
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=max(Console().width, 180))
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVERS + BATCHING_PEERS))
    if unknown:
        p.error(f"unknown servers: {', '.join(unknown)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[dict[str, Any]] = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = make_repo(tmp, args.arch, args.size)
        model = repo / args.arch / "1" / "model.onnx"
        inputs = tmp / "inputs.npy"
        np.save(inputs, inputs_of(tmp, 32))
        for name in names:
            python: Path | None = None
            if name.split("-")[0] in PEERS:
                venv = ensure_venv(name.split("-")[0], args.venvs, console)
                if isinstance(venv, str):
                    console.print(f"[red]{name}: {venv}[/]")
                    results.append({"server": name, "error": venv})
                    continue
                python = venv
            console.print(f"[bold]{name}[/]: starting")
            try:
                server = start(name, python, model, repo, tmp, args)
            except (RuntimeError, OSError) as e:
                log = (tmp / f"{name}.log").read_text()[-2000:] if (tmp / f"{name}.log").is_file() else ""
                console.print(f"[red]{name} did not start: {e}[/]\n{log}")
                results.append({"server": name, "error": f"did not start: {e}"})
                continue
            try:
                served = harness(args, inputs, model, tmp / f"{name}.json", server)
            except subprocess.CalledProcessError as e:
                console.print(f"[red]{name}: the harness failed (exit {e.returncode})[/]")
                results.append({"server": name, "error": f"harness failed (exit {e.returncode})"})
                continue
            finally:
                server.stop()
            results.append({"server": name, "label": server.label, "batching": server.batching, **served})
    table = Table(title=f"{args.arch} {args.size} px, {args.threads} ONNX Runtime threads, one image a call, "
                        f"{args.seconds:g} s a point (client and server share {os.cpu_count()} cores)")
    for col in ("server", "protocol", "batching", "c", "images/s", "p50 ms", "p99 ms", "server CPU ms/img",
                "client CPU ms/img", "bare ORT img/s (batch c)", "bare p50 ms", "share of bare", "errors", "max |dp|"):
        table.add_column(col, justify="left" if col in ("server", "protocol", "batching") else "right")
    for r in results:
        if "error" in r:
            table.add_row(r["server"], "", "", "", r["error"])
            continue
        bare_of = {b["batch"]: b for b in r["bare"]}
        for pt in r["points"]:
            b = bare_of.get(pt["concurrency"])
            pt["bare_images_per_s"] = b["images_per_s"] if b else None
            pt["share_of_bare"] = pt["images_per_s"] / b["images_per_s"] if b else None
            table.add_row(r["label"], r["protocol"], r["batching"], str(pt["concurrency"]), f"{pt['images_per_s']:.0f}",
                          f"{pt['p50_ms']:.2f}", f"{pt['p99_ms']:.2f}", f"{pt['server_cpu_ms_per_image']:.2f}",
                          f"{pt['client_cpu_ms_per_image']:.2f}", f"{b['images_per_s']:.0f}" if b else "",
                          f"{b['p50_ms']:.2f}" if b else "", f"{100 * pt['share_of_bare']:.0f}%" if b else "",
                          str(pt["errors"]),
                          f"{r['max_abs_diff']:.1e}", end_section=pt["concurrency"] == levels[-1])
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "camseg serve beside KServe, MLServer, LitServe; bare onnxruntime session.run beside each",
        "environment": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average_start": load_start, "load_average_end": os.getloadavg()[0]},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "peers": PEERS,
        "servers": results,
    }, indent=2) + "\n")
    console.print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
