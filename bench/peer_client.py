"""The client harness of ``bench/peers.py``: one process that loads one server, and bare ONNX Runtime.

It keeps ``c`` calls in flight against one server for ``--seconds`` at each
concurrency and reports images per second, p50/p99 latency, and the CPU seconds the
server's process tree (``/proc/<pid>/stat``: utime + stime, children included) and this
process spent per image. One image a call, float32, shape (1, 1, H, W). The protocols:

- ``v2``: the Open Inference Protocol's gRPC ``ModelInfer`` (``inference.GRPCInferenceService``),
  with the stub and messages of ``tritonclient.grpc``; the request is built once per
  image (``raw_input_contents``) and reused, so the client's cost is the call itself.
- ``camseg``: the v2 call when the server answers ``inference.GRPCInferenceService/ServerLive``,
  otherwise ``camseg.v1.Segmentation/Classify`` with the image as a raw float32 array.
- ``http``: ``POST /predict`` with JSON ``{"shape", "data": base64 float32}`` (LitServe), one
  keep-alive HTTP/1.1 connection per in-flight call, over asyncio streams (Nagle on, as
  ``http.client`` leaves it).

Every answer's probabilities are checked against this process's own ONNX Runtime session
on the same images (``max_abs_diff`` in the report), so a server that answers the wrong
thing shows. After each point, with the server idle, this process's session runs bare
``session.run`` at batch c for as long (the same threads), so each pair is measured as close
in time as it can be on a machine whose load drifts.

Results go to ``--out`` as JSON. Run by ``bench/peers.py``; not meant to be called by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.gen.camseg.v1 import camseg_pb2 as pb  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GRPC_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
Call = Callable[[int, int], Awaitable[npt.NDArray[np.float32]]]


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime (and waited-for children's) of ``pid`` and every live descendant, from /proc."""
    total, stack, seen = 0.0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
            for task in os.listdir(f"/proc/{p}/task"):
                stack.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def quantiles_ms(lat: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return 1e3 * q[49], 1e3 * q[98]


async def drive(call: Call, c: int, seconds: float, warmup: float, pid: int) -> dict[str, Any]:
    """``c`` workers calling back to back: ``warmup`` seconds unrecorded, then ``seconds`` recorded."""
    latencies: list[float] = []
    errors: list[str] = []

    async def run(end: float, record: bool) -> None:
        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    await call(w, i)
                    if record:
                        latencies.append(time.perf_counter() - t0)
                except (grpc.aio.AioRpcError, OSError, RuntimeError) as e:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                i += c

        await asyncio.gather(*(worker(w) for w in range(c)))

    await run(time.perf_counter() + warmup, False)
    errors.clear()
    cpu0, client0, t0 = tree_cpu_seconds(pid), time.process_time(), time.perf_counter()
    await run(t0 + seconds, True)
    elapsed = time.perf_counter() - t0
    server_cpu, client_cpu = tree_cpu_seconds(pid) - cpu0, time.process_time() - client0
    n = max(len(latencies), 1)
    p50, p99 = quantiles_ms(latencies) if latencies else (float("nan"), float("nan"))
    return {"concurrency": c, "images_per_s": len(latencies) / elapsed, "p50_ms": p50, "p99_ms": p99,
            "calls": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
            "server_cpu_ms_per_image": 1e3 * server_cpu / n, "client_cpu_ms_per_image": 1e3 * client_cpu / n}


async def v2_serves(address: str) -> bool:
    """Whether the server answers the Open Inference Protocol's ServerLive (UNIMPLEMENTED: it does not)."""
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            reply = await v2_grpc.GRPCInferenceServiceStub(ch).ServerLive(v2.ServerLiveRequest(), timeout=10)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return False
            raise
    return bool(reply.live)


async def v2_requests(stub: Any, model: str, version: str, x: npt.NDArray[np.float32]) -> list[Any]:
    """One ModelInferRequest per image, shaped and named as the model's metadata says (defaults where
    it says nothing: input ``input``, output ``probabilities``, the image's own shape)."""
    name, out, shape = "input", "probabilities", list(x.shape[1:])
    shape = [1, *shape]
    meta = await stub.ModelMetadata(v2.ModelMetadataRequest(name=model, version=version), timeout=30)
    if meta.inputs:
        name = meta.inputs[0].name
        if meta.inputs[0].datatype not in ("FP32", ""):
            raise SystemExit(f"{model}: input datatype {meta.inputs[0].datatype}, the harness sends FP32")
        declared = [1 if d < 0 else int(d) for d in meta.inputs[0].shape]
        if declared and int(np.prod(declared)) == int(np.prod(shape)):
            shape = declared
    if meta.outputs:
        names = [o.name for o in meta.outputs]
        out = "probabilities" if "probabilities" in names else names[0]
    return [v2.ModelInferRequest(
        model_name=model, model_version=version,
        inputs=[v2.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=shape)],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name=out)],
        raw_input_contents=[np.ascontiguousarray(img, dtype=np.float32).tobytes()]) for img in x]


def v2_probabilities(reply: Any) -> npt.NDArray[np.float32]:
    if reply.raw_output_contents:
        return np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
    return np.asarray(reply.outputs[0].contents.fp32_contents, dtype=np.float32)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: POST a body, read a Content-Length reply."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
            # asyncio turns Nagle off; then the ~90 kB body leaves in pieces that uvicorn reads one at a
            # time, and a call at c=1 took 2-3x as long as with it on (http.client's default) here
            self.streams[1].get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        reader, writer = self.streams
        writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % (path.encode(), self.host.encode(), len(body)) + body)
        status = await reader.readline()
        length = None
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            self.streams = None
            raise RuntimeError(f"reply without Content-Length: {status!r}")
        payload = await reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"{status.decode().strip()}: {payload[:200]!r}")
        return payload


async def load(args: argparse.Namespace) -> dict[str, Any]:
    x = np.load(args.inputs)
    bare_session = session(args.reference_model, args.threads)
    reference = bare_session.run(["probabilities"], {"input": x})[0]
    levels = [int(c) for c in args.levels.split(",")]
    worst = 0.0

    def check(i: int, probs: npt.NDArray[np.float32]) -> None:
        nonlocal worst
        worst = max(worst, float(np.max(np.abs(probs.ravel() - reference[i % len(x)]))))

    protocol = args.protocol
    if protocol == "camseg":
        protocol = "v2" if await v2_serves(args.address) else "camseg.v1"
    points: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []

    def beside(c: int) -> None:
        # right after the server's point, while the server idles: the machine's load drifts, so the
        # pair is measured as close together in time as it can be
        bare.append(bare_point(bare_session, x, c, args.seconds, args.warmup))

    if protocol == "http":
        host, port = args.address.rsplit(":", 1)
        bodies = [json.dumps({"shape": [1, *img.shape], "data": base64.b64encode(img.tobytes()).decode()}).encode()
                  for img in x]
        for c in levels:
            conns = [HttpConnection(host, int(port)) for _ in range(c)]

            async def http_call(w: int, i: int, conns: list[HttpConnection] = conns) -> npt.NDArray[np.float32]:
                reply = json.loads(await conns[w].post("/predict", bodies[i % len(x)]))
                probs = np.asarray(reply["probabilities"], dtype=np.float32)
                check(i, probs)
                return probs

            points.append(await drive(http_call, c, args.seconds, args.warmup, args.pid))
            beside(c)
            for conn in conns:
                if conn.streams is not None:
                    conn.streams[1].close()
    else:
        async with grpc.aio.insecure_channel(args.address, options=GRPC_OPTIONS) as ch:
            if protocol == "v2":
                stub = v2_grpc.GRPCInferenceServiceStub(ch)
                requests = await v2_requests(stub, args.model, args.version, x)

                async def v2_call(w: int, i: int) -> npt.NDArray[np.float32]:
                    probs = v2_probabilities(await stub.ModelInfer(requests[i % len(x)], timeout=60))
                    check(i, probs)
                    return probs

                call: Call = v2_call
            else:
                classify = pb_grpc.SegmentationStub(ch).Classify
                v1_requests = [pb.ClassifyRequest(images=[pb.Image(raw=pb.RawArray(
                    dtype="float32", shape=list(img.shape[1:]), data=img.tobytes()))]) for img in x]

                async def v1_call(w: int, i: int) -> npt.NDArray[np.float32]:
                    reply = await classify(v1_requests[i % len(x)], timeout=60)
                    probs = np.asarray(reply.results[0].probabilities, dtype=np.float32)
                    check(i, probs)
                    return probs

                call = v1_call
            for c in levels:
                points.append(await drive(call, c, args.seconds, args.warmup, args.pid))
                beside(c)
    return {"protocol": {"v2": "gRPC v2 ModelInfer", "camseg.v1": "gRPC camseg.v1 Classify",
                         "http": "HTTP JSON"}[protocol], "points": points, "bare": bare,
            "max_abs_diff": worst}


def bare_point(sess: ort.InferenceSession, x: npt.NDArray[np.float32], batch: int, seconds: float,
               warmup: float) -> dict[str, Any]:
    """``session.run`` at one batch size, back to back: ``warmup`` seconds unrecorded, then ``seconds``."""
    xb = np.ascontiguousarray(np.repeat(x, batch // len(x) + 1, axis=0)[:batch])
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        sess.run(["probabilities"], {"input": xb})
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(["probabilities"], {"input": xb})
        lat.append(time.perf_counter() - t0)
    p50, p99 = quantiles_ms(lat)
    return {"batch": batch, "images_per_s": batch * len(lat) / sum(lat), "p50_ms": p50, "p99_ms": p99,
            "calls": len(lat)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--protocol", choices=("v2", "camseg", "http"), default="v2")
    p.add_argument("--address", default="127.0.0.1:0")
    p.add_argument("--model", default="classifier")
    p.add_argument("--version", default="")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--levels", default="1,8,32", help="concurrencies; bare ONNX Runtime runs at batch c after each")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inputs", type=Path, required=True, help=".npy of float32 images, (N, 1, H, W)")
    p.add_argument("--reference-model", type=Path, required=True, help="the .onnx file every server serves")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    result = asyncio.run(load(args))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
