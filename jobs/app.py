"""The Celery application: Redis as broker and result backend, tasks acknowledged late.

The app is built by :func:`make_app` in each entry point (worker, beat, submitter) from
one :class:`~camseg.core.settings.Settings`, which the tasks read back at run time
(:func:`settings_of`); nothing reads the environment at import time. The tasks live in
:mod:`jobs.tasks`, which a worker imports (``include``); a submitter and the beat send
tasks by name and never import it.
A task is acknowledged only after it ends (``acks_late``) and is given back to the queue
when its worker dies (``task_reject_on_worker_lost``); a worker takes one task at a time
(``worker_prefetch_multiplier=1``); Redis redelivers a task whose worker vanished after
``visibility_timeout``, set from the longest task's hard time limit. The redelivery is
done by any live worker, which sweeps the unacknowledged tasks every
:func:`restore_interval` seconds (kombu's default sweeps only every tenth of its 10 s
ticks: a task of a killed worker waited 100 s or more past its visibility timeout) under a
Redis lock that expires after :data:`RESTORE_LOCK_SECONDS` at most (kombu's 300 s would
stall every redelivery behind a worker killed while it held the lock). The job folders on
disk, not Redis, are the truth (:mod:`camseg.bulk.batch`).
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

from camseg.core.settings import Settings

QUEUE = "camseg"
TASKS_MODULE = "jobs.tasks"
RESTORE_LOCK_SECONDS = 30.0
"""Longest hold of the redelivery lock: a scan of the unacknowledged tasks takes
milliseconds."""


def restore_interval(settings: Settings) -> float:
    """Seconds between a worker's sweeps for tasks to redeliver: half the visibility
    timeout, within 1..10 s."""
    return max(1.0, min(10.0, settings.redelivery_seconds / 2))


def make_app(settings: Settings) -> Celery:
    """The app of one entry point: its configuration, the beat schedule, and ``settings``
    kept for the tasks (:func:`settings_of`)."""
    app = Celery("camseg", broker=settings.redis_url, backend=settings.redis_url, include=[TASKS_MODULE])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        # every task's soft and hard limits (the tasks set none of their own)
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options={
            "visibility_timeout": settings.redelivery_seconds,
            "unacked_mutex_expire": int(max(5.0, min(RESTORE_LOCK_SECONDS, settings.redelivery_seconds))),
            "unacked_restore_interval": restore_interval(settings),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": settings.redelivery_seconds},
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    app.conf.camseg_settings = settings
    app.conf.beat_schedule = beat_schedule(settings)
    return app


def settings_of(app: Celery) -> Settings:
    """The settings ``app`` was built with by :func:`make_app`; RuntimeError for an app
    built otherwise (its tasks would not know where jobs live)."""
    settings = app.conf.get("camseg_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("this Celery app was not built by jobs.app.make_app: no camseg settings")
    return settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    """The reconciler, and the filtered retraining when models are configured."""
    schedule: dict[str, dict[str, object]] = {
        "reconcile": {"task": "camseg.reconcile", "schedule": settings.reconcile_seconds}}
    if settings.retrain_models:
        if settings.retrain_every_seconds:
            every: object = settings.retrain_every_seconds
        else:
            minute, hour, day, month, weekday = settings.retrain_cron.split()
            every = crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday)
        schedule["filtered-retraining"] = {"task": "camseg.schedule_retraining", "schedule": every}
    return schedule
