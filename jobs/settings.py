"""Settings of the Celery workers and of job submission (environment prefix ``CAMSEG_``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from camseg.core.settings import Settings


class JobSettings(Settings):
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and result backend")
    model_repo: Path = Field(Path("models"), description="DIR/<name>/<version>/ of exported models")
    data_roots: list[Path] = Field(default_factory=lambda: [Path("data")],
                                   description="job inputs must resolve under one of these")
    output_root: Path = Field(Path("jobs-out"), description="each job writes only to output_root/<job id>/")
    chunk_size: int = Field(64, ge=1, description="images per chunk task")
    worker_concurrency: int = Field(0, ge=0, description="worker processes per `camseg worker`; 0 = the cores")
    task_soft_time_limit: float = Field(900.0, gt=0, description="a chunk is asked to stop after this long")
    task_time_limit: float = Field(960.0, gt=0, description="a chunk's process is killed after this long")
    visibility_timeout: float = Field(
        0.0, ge=0, description="seconds before Redis redelivers an unacknowledged task; 0 = time limit + 60 s")
    reconcile_seconds: float = Field(300.0, gt=0, description="how often beat re-enqueues chunks of unfinished jobs")
    retrain_models: list[str] = Field(default_factory=list, description="models whose latest version beat retrains")
    retrain_data: Path = Field(Path("data/synth"), description="data set of the scheduled filtered retraining")
    retrain_thresholds: list[float] = Field(default_factory=lambda: [0.5])
    retrain_epochs: int | None = Field(None, ge=1, description="epochs per retraining (default: the model's)")
    retrain_cron: str = Field("0 3 * * 0", description="crontab (minute hour day month weekday) of the retraining")
    retrain_every_seconds: float | None = Field(None, gt=0, description="an interval instead of the crontab")
    worker_metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus port of a worker")

    @field_validator("retrain_cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("retrain_cron needs five fields: minute hour day month weekday")
        return v

    @property
    def redelivery_seconds(self) -> float:
        return self.visibility_timeout or self.task_time_limit + 60.0

    def processes(self) -> int:
        return self.worker_concurrency or (os.cpu_count() or 1)

    def threads_per_process(self) -> int:
        """Torch threads per worker process: the cores split between the processes."""
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // self.processes())
