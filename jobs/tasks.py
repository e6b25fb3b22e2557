"""The Celery tasks: thin adapters over :mod:`camseg.bulk.batch`.

Every task has an explicit name, takes a job id (and a chunk index), never pixels, and
is idempotent: a chunk that is already done returns at once, a chunk run twice writes
the same files. Retries, with backoff and jitter, only on the named transient errors of
the broker; a bad image fails that image inside the chunk; any other error fails the
job with its reason.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from camseg.bulk import batch
from camseg.core.errors import CamsegError, CancelledError, InvalidInputError
from camseg.core.settings import Settings
from camseg.models.repository import signature
from camseg.pipeline.run import LoadedModel

logger = logging.getLogger(__name__)

TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)

_models: dict[tuple[str, Any], LoadedModel] = {}
_models_lock = threading.Lock()


def cached_model(path: str, threads: int, providers: str = "auto") -> LoadedModel:
    """One loaded model per version folder and worker process (reloaded if its files
    change); ONNX Runtime gets the process's share of the cores, as torch does."""
    key = (path, signature(Path(path)))
    with _models_lock:
        model = _models.get(key)
        if model is None:
            _models.clear()  # a worker keeps one version at a time: memory stays flat
            model = _models[key] = LoadedModel.load(path, providers=providers, threads=threads)
        return model



def job_dir(settings: Settings, job_id: str) -> Path:
    if not batch.valid_job_id(job_id):
        raise InvalidInputError(f"bad job id {job_id[:64]!r}")
    return settings.output_root / job_id


def enqueue_pending(app: Celery, settings: Settings, job_id: str) -> int:
    """Send every chunk of the job that has no completion marker; returns how many."""
    pending = batch.pending_chunks(job_dir(settings, job_id))
    for index in pending:
        app.send_task("camseg.run_part", args=[job_id, index])
    if not pending:
        app.send_task("camseg.finish_job", args=[job_id])
    return len(pending)


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """What metrics need of a summary (the task result stays small)."""
    return {k: summary.get(k) for k in ("job_id", "kind", "seconds", "labels", "mean_dice")}


def register(app: Celery, settings: Settings) -> None:
    limits = {"soft_time_limit": settings.task_soft_time_limit, "time_limit": settings.task_time_limit}

    @app.task(name="camseg.run_part", bind=True, acks_late=True, reject_on_worker_lost=True,
              autoretry_for=TRANSIENT, retry_backoff=True, retry_jitter=True, max_retries=8, **limits)
    def run_part(self: Any, job_id: str, index: int) -> dict[str, Any]:
        """One chunk of a bulk segmentation, the evaluation, or one retraining run."""
        job = job_dir(settings, job_id)
        if not (job / batch.MANIFEST).is_file():
            # a task of a job this worker's output root does not hold (another deployment's
            # queue, a job folder removed): nothing to do, nothing to write
            logger.warning("job %s: no manifest under %s; task dropped", job_id, settings.output_root)
            return {"job": job_id, "part": index, "ran": False, "missing": True}
        if batch.is_cancelled(job):
            return {"job": job_id, "part": index, "ran": False, "cancelled": True}
        try:
            m = batch.read_manifest(job)
            model = None
            if m.kind in batch.MODEL_KINDS:
                model = cached_model(m.model, settings.threads_per_process(), settings.ort_providers)
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
        if ran and m.kind in batch.MODEL_KINDS:
            out["images"] = batch.part_images(job, index, m)
        if not batch.pending_chunks(job):
            out["summary"] = _brief(batch.finish(job))
        return out

    @app.task(name="camseg.finish_job", acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT,
              retry_backoff=True, max_retries=8, **limits)
    def finish_job(job_id: str) -> dict[str, Any]:
        job = job_dir(settings, job_id)
        if not (job / batch.MANIFEST).is_file():
            logger.warning("job %s: no manifest under %s; task dropped", job_id, settings.output_root)
            return {"job": job_id, "missing": True}
        summary = batch.finish(job)
        return {"job": job_id, "summary": _brief(summary)}

    @app.task(name="camseg.schedule_retraining", acks_late=True, autoretry_for=TRANSIENT, retry_backoff=True,
              **limits)
    def schedule_retraining() -> list[str]:
        """The scheduled filtered retraining: one job for the latest version of each
        configured model."""
        from jobs.submit import submit_retrain

        sent = []
        for name in settings.retrain_models:
            sub = submit_retrain(app, settings, model=name, version="", data=settings.retrain_data,
                                 thresholds=settings.retrain_thresholds, epochs=settings.retrain_epochs)
            sent.append(sub.job_id)
        return sent

    @app.task(name="camseg.reconcile", acks_late=True, autoretry_for=TRANSIENT, retry_backoff=True, **limits)
    def reconcile() -> dict[str, int]:
        """Re-enqueue the missing chunks of every unfinished job: what Redis forgot, the
        folders remember."""
        sent = 0
        for st in batch.list_jobs(settings.output_root):
            if st.state in (batch.JobState.QUEUED, batch.JobState.RUNNING):
                sent += enqueue_pending(app, settings, st.job_id)
        return {"chunks": sent}
