"""The demo's jobs step: a worker of its own runs the test-split segmentation of every
model as bulk jobs on Redis, and each job's mean Dice is set beside the in-process one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from camseg.app.demo import DemoContext, StepResult
from camseg.bulk import batch
from camseg.core.settings import Settings
from jobs.app import make_app
from jobs.submit import submit_segment

TITLE = "Through the Celery workers"


def through_workers(ctx: DemoContext) -> StepResult:
    repo, out = ctx.out / "jobs-repo", ctx.out / "jobs"
    for arch, path in ctx.models.items():
        shutil.copytree(path, repo / arch / "1")
    settings = Settings(model_repo=repo, data_roots=[ctx.data.parent], output_root=out)
    env = {**os.environ, "CAMSEG_MODEL_REPO": str(repo), "CAMSEG_DATA_ROOTS": f'["{ctx.data.parent}"]',
           "CAMSEG_OUTPUT_ROOT": str(out), "CAMSEG_REDIS_URL": settings.redis_url}
    log = ctx.out / "worker.log"
    with log.open("wb") as fh:
        worker = subprocess.Popen([sys.executable, "-m", "camseg", "worker"], stdout=fh, stderr=subprocess.STDOUT,
                                  env=env)
    result: dict[str, Any] = {}
    try:
        app = make_app(settings)
        t0 = time.perf_counter()
        submitted = {arch: submit_segment(app, settings, model=arch, version="", data=ctx.data,
                                          split=report.report_split,
                                          options=None if arch in ctx.recipes else report.best.options)
                     for arch, report in ctx.dice.items()}
        for arch, sub in submitted.items():
            job = out / sub.job_id
            end = time.monotonic() + 1800
            while (st := batch.status(job)).state not in (batch.JobState.SUCCEEDED, batch.JobState.FAILED):
                if worker.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"job {sub.job_id} did not finish: {st}\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
            summary = batch.finish(job)
            result[arch] = {"job_id": sub.job_id, "images": summary["images"], "failed": summary["failed"],
                            "mean_dice": summary["mean_dice"], "in_process_mean_dice": ctx.segments[arch]["mean_dice"]}
        seconds = round(time.perf_counter() - t0, 1)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
    lines = [f"`camseg worker` on Redis ({settings.redis_url}); one bulk segmentation job per model over the test "
             f"split with its recipe, which the job takes from the model ({seconds} s for all). The job's mean Dice "
             "must equal `camseg "
             "segment`'s in process.", "",
             "| architecture | job | images | failed | mean Dice (job) | mean Dice (in process) |",
             "|---|---|---:|---:|---:|---:|"]
    for arch, r in result.items():
        lines.append(f"| {arch} | `{r['job_id']}` | {r['images']} | {r['failed']} | {r['mean_dice']:.3f} | "
                     f"{r['in_process_mean_dice']:.3f} |")
    return StepResult(TITLE, "\n".join(lines), {**result, "seconds": seconds})
