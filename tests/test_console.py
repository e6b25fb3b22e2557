"""camseg.app.console: the command line's rich bars over the core's progress callbacks."""

from __future__ import annotations

from camseg.app.console import progress_bars
from camseg.core.progress import Progress, Tracker


def test_disabled_gives_no_callback() -> None:
    with progress_bars(False) as bars:
        assert bars is None


def test_one_bar_per_task_follows_the_tracker() -> None:
    with progress_bars(True) as bars:
        assert bars is not None
        t = Tracker("segment", 5, on_progress=bars)
        t.advance(2)
        bars(Progress("train", 1, 10, "epoch 1"))
        t.advance(3)
        inner = bars.__closure__  # the rich Progress the callback draws on
        assert inner is not None
        progress = next(c.cell_contents for c in inner if hasattr(c.cell_contents, "tasks"))
        done = {task.description: (task.completed, task.total) for task in progress.tasks}
    assert done == {"segment": (5, 5), "train": (1, 10)}
