"""The Dice evaluation and the filtered retraining as jobs, and the one beat that
schedules the retraining, with real Redis, a real worker and a real ``camseg beat``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import redis

from camseg.bulk import batch
from jobs.app import QUEUE, make_app
from jobs.submit import submit_evaluate
from tests.jobs.conftest import JobEnv
from tests.jobs.test_tasks import wait_for
from tests.jobs.workers import Worker, start_worker


def test_evaluation_job_writes_the_protocols_report(job_env: JobEnv, workers: list[Worker]) -> None:
    workers.append(start_worker(job_env.env(), concurrency=1))
    s = job_env.settings()
    sub = submit_evaluate(make_app(s), s, model="tiny", version="", data=job_env.data_root / "rois",
                          methods=["gradcam"], rules=["0.5", "p90"])
    job = s.output_root / sub.job_id
    wait_for(job, {batch.JobState.SUCCEEDED})
    summary = json.loads((job / "summary.json").read_text())
    report = json.loads((job / "report" / "report.json").read_text())
    assert (report["select_split"], report["report_split"]) == ("val", "test")
    assert summary["best"] == report["best"] and summary["labels"] == {"model": "tiny", "version": "1"}
    assert (job / "report" / "report.md").is_file() and (job / "report" / "dice_vs_threshold.png").is_file()


def test_beat_schedules_the_filtered_retraining(job_env: JobEnv, workers: list[Worker]) -> None:
    env = job_env.env(CAMSEG_RETRAIN_MODELS='["tiny"]', CAMSEG_RETRAIN_DATA=str(job_env.data_root / "rois"),
                      CAMSEG_RETRAIN_EVERY_SECONDS="2", CAMSEG_RETRAIN_EPOCHS="1",
                      CAMSEG_RETRAIN_THRESHOLDS="[0.5]")
    workers.append(start_worker(env, concurrency=1))
    log = job_env.out.parent / "beat.log"
    job_env.out.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        beat = subprocess.Popen([sys.executable, "-m", "camseg", "beat"], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
    try:
        end = time.monotonic() + 120
        while not batch.list_jobs(job_env.out) and time.monotonic() < end:
            time.sleep(0.2)
        assert batch.list_jobs(job_env.out), log.read_text()[-3000:]
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(timeout=30)
    # the first job the beat scheduled (the ids come from the task ids, not the clock)
    first = min(batch.list_jobs(job_env.out), key=lambda st: batch.read_manifest(job_env.out / st.job_id).created)
    assert first.kind == "retrain" and first.chunks == 4
    job = job_env.out / first.job_id
    wait_for(job, {batch.JobState.SUCCEEDED}, timeout=400)
    summary = json.loads((job / "summary.json").read_text())
    assert [r["filter"] for r in summary["results"]] == ["none", "keep-hot", "keep-cold", "soft", "random"]
    assert (job / "retrain" / "results.json").is_file() and (job / "retrain" / "filtered_retraining.png").is_file()
    assert summary["labels"] == {"model": "tiny", "version": "1"}


def test_a_redelivered_scheduled_retraining_plans_its_jobs_once(job_env: JobEnv) -> None:
    """The scheduling task run twice with one task id (Redis redelivered it after its
    worker died) plans one job per model, and sends that job's parts again."""
    s = job_env.settings(retrain_models=["tiny"], retrain_data=job_env.data_root / "rois", retrain_epochs=1)
    app = make_app(s)
    task = app.tasks["camseg.schedule_retraining"]
    first = task.apply(task_id="beat-1").get()
    assert len(first) == 1 and [st.job_id for st in batch.list_jobs(s.output_root)] == first
    broker = redis.Redis.from_url(s.redis_url)
    assert broker.llen(QUEUE) == 4  # one part per filter
    again = task.apply(task_id="beat-1").get()
    assert again == first and [st.job_id for st in batch.list_jobs(s.output_root)] == first
    assert broker.llen(QUEUE) == 8  # the same parts sent again: they run once (idempotent)
    other = task.apply(task_id="beat-2").get()
    assert other != first and len(batch.list_jobs(s.output_root)) == 2


def test_the_reconciler_is_on_the_beat_schedule(job_env: JobEnv) -> None:
    from jobs.app import beat_schedule

    s = job_env.settings(reconcile_seconds=30)
    assert beat_schedule(s) == {"reconcile": {"task": "camseg.reconcile", "schedule": 30}}
    with_retrain = beat_schedule(job_env.settings(retrain_models=["tiny"], retrain_cron="15 2 * * 1"))
    assert with_retrain["filtered-retraining"]["task"] == "camseg.schedule_retraining"
    assert "15" in str(with_retrain["filtered-retraining"]["schedule"])
