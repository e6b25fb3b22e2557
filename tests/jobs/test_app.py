"""The Celery app and its tasks as declared: the fixed task names, late acknowledgement,
retries on the broker's transient errors only, the time limits and the settings of the
app that runs them, and a submitter that never imports the tasks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from celery import Celery

from camseg.core.settings import Settings
from jobs import tasks
from jobs.app import make_app, settings_of

NAMES = {"camseg.run_part", "camseg.finish_job", "camseg.schedule_retraining", "camseg.reconcile"}


def test_every_task_is_named_acknowledged_late_and_retried_on_transient_errors_only() -> None:
    s = Settings(redis_url="redis://127.0.0.1:1/0", task_soft_time_limit=30, task_time_limit=40)
    app = make_app(s)
    ours = {name: task for name, task in app.tasks.items() if name.startswith("camseg.")}
    assert set(ours) == NAMES
    for name, task in ours.items():
        assert task.acks_late and task.reject_on_worker_lost, name
        assert task.autoretry_for == tasks.TRANSIENT and task.retry_backoff and task.retry_jitter, name
    assert app.tasks["camseg.run_part"].max_retries == 8
    # one soft and one hard limit for every task, from the settings
    assert (app.conf.task_soft_time_limit, app.conf.task_time_limit) == (30, 40)
    assert settings_of(app) is s


def test_an_app_built_otherwise_is_refused_by_the_tasks() -> None:
    with pytest.raises(RuntimeError, match="make_app"):
        settings_of(Celery("other"))


def test_a_submitter_never_imports_the_tasks() -> None:
    """The app, the submission and the commands send tasks by name: building an app and
    submitting leaves ``jobs.tasks`` (and the models it caches) unimported."""
    code = ("import sys\n"
            "from jobs.app import make_app\n"
            "from camseg.core.settings import Settings\n"
            "import jobs.submit, jobs.cli\n"
            "make_app(Settings()).send_task\n"
            "print('jobs.tasks' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
