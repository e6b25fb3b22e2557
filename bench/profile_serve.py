"""Where a served call's time goes: py-spy samples a real ``camseg serve`` process
while a client keeps Classify, Explain or Segment calls in flight.

The server is sampled (all threads, idle stacks dropped) for ``--seconds`` under
load; the samples are grouped into the stages of a call (gRPC and asyncio runtime,
request parsing, decoding, preparing, the batcher, ONNX Runtime, heatmaps and masks,
the reply, metrics and interceptors) and printed as a table of shares, and the raw
stacks and the table are written under ``bench/results/``.

Run from the repository root (py-spy from the bench extra; it needs ptrace, as root
here): ``python bench/profile_serve.py --rpc Classify --input raw``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_bench import images, load, make_repo  # noqa: E402

from services.gen.camseg.v1 import camseg_pb2 as pb  # noqa: E402
from services.process import spawn  # noqa: E402

# (stage, substrings of a frame "function (file)" that put a sample in it), first match
# from the leaf up wins
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime run", ("InferenceSession.run", "onnxruntime")),
    ("torch (heatmaps, resize)", ("torch/", "torch.")),
    ("decode (PNG / raw)", ("codecs.py", "PIL/", "decode_image", "raw_array", "array_to_float")),
    ("prepare (channels, resize, batch)", ("prepare (camseg/pipeline/run.py", "to_channels", "resize_image")),
    ("masks, encodings", ("masks.py", "segment_maps", "codecs.encode", "packed_bits", "figures.py")),
    ("pipeline bookkeeping", ("camseg/pipeline/run.py", "camseg/heat/cam.py", "camseg/models/inference.py")),
    ("batcher", ("batching.py",)),
    ("reply (protobuf)", ("codec.py", "_pb2", "classification (", "SerializeToString")),
    ("metrics, interceptors", ("prometheus_client", "interceptors.py", "metrics.py")),
    ("servicer", ("servicer.py", "dataplane.py")),
    ("gRPC runtime", ("grpc/", "grpc_", "cygrpc", "_server.py")),
    ("asyncio, threads", ("asyncio/", "threading.py", "concurrent/futures", "selectors.py")),
]


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # leaf first
        for name, keys in STAGES:
            if any(k in frame for k in keys):
                return name
    return "other"


def requests(kind: str, rpc: str, pngs: list[bytes]) -> Any:
    raws = [np.asarray(Image.open(io.BytesIO(b))) for b in pngs]

    def image(i: int) -> Any:
        if kind == "png":
            return pb.Image(encoded=pngs[i % len(pngs)])
        a = raws[i % len(raws)]
        if kind == "raw32":  # float32 in [0, 1], as KServe's and Triton's callers send
            a = a.astype(np.float32) / 255.0
        return pb.Image(raw=pb.RawArray(dtype=a.dtype.name, shape=list(a.shape), data=a.tobytes()))

    def make(i: int) -> Any:
        if rpc == "Classify":
            return pb.ClassifyRequest(images=[image(i)])
        if rpc == "Explain":
            return pb.ExplainRequest(images=[image(i)])
        return pb.SegmentRequest(images=[image(i)])
    return make


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rpc", default="Classify", choices=("Classify", "Explain", "Segment"))
    p.add_argument("--input", default="raw", choices=("raw", "raw32", "png"))
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--code", type=Path, default=None, help="serve from another checkout (a before, by git archive)")
    p.add_argument("--label", default="", help="a suffix of the output files (e.g. before, after)")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir = ROOT / "bench" / "results"
    tag = f"profile_{args.rpc.lower()}_{args.input}{'_' + args.label if args.label else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), "resnet", args.size)
        pngs = images(Path(tmp), 32)
        server = spawn(repo, env={"CAMSEG_TORCH_THREADS": str(args.threads)}, cwd=args.code)
        try:
            make = requests(args.input, args.rpc, pngs)
            result: dict[str, Any] = {}

            def drive() -> None:
                result["lat"], result["err"] = asyncio.run(
                    load(server.port, args.rpc, make, args.concurrency, args.seconds + 3))
            t = threading.Thread(target=drive)
            t.start()
            raw = Path(tmp) / "stacks.txt"
            subprocess.run([spy, "record", "--pid", str(server.proc.pid), "--duration", str(int(args.seconds)),
                            "--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"],
                           check=True, capture_output=True)
            t.join()
            counts: collections.Counter[str] = collections.Counter()
            total = 0
            for line in raw.read_text().splitlines():
                stack_text, _, n = line.rpartition(" ")
                stack = stack_text.split(";")
                counts[stage_of(stack)] += int(n)
                total += int(n)
            shutil.copy(raw, out_dir / f"{tag}.stacks.txt")
        finally:
            server.stop(timeout=60)
    calls = len(result["lat"])
    table = Table(title=f"{args.rpc}, {args.input}, c={args.concurrency}, {args.size} px: where the server's "
                        f"busy samples go ({calls / (args.seconds + 3):.0f} calls/s)")
    table.add_column("stage")
    table.add_column("share", justify="right")
    shares = {k: v / max(total, 1) for k, v in counts.most_common()}
    for k, v in shares.items():
        table.add_row(k, f"{100 * v:.1f}%")
    Console().print(table)
    (out_dir / f"{tag}.json").write_text(json.dumps({"rpc": args.rpc, "input": args.input,
                                                     "concurrency": args.concurrency, "size": args.size,
                                                     "samples": total, "calls_per_s": calls / (args.seconds + 3),
                                                     "shares": shares}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
