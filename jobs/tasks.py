"""The Celery tasks: thin adapters over :mod:`camseg.bulk.batch`, at module level.

Every task has an explicit name (dashboards and alert rules use them), takes a job id
(and a part index), never pixels, and is idempotent: a part that is already done returns
at once, a part run twice writes the same files, a finished job returns its summary, and
a redelivered scheduled retraining goes on with the jobs it planned. Every task is
acknowledged late and given back when its worker dies; it retries, with backoff and
jitter, only on the named transient errors of the broker; its soft and hard time limits
are the app's (:func:`jobs.app.make_app`). A bad image fails that image inside the
part; any other error fails the job with its reason. The settings are the app's, read
when a task runs (:func:`jobs.app.settings_of`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from camseg.bulk import batch
from camseg.core.errors import CamsegError, CancelledError
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.core.settings import Settings
from camseg.models.repository import signature
from camseg.pipeline.run import LoadedModel
from jobs.app import settings_of
from jobs.submit import enqueue_pending, job_dir, submit_retrain

logger = logging.getLogger(__name__)

TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)
LATE: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}
RETRY: dict[str, Any] = {"autoretry_for": TRANSIENT, "retry_backoff": True, "retry_jitter": True}

_models: dict[tuple[str, Any], LoadedModel] = {}
_models_lock = threading.Lock()


def cached_model(path: str, threads: int, providers: str = "auto",
                 max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> LoadedModel:
    """One loaded model per version folder and worker process (reloaded if its files
    change); ONNX Runtime gets the process's share of the cores, as torch does."""
    key = (path, signature(Path(path)))
    with _models_lock:
        model = _models.get(key)
        if model is None:
            _models.clear()  # a worker keeps one version at a time: memory stays flat
            model = _models[key] = LoadedModel.load(path, providers=providers, threads=threads, max_bytes=max_bytes)
        return model


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """What metrics need of a summary (the task result stays small)."""
    return {k: summary.get(k) for k in ("job_id", "kind", "seconds", "labels", "mean_dice")}


def _held(settings: Settings, job_id: str) -> Path | None:
    """The job's folder when this worker's output root holds its manifest; None (logged)
    for a task of a job it does not hold (another deployment's queue, a folder removed):
    nothing to do, nothing to write."""
    job = job_dir(settings, job_id)
    if (job / batch.MANIFEST).is_file():
        return job
    logger.warning("job %s: no manifest under %s; task dropped", job_id, settings.output_root)
    return None


@shared_task(name="camseg.run_part", bind=True, max_retries=8, **LATE, **RETRY)
def run_part(self: Task, job_id: str, index: int) -> dict[str, Any]:
    """One chunk of a bulk segmentation, one series, the evaluation, or one retraining
    run; the job's results too when it was the last part left."""
    settings = settings_of(self.app)
    job = _held(settings, job_id)
    if job is None:
        return {"job": job_id, "part": index, "ran": False, "missing": True}
    if batch.is_cancelled(job):
        return {"job": job_id, "part": index, "ran": False, "cancelled": True}
    try:
        m = batch.read_manifest(job)
        kind = batch.kind_of(m)
        model = None
        if kind.uses_model:
            model = cached_model(m.model, settings.threads_per_process(), settings.ort_providers,
                                 settings.max_model_bytes)
        ran = batch.run_part(job, index, model=model)
    except CancelledError:
        return {"job": job_id, "part": index, "ran": False, "cancelled": True}
    except SoftTimeLimitExceeded:
        batch.fail(job, f"part {index} exceeded the time limit of {settings.task_soft_time_limit:g} s")
        raise
    except CamsegError as exc:
        batch.fail(job, f"part {index}: {exc.message}")
        raise
    out: dict[str, Any] = {"job": job_id, "part": index, "ran": ran}
    if ran and kind.uses_model:
        out["images"] = batch.part_images(job, index)
    if not batch.pending_chunks(job):
        out["summary"] = _brief(batch.finish(job))
    return out


@shared_task(name="camseg.finish_job", bind=True, max_retries=8, **LATE, **RETRY)
def finish_job(self: Task, job_id: str) -> dict[str, Any]:
    """The results of a job whose parts are all done (sent when none was left to run)."""
    job = _held(settings_of(self.app), job_id)
    if job is None:
        return {"job": job_id, "missing": True}
    return {"job": job_id, "summary": _brief(batch.finish(job))}


@shared_task(name="camseg.schedule_retraining", bind=True, **LATE, **RETRY)
def schedule_retraining(self: Task) -> list[str]:
    """The scheduled filtered retraining: one job for the latest version of each
    configured model. The job ids come from the task's id, so a redelivered task goes on
    with the jobs it planned instead of planning them twice."""
    settings = settings_of(self.app)
    task_id = self.request.id
    sent = []
    for i, name in enumerate(settings.retrain_models):
        job_id = f"retrain-{task_id}-{i}" if task_id else None
        if job_id is not None and (settings.output_root / job_id / batch.MANIFEST).is_file():
            enqueue_pending(self.app, settings, job_id)  # planned before the redelivery; maybe not sent
        else:
            job_id = submit_retrain(self.app, settings, model=name, version="", data=settings.retrain_data,
                                    thresholds=settings.retrain_thresholds, epochs=settings.retrain_epochs,
                                    job_id=job_id).job_id
        sent.append(job_id)
    return sent


@shared_task(name="camseg.reconcile", bind=True, **LATE, **RETRY)
def reconcile(self: Task) -> dict[str, int]:
    """Re-enqueue the missing parts of every unfinished job: what Redis forgot, the
    folders remember."""
    settings = settings_of(self.app)
    sent = 0
    for st in batch.list_jobs(settings.output_root):
        if st.state in (batch.JobState.QUEUED, batch.JobState.RUNNING):
            sent += enqueue_pending(self.app, settings, st.job_id)
    return {"chunks": sent}
