"""The cost of one Classify call: c=1 p50 and c=32 images/s of Classify with raw float32
arrays, before and after a change, in one run.

A lighter :mod:`serve_bench`: one model (resnet, random weights, ``--size`` px), raw
``float32`` arrays in [0, 1] one image a call (no decoding: what KServe's and Triton's
callers send), dynamic batching on. Each round starts a ``camseg serve`` from every
checkout given (``--before DIR``, e.g. ``git archive`` of the base commit, and this
one), in turn, and measures c=1 (p50) and c=32 (images/s) on it; bare ONNX Runtime
``session.run`` at batch 1 and 32 runs in the same round. Rounds interleave the
checkouts so a busy, shared machine weighs on both alike; medians over ``--rounds``
are reported, with the load average before and after.

Run from the repository root: ``python bench/call_path.py --before /tmp/base``. It
prints a table and writes ``bench/results/call_path.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_bench import bare_ort, cpu_seconds, load, make_repo  # noqa: E402

from services.gen.camseg.v1 import camseg_pb2 as pb  # noqa: E402
from services.process import spawn  # noqa: E402


def requests(size: int, n: int = 32) -> Any:
    rng = np.random.default_rng(0)
    arrays = [rng.random((size, size), dtype=np.float32) for _ in range(n)]
    msgs = [pb.ClassifyRequest(images=[pb.Image(raw=pb.RawArray(dtype="float32", shape=[size, size],
                                                                 data=a.tobytes()))]) for a in arrays]
    return (lambda i: msgs[i % n]), np.stack([a[None] for a in arrays])


def batch_counts(metrics_port: int | None) -> tuple[float, float, float]:
    """(ONNX Runtime batches, images in them, runs on the event loop) so far, from the server's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()

    def value(name: str) -> float:
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return (value("camseg_batch_size_images_count"), value("camseg_batch_size_images_sum"),
            value("camseg_batch_inline_runs_total"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--before", type=Path, action="append", default=[],
                   help="another checkout to measure beside this one (repeatable)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "call_path.json")
    args = p.parse_args()
    trees = {str(b): b.resolve() for b in args.before}
    trees["this checkout"] = ROOT
    make, x = requests(args.size)
    keys = ("c1_p50_ms", "c1_inline_share", "c32_img_s", "c32_server_cpu_ms", "c32_mean_batch", "c32_inline_share")
    results: dict[str, dict[str, list[float]]] = {k: {key: [] for key in keys} for k in [*trees, "bare"]}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), "resnet", args.size)
        for r in range(args.rounds):
            for name, tree in trees.items():
                server = spawn(repo, env={"CAMSEG_TORCH_THREADS": str(args.threads)}, cwd=tree)
                try:
                    counts0 = batch_counts(server.metrics_port)
                    lat, err = asyncio.run(load(server.port, "Classify", make, 1, args.seconds))
                    assert err == 0, f"{name}: {err} errors at c=1"
                    batches, _imgs, inline = (b - a for a, b in zip(counts0, batch_counts(server.metrics_port),
                                                                    strict=True))
                    results[name]["c1_inline_share"].append(inline / max(batches, 1))
                    results[name]["c1_p50_ms"].append(1e3 * statistics.median(lat))
                    cpu0, counts0 = cpu_seconds(server.proc.pid), batch_counts(server.metrics_port)
                    lat, err = asyncio.run(load(server.port, "Classify", make, 32, args.seconds))
                    assert err == 0, f"{name}: {err} errors at c=32"
                    res = results[name]
                    res["c32_img_s"].append(len(lat) / args.seconds)
                    res["c32_server_cpu_ms"].append(1e3 * (cpu_seconds(server.proc.pid) - cpu0) / len(lat))
                    batches, imgs, inline = (b - a for a, b in zip(counts0, batch_counts(server.metrics_port),
                                                                   strict=True))
                    res["c32_mean_batch"].append(imgs / max(batches, 1))
                    res["c32_inline_share"].append(inline / max(batches, 1))
                finally:
                    server.stop(timeout=60)
            model_dir = repo / "resnet" / "1"
            results["bare"]["c1_p50_ms"].append(bare_ort(model_dir, x, 1, args.seconds, args.threads).p50_ms)
            results["bare"]["c32_img_s"].append(bare_ort(model_dir, x, 32, args.seconds, args.threads).images_per_s)
            print(f"round {r + 1}: " + "; ".join(f"{k}: {v['c1_p50_ms'][-1]:.2f} ms, {v['c32_img_s'][-1]:.0f} img/s"
                                                  for k, v in results.items()), flush=True)
    load1 = os.getloadavg()
    t = Table(title=f"Classify, raw float32, {args.size} px, medians of {args.rounds} rounds "
                    f"(load average {load0[0]:.2f} -> {load1[0]:.2f})")
    for col in ("server", "c=1 p50 ms", "runs on the loop at c=1", "c=32 images/s", "server CPU ms/img at c=32",
                "mean batch at c=32", "runs on the loop at c=32", "runs (p50 / img/s)"):
        t.add_column(col)
    summary = {}
    for name, v in results.items():
        med = {k: statistics.median(vals) if vals else None for k, vals in v.items()}
        summary[name] = {"median": med, "runs": v}
        t.add_row(name if name != "bare" else "bare session.run (batch 1 / 32)", f"{med['c1_p50_ms']:.2f}",
                  "" if med["c1_inline_share"] is None else f"{100 * med['c1_inline_share']:.1f}%",
                  f"{med['c32_img_s']:.0f}",
                  "" if med["c32_server_cpu_ms"] is None else f"{med['c32_server_cpu_ms']:.2f}",
                  "" if med["c32_mean_batch"] is None else f"{med['c32_mean_batch']:.1f}",
                  "" if med["c32_inline_share"] is None else f"{100 * med['c32_inline_share']:.1f}%",
                  " ".join(f"{a:.2f}/{b:.0f}" for a, b in zip(v["c1_p50_ms"], v["c32_img_s"], strict=True)))
    Console().print(t)
    args.out.write_text(json.dumps({
        "benchmark": "Classify raw float32 one image a call: c=1 p50 and c=32 images/s, checkouts interleaved",
        "environment": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "load_average_before": load0[0], "load_average_after": load1[0]},
        "config": {k: [str(b) for b in v] if k == "before" else (str(v) if isinstance(v, Path) else v)
                   for k, v in vars(args).items()},
        "results": summary}, indent=2) + "\n")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
