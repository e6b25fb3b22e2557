"""camseg.core.progress: the Tracker's reports, clamping, finish and cancellation."""

from __future__ import annotations

import dataclasses

import pytest

from camseg.core.errors import CancelledError, StatusCode
from camseg.core.progress import Progress, Tracker


def test_reports_the_start_and_every_advance() -> None:
    seen: list[Progress] = []
    t = Tracker("segment", 5, on_progress=seen.append)
    assert seen == [Progress("segment", 0, 5, "")]
    t.advance()
    t.advance(2, status="chunk 2")
    assert t.done == 3
    assert seen == [
        Progress("segment", 0, 5, ""),
        Progress("segment", 1, 5, ""),
        Progress("segment", 3, 5, "chunk 2"),
    ]


def test_advance_clamps_done_to_total() -> None:
    seen: list[Progress] = []
    t = Tracker("train", 4, on_progress=seen.append)
    t.advance(3)
    t.advance(3)
    assert t.done == 4
    t.advance(10)
    assert t.done == 4
    assert [p.done for p in seen] == [0, 3, 4, 4]
    assert all(p.total == 4 for p in seen)


def test_finish_completes_an_early_stopped_task() -> None:
    seen: list[Progress] = []
    t = Tracker("train", 10, on_progress=seen.append)
    t.advance(3)
    t.finish("early stop")
    assert t.done == 10
    assert seen[-1] == Progress("train", 10, 10, "early stop")
    assert len(seen) == 3


def test_without_callbacks_it_still_counts() -> None:
    t = Tracker("x", 3)
    t.advance(2)
    t.check()
    assert t.done == 2
    t.finish()
    assert t.done == 3


def test_should_stop_at_construction_raises_before_any_report() -> None:
    seen: list[Progress] = []
    with pytest.raises(CancelledError, match="stopped at 0 of 7") as info:
        Tracker("segment", 7, on_progress=seen.append, should_stop=lambda: True)
    assert seen == []
    assert info.value.code is StatusCode.CANCELLED


def test_should_stop_is_polled_after_each_advance() -> None:
    calls = 0

    def stop_on_third_poll() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    seen: list[Progress] = []
    t = Tracker("evaluate", 6, on_progress=seen.append, should_stop=stop_on_third_poll)
    t.advance(2)  # second poll: go on
    with pytest.raises(CancelledError, match="evaluate: stopped at 4 of 6"):
        t.advance(2)  # reported, then the third poll stops
    assert calls == 3
    assert [p.done for p in seen] == [0, 2, 4]


def test_check_raises_only_when_asked() -> None:
    stop = False
    t = Tracker("t", 2, should_stop=lambda: stop)
    t.check()
    stop = True
    with pytest.raises(CancelledError):
        t.check()


def test_progress_is_immutable() -> None:
    p = Progress("a", 1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.done = 2  # type: ignore[misc]
