"""Bulk segmentation through Celery workers against the core in one process.

What is measured
----------------
One model (an exported camseg classifier with random weights: speed does not depend on
them) segments ``--n`` synthetic 64 px ROIs as a bulk job:

* in process: :func:`camseg.bulk.batch.run_local`, torch on every core (the baseline);
* through ``camseg worker --concurrency 1`` (one process, every core);
* through ``camseg worker --concurrency 2`` (two processes, the cores split).

Images per second from submission to ``summary.json``. Goals, reported whether met or
not: two workers reach at least 1.7x one worker, and one worker loses at most 15% to the
in-process run. ``--scale N`` instead runs one job of N images on two worker processes
and records the workers' resident memory after the first 1,000 images and at the end
(goal: within 20%).

Run from the repository root with Redis on 127.0.0.1:6379: ``python bench/jobs_bench.py``.
It uses Redis DB 14 (flushed) and writes ``bench/results/jobs_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camseg.bulk import batch  # noqa: E402
from camseg.core.settings import Settings  # noqa: E402
from camseg.data.synth import SynthConfig, synthesize  # noqa: E402
from camseg.heat.rules import parse_rule  # noqa: E402
from camseg.models import ModelSpec, build  # noqa: E402
from camseg.models.export import export_model  # noqa: E402
from camseg.models.modeldir import save_model  # noqa: E402
from camseg.pipeline.options import Options  # noqa: E402
from camseg.pipeline.run import LoadedModel  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/14"
OPTS = Options(threshold=parse_rule("p90"), gate=False)  # random weights: the gate would empty every mask


def make_repo(root: Path, n: int) -> tuple[Path, Path]:
    data = synthesize(root / "data" / "rois", SynthConfig(n=n, size=64, seed=0))
    model = build(ModelSpec(arch="resnet", input_size=64)).eval()
    version = root / "repo" / "resnet" / "1"
    save_model(version, model, {"architecture": "resnet", "spec": asdict(model.spec),
                                "classes": ["normal", "tumor"], "gradcam_layer": model.cam_layer,
                                "layers": model.layer_names, "metrics": {}})
    export_model(version, data_dir=data, n_images=8)
    return root / "repo", data


def worker_rss_mib(proc: subprocess.Popen[bytes]) -> float:
    """Resident memory of a worker's prefork children together (they do the work)."""
    kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in kids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def through_workers(root: Path, repo: Path, data: Path, processes: int, chunk: int,
                    watch_rss: bool = False, threads: int | None = None) -> dict[str, Any]:
    from jobs.app import make_app
    from jobs.submit import submit_segment

    redis.Redis.from_url(REDIS_URL).flushdb()
    out = root / f"out-{processes}-{threads}"
    settings = Settings(redis_url=REDIS_URL, model_repo=repo, data_roots=[data.parent], output_root=out)
    env = {**os.environ, "CAMSEG_REDIS_URL": REDIS_URL, "CAMSEG_MODEL_REPO": str(repo),
           "CAMSEG_DATA_ROOTS": f'["{data.parent}"]', "CAMSEG_OUTPUT_ROOT": str(out)}
    env.pop("CAMSEG_TORCH_THREADS", None)
    if threads:
        env["CAMSEG_TORCH_THREADS"] = str(threads)
    log = root / f"worker-{processes}-{threads}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "camseg", "worker", "--concurrency", str(processes)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        while " ready." not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.2)
        t0 = time.perf_counter()
        sub = submit_segment(make_app(settings), settings, model="resnet", version="", data=data, options=OPTS,
                             chunk_size=chunk)
        job = out / sub.job_id
        rss_first: float | None = None
        while (st := batch.status(job)).state is not batch.JobState.SUCCEEDED:
            if st.state is batch.JobState.FAILED or proc.poll() is not None:
                raise RuntimeError(f"{st}\n{log.read_text()[-2000:]}")
            if watch_rss and rss_first is None and st.images_done >= 1000:
                rss_first = worker_rss_mib(proc)
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        rss_end = worker_rss_mib(proc)
        summary = json.loads((job / "summary.json").read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        redis.Redis.from_url(REDIS_URL).flushdb()
    split = f", {threads} torch thread{'s' if threads != 1 else ''} each" if threads else ", the cores split"
    out_row = {"path": f"camseg worker --concurrency {processes}{split}", "images": summary["images"],
               "seconds": round(seconds, 2), "images_per_s": summary["images"] / seconds,
               "mean_dice": summary["mean_dice"], "rss_end_mib": round(rss_end, 1)}
    if watch_rss:
        out_row["rss_after_1000_mib"] = None if rss_first is None else round(rss_first, 1)
    return out_row


def in_process(root: Path, repo: Path, data: Path, chunk: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = LoadedModel.load(repo / "resnet" / "1")
    t0 = time.perf_counter()
    job = batch.create_segment_job(root / "out-local", repo / "resnet" / "1", data, options=OPTS, chunk_size=chunk)
    summary = batch.run_local(job, model)
    seconds = time.perf_counter() - t0
    return {"path": "camseg.bulk.batch.run_local (in process)", "images": summary["images"],
            "seconds": round(seconds, 2),
            "images_per_s": summary["images"] / seconds, "mean_dice": summary["mean_dice"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--scale", type=int, default=0, help="one job of this many images on 2 workers; RSS recorded")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "jobs_bench.json")
    args = p.parse_args()
    console = Console()
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"benchmark": "bulk segmentation: camseg workers vs the core in one process",
                              "environment": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "python": platform.python_version(), "cpus": os.cpu_count()},
                              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = args.scale or args.n
        t0 = time.perf_counter()
        repo, data = make_repo(root, n)
        console.print(f"{n} ROIs and a model in {time.perf_counter() - t0:.0f} s")
        if args.scale:
            row = through_workers(root, repo, data, 2, args.chunk, watch_rss=True)
            rows.append(row)
            first, end = row["rss_after_1000_mib"], row["rss_end_mib"]
            growth = (end - first) / first if first else float("nan")
            result["scale"] = {"images": n, "rss_after_1000_mib": first, "rss_end_mib": end, "growth": growth,
                               "goal": 0.20, "met": bool(growth <= 0.20)}
            console.print(f"scale: {n} images; worker RSS {first} MiB after 1000 images, {end} MiB at the end "
                          f"({100 * growth:+.1f}%); goal within 20%: {'met' if growth <= 0.20 else 'not met'}")
            args.out = args.out.with_name("jobs_scale.json")
        else:
            rows.append(in_process(root, repo, data, args.chunk))
            shutil.rmtree(root / "out-local", ignore_errors=True)
            rows.append(through_workers(root, repo, data, 1, args.chunk))
            rows.append(through_workers(root, repo, data, 1, args.chunk, threads=1))
            rows.append(through_workers(root, repo, data, 2, args.chunk))
            local, one, one_thread, two = (r["images_per_s"] for r in rows)
            result["goals"] = {
                "two_over_one_single_threaded": {"ratio": two / one_thread, "required": 1.7,
                                                 "met": two / one_thread >= 1.7},
                "two_over_one_using_both_cores": {"ratio": two / one, "required": 1.7, "met": two / one >= 1.7},
                "one_over_in_process": {"ratio": one / local, "required": 0.85, "met": one / local >= 0.85}}
            console.print(f"2 worker processes / 1 single-threaded process: {two / one_thread:.2f}x; / 1 process "
                          f"on both cores: {two / one:.2f}x (goal 1.7x); 1 worker / in process: {one / local:.2f} "
                          f"(goal >= 0.85)")
    t = Table(title="bulk segmentation, 64 px ROIs")
    for col in ("path", "images", "seconds", "images/s", "mean Dice"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["path"], str(r["images"]), f"{r['seconds']:.1f}", f"{r['images_per_s']:.1f}",
                  f"{r['mean_dice']:.4f}")
    console.print(t)
    result["rows"] = rows
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
