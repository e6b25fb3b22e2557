"""The trip one request makes through the service's modules, followed as data.

An in-process server (``services.server.start``) serves a freshly exported model; one
call warms it up, then one more call is traced with ``sys.setprofile`` and
``threading.setprofile`` (the server and its pools are started after the hook is in
place, so the pool threads carry it too).

What counts, the same rule before and after any change:

- A **stay** is a run of function starts in one service module. Every Python function
  that *starts* while the call is traced is looked at; a coroutine or generator
  *resuming* after an ``await`` or ``yield`` is not a start (it was waiting, holding the
  data), and neither is a return (the caller was waiting).
- The modules of the trip are the ``services.*`` modules, less the generated
  ``services.gen.*`` and ``services.metrics`` (counters only). A core function
  (``camseg.*``) belongs to the stay of the service module nearest it on the stack: the
  core is the work that module has done, listed beside the stay (``core``), and how the
  core is layered inside is import-linter's business, not this trip's. A core function
  with no service module on its stack (a pool thread running it directly) is a stay of
  its own, named by its module.
- Library code (grpc, asyncio, threads, numpy, torch, PIL, prometheus-client, logging) is
  no module of the trip; a function it starts (a pool thread running a task) is looked at
  as above.
- The trip runs from the first start in the RPC's servicer method to the first start in
  ``services.interceptors`` after it (the interceptor, which wraps every call alike, opens
  and closes every trip and is left out).
- A module is **re-entered** when it has a stay after the data went on to another module.

Run from the repository root: ``python bench/trace_request.py [--rpc Explain] [--label before]``.
It prints the stays and a summary and writes ``bench/results/trace_<rpc>_<label>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_bench import images, make_repo  # noqa: E402

from camseg.core.settings import Settings  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2 as pb  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc  # noqa: E402
from services.server import start  # noqa: E402

LEFT_OUT = ("services.gen", "services.metrics")
# code flags of functions that suspend and resume: generators, coroutines, async generators
SUSPENDING = 0x20 | 0x80 | 0x200


@dataclass
class Stay:
    module: str
    first: str  # the first function started in it
    thread: str
    starts: int
    core: list[str]  # core modules it called, in order, each once


def counted(name: str) -> bool:
    return (name.startswith("services.") and not name.startswith(LEFT_OUT)) or name.startswith("camseg.")


def module_of(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", ""))


class Tracer:
    """Collects function starts in counted modules while ``armed``; a hook on every thread.

    Each start is ``(module of the trip, function, thread, core module or "")``."""

    def __init__(self) -> None:
        self.armed = False
        self.starts: list[tuple[str, str, str, str]] = []
        self._started: dict[int, Any] = {}  # id(frame) -> code of suspending frames already started
        self._lock = threading.Lock()

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.armed or event != "call":
            return
        name = module_of(frame)
        if not counted(name):
            return
        code = frame.f_code
        if code.co_flags & SUSPENDING:
            with self._lock:
                if self._started.get(id(frame)) is code:
                    return  # a resume, not a start
                self._started[id(frame)] = code
        thread = threading.current_thread().name
        if name.startswith("services."):
            self.starts.append((name, code.co_qualname, thread, ""))
            return
        owner = self._service_caller(frame)
        self.starts.append((owner or name, code.co_qualname, thread, name))

    @staticmethod
    def _service_caller(frame: FrameType) -> str | None:
        """The service module nearest ``frame`` on its stack, if any."""
        f = frame.f_back
        while f is not None:
            name = module_of(f)
            if name.startswith("services.") and counted(name):
                return name
            f = f.f_back
        return None


def stays_of(starts: list[tuple[str, str, str, str]], rpc: str) -> list[Stay]:
    begin = next(i for i, (m, fn, _t, _c) in enumerate(starts) if m == "services.servicer" and fn.endswith(rpc))
    out: list[Stay] = []
    for module, fn, thread, core in starts[begin:]:
        if module == "services.interceptors":
            break
        if not out or out[-1].module != module:
            out.append(Stay(module, fn, thread, 0, []))
        out[-1].starts += 1
        if core and core not in out[-1].core:
            out[-1].core.append(core)
    return out


def reentered(stays: list[Stay]) -> list[str]:
    seen: set[str] = set()
    again: list[str] = []
    for s in stays:
        if s.module in seen and s.module not in again:
            again.append(s.module)
        seen.add(s.module)
    return again


def request(rpc: str, png: bytes) -> Any:
    img = [pb.Image(encoded=png, id="a")]
    if rpc == "Explain":
        return pb.ExplainRequest(images=img, overlay_png=True)
    if rpc == "Segment":
        return pb.SegmentRequest(images=img, mask_encodings=[pb.MASK_ENCODING_PNG], overlay_png=True)
    return pb.ClassifyRequest(images=img)


async def traced_call(repo: Path, rpc: str, png: bytes, tracer: Tracer, inline_pixels: int) -> None:
    settings = Settings(model_repo=repo, port=0, metrics_port=None, plaintext=True, poll_seconds=600,
                             torch_threads=1, inline_decode_pixels=inline_pixels, jobs=False)
    running = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            call = getattr(pb_grpc.SegmentationStub(ch), rpc)
            await call(request(rpc, png), timeout=60)  # warm-up: lazy imports and first-call caches
            tracer.armed = True
            await call(request(rpc, png), timeout=60)
            tracer.armed = False
    finally:
        await running.drain_and_stop(0)


def main() -> None:
    p = argparse.ArgumentParser(description="The modules one request passes through (stays), before/after")
    p.add_argument("--rpc", default="Explain", choices=["Explain", "Segment", "Classify"])
    p.add_argument("--size", type=int, default=64, help="model input and image size (px)")
    p.add_argument("--inline-decode-pixels", type=int, default=128 * 128,
                   help="the server's setting; 0 sends decoding to the decode pool")
    p.add_argument("--label", default="now")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    tracer = Tracer()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), "resnet", a.size)
        png = images(Path(tmp), 1)[0]
        threading.setprofile(tracer.hook)
        sys.setprofile(tracer.hook)
        try:
            asyncio.run(traced_call(repo, a.rpc, png, tracer, a.inline_decode_pixels))
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    stays = stays_of(tracer.starts, a.rpc)
    modules = list(dict.fromkeys(s.module for s in stays))
    again = reentered(stays)
    for i, s in enumerate(stays, 1):
        print(f"{i:3d}  {s.module:22s} {s.first[-44:]:44s} {s.thread:10s} {s.starts:3d} starts; core: "
              f"{', '.join(c.removeprefix('camseg.') for c in s.core) or '-'}")
    print(f"{a.rpc} ({a.label}): {len(stays)} stays in {len(modules)} modules; "
          f"re-entered: {', '.join(again) or 'none'}")
    print(" -> ".join(s.module.removeprefix("services.") for s in stays))
    out = a.out or ROOT / "bench" / "results" / f"trace_{a.rpc.lower()}_{a.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rpc": a.rpc, "label": a.label, "size": a.size,
                               "inline_decode_pixels": a.inline_decode_pixels, "stays": [asdict(s) for s in stays],
                               "modules": modules, "reentered": again}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
