"""How the command line shows the core's progress: rich bars, one per task.

The core reports :class:`~camseg.core.progress.Progress` through callbacks; this module is
the command line's choice of what to do with them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from camseg.core.progress import OnProgress
from camseg.core.progress import Progress as Step


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[OnProgress | None]:
    """A callback that draws a bar per task name while the context is open; None (no
    reporting at all) when disabled."""
    if not enabled:
        yield None
        return
    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    tasks: dict[str, TaskID] = {}

    def on_progress(p: Step) -> None:
        tid = tasks.get(p.task)
        if tid is None:
            tid = tasks[p.task] = bars.add_task(p.task, total=p.total, status=p.status)
        bars.update(tid, completed=p.done, total=p.total, status=p.status)

    with bars:
        yield on_progress
