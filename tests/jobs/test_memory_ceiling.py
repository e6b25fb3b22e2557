"""A bulk job over the largest image the pixel limit admits (16-bit, 4096 x 4096), run by
a real ``camseg worker`` with the heaviest options and with a recipe of TTA and the dense
CRF: the worker process that ran it keeps its peak RSS under the ceiling SECURITY.md
states."""

from __future__ import annotations

from pathlib import Path

from camseg.bulk import batch
from camseg.heat.refine import Refiner
from camseg.pipeline.options import Choices, Options
from camseg.pipeline.whole import Tiling, Whole
from jobs.app import make_app
from jobs.submit import submit_segment
from tests.jobs.conftest import JobEnv
from tests.jobs.test_tasks import wait_for
from tests.jobs.workers import Worker, start_worker
from tests.memory import CEILING_MIB, big_image16, vm_hwm_mib, with_recipe


def test_worker_stays_under_the_ceiling(job_env: JobEnv, workers: list[Worker], tmp_path: Path) -> None:
    data = job_env.data_root / f"big-{tmp_path.name}"
    (data / "images").mkdir(parents=True)
    (data / "images" / "big.png").write_bytes(big_image16())
    (data / "labels.csv").write_text("id,label\nbig,tumor\n")
    model = job_env.repo / "tiny" / "1"
    with_recipe(model, job_env.repo / "heavy" / "1")
    worker = start_worker(job_env.env(), concurrency=1)
    workers.append(worker)
    s = job_env.settings()
    app = make_app(s)
    heaviest = Options(tta=8, refine=Refiner.CRF, gate=False)
    runs: list[tuple[str, Options | Choices, Tiling | None]] = [
        ("heavy", heaviest, Tiling(mode=Whole.NEVER)), ("heavy", heaviest, Tiling(mode=Whole.ALWAYS)),
        ("heavy", Choices(), None)]
    for name, options, tiling in runs:
        sub = submit_segment(app, s, model=name, version="", data=data, options=options, tiling=tiling,
                             heatmaps=True)
        job = s.output_root / sub.job_id
        st = wait_for(job, {batch.JobState.SUCCEEDED, batch.JobState.FAILED})
        assert st.state is batch.JobState.SUCCEEDED, st
    (child,) = worker.children()  # the prefork child that ran the tasks
    peak = vm_hwm_mib(child)
    print(f"worker peak RSS {peak:.0f} MiB")
    assert peak < CEILING_MIB, f"worker peak RSS {peak:.0f} MiB"
