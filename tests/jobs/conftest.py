"""Fixtures of the job tests: a real Redis DB of their own (cleaned), a model repository,
data roots and output roots in tmp, and real ``camseg worker`` processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from camseg.core.settings import Settings
from camseg.data.synth import SynthConfig, synthesize
from tests.jobs.workers import TEST_DB, Worker, flushed_redis, start_worker


@pytest.fixture(scope="session")
def job_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a few hundred synthetic ROIs of 32 px (the tiny model's size)."""
    root = tmp_path_factory.mktemp("data-root")
    synthesize(root / "rois", SynthConfig(n=240, size=32, seed=5))
    return root


@dataclass
class JobEnv:
    repo: Path
    data_root: Path
    out: Path
    redis_url: str

    def env(self, **extra: str) -> dict[str, str]:
        return {"CAMSEG_REDIS_URL": self.redis_url, "CAMSEG_MODEL_REPO": str(self.repo),
                "CAMSEG_DATA_ROOTS": f'["{self.data_root}"]', "CAMSEG_OUTPUT_ROOT": str(self.out),
                "CAMSEG_TORCH_THREADS": "1", **extra}

    def settings(self, **extra: Any) -> Settings:
        return Settings(**{"redis_url": self.redis_url, "model_repo": self.repo, "data_roots": [self.data_root],
                              "output_root": self.out, **extra})


@pytest.fixture
def clean_redis() -> Iterator[str]:
    with flushed_redis(TEST_DB) as url:
        yield url


@pytest.fixture
def job_env(tmp_path: Path, exported: tuple[Path, dict[str, Any]], job_data: Path, clean_redis: str) -> JobEnv:
    repo = tmp_path / "repo"
    shutil.copytree(exported[0], repo / "tiny" / "1")
    return JobEnv(repo, job_data, tmp_path / "out", clean_redis)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test starts; all are stopped (or killed) afterwards."""
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.kill()
        w.log.unlink(missing_ok=True)


__all__ = ["JobEnv", "start_worker"]
