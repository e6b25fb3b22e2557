"""Progress and cancellation callbacks of long-running core calls.

The core never draws a progress bar and never decides how a run is stopped: every
long-running function (segmentation, the Dice evaluation, training, filtered
retraining) takes ``on_progress`` and ``should_stop``. Each entry point chooses what
they do: the command line draws rich bars (:mod:`camseg.app.console`), the service stops
the work of a call that is gone, a worker reports job state.

``should_stop`` is polled between steps (a batch, an epoch); when it returns true the
call raises :class:`~camseg.core.errors.CancelledError` and writes nothing half-done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from camseg.core.errors import CancelledError


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of the task named ``task`` (one name per bar)."""

    task: str
    done: int
    total: int
    status: str = ""


OnProgress = Callable[[Progress], None]
ShouldStop = Callable[[], bool]


class Tracker:
    """Counts the steps of one task, reports each advance and honours ``should_stop``.

    >>> seen = []
    >>> t = Tracker("segment", 4, on_progress=seen.append)
    >>> t.advance(3)
    >>> seen[-1]
    Progress(task='segment', done=3, total=4, status='')
    """

    def __init__(self, task: str, total: int, *, on_progress: OnProgress | None = None,
                 should_stop: ShouldStop | None = None):
        self.task = task
        self.total = total
        self.done = 0
        self._on_progress = on_progress
        self._should_stop = should_stop
        self.check()
        self._report("")

    def check(self) -> None:
        """Raise :class:`CancelledError` when the caller asked to stop."""
        if self._should_stop is not None and self._should_stop():
            raise CancelledError(f"{self.task}: stopped at {self.done} of {self.total}")

    def advance(self, steps: int = 1, status: str = "") -> None:
        self.done = min(self.total, self.done + steps)
        self._report(status)
        self.check()

    def finish(self, status: str = "") -> None:
        """Mark the task complete (early stopping ends a task before its last step)."""
        self.done = self.total
        self._report(status)

    def _report(self, status: str) -> None:
        if self._on_progress is not None:
            self._on_progress(Progress(self.task, self.done, self.total, status))
