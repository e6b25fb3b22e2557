"""services.batching.DynamicBatcher with a real numpy runner on a real thread pool."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from camseg.core.errors import UnavailableError
from services.batching import OVERLAP_HOLD, Arrivals, DynamicBatcher


class Runner:
    """Scales its batch by 10 and records each batch's row values; fails on a negative row;
    can be held (an Event) to keep the worker busy while callers queue."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        assert self.gate.wait(10)
        self.batches.append([float(v) for v in x[:, 0, 0, 0]])
        if (x < 0).any():
            raise ValueError("negative input in this batch")
        return x * 10

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def rows(*values: float) -> np.ndarray:
    """``(n, 1, 2, 2)`` images, each filled with one value."""
    return np.stack([np.full((1, 2, 2), v, dtype=np.float32) for v in values])


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort") as ex:
        yield ex


def make(runner: Runner, pool: ThreadPoolExecutor, *, max_batch: int, max_delay: float,
         sizes: list[int] | None = None, waits: list[float] | None = None) -> DynamicBatcher:
    return DynamicBatcher(runner, max_batch=max_batch, max_delay=max_delay, executor=pool,
                          on_batch=sizes.append if sizes is not None else None,
                          on_queue_time=waits.append if waits is not None else None)


async def call(b: DynamicBatcher, x: np.ndarray, *, announce: bool = True) -> np.ndarray:
    if not announce:
        return await b.submit(x)
    with b.expect():
        await asyncio.sleep(0)  # "decoding": lets every caller be announced before any submits
        return await b.submit(x)


def test_settings_are_checked(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        make(Runner(), pool, max_batch=0, max_delay=0.1)
    with pytest.raises(ValueError, match="max_delay"):
        make(Runner(), pool, max_batch=1, max_delay=-1)


def test_concurrent_announced_calls_are_combined_up_to_max_batch(pool: ThreadPoolExecutor) -> None:
    runner = Runner()
    sizes: list[int] = []
    waits: list[float] = []

    async def main() -> tuple[list[np.ndarray], float]:
        b = make(runner, pool, max_batch=4, max_delay=5.0, sizes=sizes, waits=waits)
        t0 = time.perf_counter()
        try:
            out = await asyncio.gather(*(call(b, rows(i)) for i in range(1, 5)))
        finally:
            await b.close()
        return out, time.perf_counter() - t0

    out, elapsed = asyncio.run(main())
    assert runner.sizes == [4]
    assert sizes == [4]  # on_batch sees the batch size
    assert len(waits) == 4 and all(0 <= w < 5 for w in waits)  # one queue time per caller
    assert elapsed < 2.5  # a full batch runs at once, without waiting out max_delay
    for i, o in enumerate(out, start=1):
        np.testing.assert_array_equal(o, rows(10 * i))
    assert runner.threads and all(t.startswith("ort") for t in runner.threads)  # run on the executor


def test_a_batch_never_exceeds_max_batch(pool: ThreadPoolExecutor) -> None:
    runner = Runner()

    async def main() -> list[np.ndarray]:
        b = make(runner, pool, max_batch=3, max_delay=0.05)
        try:
            return await asyncio.gather(*(call(b, rows(i)) for i in range(7)))
        finally:
            await b.close()

    out = asyncio.run(main())
    assert sum(runner.sizes) == 7
    assert runner.sizes[0] == 3 and max(runner.sizes) <= 3
    assert [float(o[0, 0, 0, 0]) for o in out] == [10.0 * i for i in range(7)]


def test_a_lone_call_runs_at_once(pool: ThreadPoolExecutor) -> None:
    runner = Runner()

    async def main() -> tuple[float, float]:
        b = make(runner, pool, max_batch=32, max_delay=5.0)
        try:
            t0 = time.perf_counter()
            await call(b, rows(1, 2))
            t1 = time.perf_counter()
            await call(b, rows(3), announce=False)
            t2 = time.perf_counter()
        finally:
            await b.close()
        return t1 - t0, t2 - t1

    announced, plain = asyncio.run(main())
    assert runner.sizes == [2, 1]
    assert announced < 2.5 and plain < 2.5  # far below the 5 s max_delay


def test_unannounced_calls_are_not_waited_for(pool: ThreadPoolExecutor) -> None:
    """Without expect() the worker has no reason to wait: calls already queued are
    combined, nothing more is waited for."""
    runner = Runner()

    async def main() -> None:
        b = make(runner, pool, max_batch=8, max_delay=5.0)
        try:
            await asyncio.gather(*(call(b, rows(i), announce=False) for i in range(3)))
        finally:
            await b.close()

    t0 = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - t0 < 2.5
    assert runner.sizes == [3]


def test_each_caller_gets_its_own_rows_in_order(pool: ThreadPoolExecutor) -> None:
    runner = Runner()
    inputs = [rows(1, 2, 3), rows(4), rows(5, 6), rows(7, 8, 9, 10)]

    async def main() -> list[np.ndarray]:
        b = make(runner, pool, max_batch=64, max_delay=5.0)
        try:
            return await asyncio.gather(*(call(b, x) for x in inputs))
        finally:
            await b.close()

    out = asyncio.run(main())
    assert runner.batches == [[float(v) for v in range(1, 11)]]  # one batch, callers in arrival order
    for x, o in zip(inputs, out, strict=True):
        assert o.shape == x.shape
        np.testing.assert_array_equal(o, x * 10)


def test_a_runner_error_reaches_every_caller_of_its_batch(pool: ThreadPoolExecutor) -> None:
    runner = Runner()

    async def main() -> tuple[list[np.ndarray | BaseException], np.ndarray]:
        b = make(runner, pool, max_batch=8, max_delay=5.0)
        try:
            results = await asyncio.gather(call(b, rows(1)), call(b, rows(-1)), call(b, rows(2, 3)),
                                           return_exceptions=True)
            after = await call(b, rows(4))  # the worker survives the failed batch
        finally:
            await b.close()
        return list(results), after

    results, after = asyncio.run(main())
    assert runner.sizes == [4, 1]
    assert len(results) == 3
    assert all(isinstance(r, ValueError) and "negative input" in str(r) for r in results)
    np.testing.assert_array_equal(after, rows(40))


def test_a_cancelled_caller_is_dropped_from_its_batch(pool: ThreadPoolExecutor) -> None:
    runner = Runner()

    async def main() -> tuple[np.ndarray, np.ndarray, np.ndarray, asyncio.Task[np.ndarray]]:
        b = make(runner, pool, max_batch=8, max_delay=5.0)
        try:
            runner.gate.clear()  # the first batch holds the worker ...
            first = asyncio.create_task(call(b, rows(100), announce=False))
            while not runner.threads:
                await asyncio.sleep(0.01)
            with b.expect():  # ... while three more callers queue, and a fourth is on its way
                tasks = [asyncio.create_task(call(b, rows(v))) for v in (1, 2, 3)]
                while b._queue.qsize() < 3:
                    await asyncio.sleep(0.01)
                tasks[1].cancel()
                await asyncio.sleep(0.05)
                runner.gate.set()
                one, three = await tasks[0], await tasks[2]
            return await first, one, three, tasks[1]
        finally:
            runner.gate.set()
            await b.close()

    first, one, three, gone = asyncio.run(main())
    assert gone.cancelled()
    assert runner.batches == [[100.0], [1.0, 3.0]]  # caller 2 left its batch; 1 and 3 still ran together
    np.testing.assert_array_equal(first, rows(1000))
    np.testing.assert_array_equal(one, rows(10))
    np.testing.assert_array_equal(three, rows(30))


def test_a_batch_of_only_cancelled_callers_never_runs(pool: ThreadPoolExecutor) -> None:
    runner = Runner()

    async def main() -> np.ndarray:
        b = make(runner, pool, max_batch=8, max_delay=0.01)
        try:
            runner.gate.clear()
            first = asyncio.create_task(call(b, rows(5), announce=False))
            while not runner.threads:
                await asyncio.sleep(0.01)
            gone = asyncio.create_task(call(b, rows(6), announce=False))
            while b._queue.qsize() < 1:
                await asyncio.sleep(0.01)
            gone.cancel()
            await asyncio.sleep(0.05)
            runner.gate.set()
            await first
            return await call(b, rows(7))
        finally:
            runner.gate.set()
            await b.close()

    last = asyncio.run(main())
    assert runner.batches == [[5.0], [7.0]]
    np.testing.assert_array_equal(last, rows(70))


def test_the_remainder_after_a_full_batch_runs_without_waiting(pool: ThreadPoolExecutor) -> None:
    """Five callers, all announced and all queued, max_batch 4: the fifth should run as
    soon as the first four are answered (six callers happen to run at once)."""
    runner = Runner()

    async def main() -> float:
        b = make(runner, pool, max_batch=4, max_delay=3.0)
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(call(b, rows(i)) for i in range(5)))
        finally:
            await b.close()
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    assert runner.sizes == [4, 1]
    assert elapsed < 1.5, f"5 callers, all queued, took {elapsed:.2f} s with max_delay 3 s"


def test_a_full_queue_sheds_load(pool: ThreadPoolExecutor) -> None:
    """Past ``max_queue`` waiting images a submit is refused at once (RESOURCE_EXHAUSTED),
    and the queue takes calls again once it drains."""
    from camseg.core.errors import ResourceExhaustedError

    gate = threading.Event()

    def held(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return x

    async def main() -> tuple[list[BaseException | np.ndarray], np.ndarray]:
        b = DynamicBatcher(held, max_batch=1, max_delay=0.0, executor=pool, max_queue=2)
        try:
            first = asyncio.ensure_future(b.submit(rows(0)))  # taken by the worker, held in the runner
            await asyncio.sleep(0.05)
            waiting = [asyncio.ensure_future(b.submit(rows(i))) for i in (1, 2)]
            await asyncio.sleep(0)
            with pytest.raises(ResourceExhaustedError, match="queue holds 2"):
                await b.submit(rows(3))
            gate.set()
            done = await asyncio.gather(first, *waiting, return_exceptions=True)
            return list(done), await b.submit(rows(4))
        finally:
            await b.close()

    done, again = asyncio.run(main())
    assert [float(np.asarray(d)[0, 0, 0, 0]) for d in done] == [0.0, 1.0, 2.0]
    assert float(again[0, 0, 0, 0]) == 4.0


def test_close_answers_what_is_queued_and_later_calls_run_alone(pool: ThreadPoolExecutor) -> None:
    """A model replaced under load: its batcher closes with one batch running and two
    calls queued behind it. All three are answered (none is left waiting for its
    deadline), and a call that took the batcher before the close and submits after it
    runs as a batch of its own, without restarting the worker."""
    runner = Runner()

    async def go() -> None:
        b = make(runner, pool, max_batch=1, max_delay=0.0)
        runner.gate.clear()  # the first batch holds the worker
        calls = [asyncio.ensure_future(call(b, rows(v), announce=False)) for v in (1.0, 2.0, 3.0)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # it waits for what is queued
        runner.gate.set()
        got = await asyncio.wait_for(asyncio.gather(*calls), 10)
        await asyncio.wait_for(closing, 10)
        assert [float(g[0, 0, 0, 0]) for g in got] == [10.0, 20.0, 30.0]
        late = await asyncio.wait_for(call(b, rows(4.0, 5.0), announce=False), 10)
        assert late[:, 0, 0, 0].tolist() == [40.0, 50.0]
        assert b._task is None  # not restarted: nothing keeps the replaced model alive

    asyncio.run(go())
    assert runner.sizes == [1, 1, 1, 2]


def test_a_cancelled_close_answers_every_waiting_call_unavailable(pool: ThreadPoolExecutor) -> None:
    """The closing call cancelled (its server stopping) with one batch running and two
    calls queued: the worker goes, and all three callers get UNAVAILABLE at once instead
    of waiting for their deadlines."""
    runner = Runner()

    async def go() -> None:
        b = make(runner, pool, max_batch=1, max_delay=0.0)
        runner.gate.clear()  # the first batch holds the worker
        calls = [asyncio.ensure_future(call(b, rows(v), announce=False)) for v in (1.0, 2.0, 3.0)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.05)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        got = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert all(isinstance(g, UnavailableError) for g in got), got
        runner.gate.set()

    asyncio.run(go())


def test_an_inline_call_runs_on_the_event_loop_when_the_batcher_is_idle(pool: ThreadPoolExecutor) -> None:
    runner = Runner()
    sizes: list[int] = []
    inline: list[int] = []

    async def main() -> list[np.ndarray]:
        b = DynamicBatcher(runner, max_batch=32, max_delay=5.0, executor=pool, on_batch=sizes.append,
                           on_inline=lambda: inline.append(1))
        try:
            with b.expect():  # announced, then submitted: no longer on its way
                first = await b.submit(rows(1), inline=True)
            second = await b.submit(rows(2, 3), inline=False)
            return [first, second]
        finally:
            await b.close()

    first, second = asyncio.run(main())
    np.testing.assert_array_equal(first[:, 0, 0, 0], [10])
    np.testing.assert_array_equal(second[:, 0, 0, 0], [20, 30])
    assert inline == [1] and sizes == [1, 2]
    assert runner.threads == {threading.main_thread().name, "ort_0"}  # the loop's thread, then the pool's


def test_an_inline_call_queues_while_a_batch_runs_or_a_call_is_on_its_way(pool: ThreadPoolExecutor) -> None:
    """Batching starts once calls overlap: a call marked inline still waits its turn behind
    a running batch, and joins the batch of a call still decoding."""
    runner = Runner()
    inline: list[int] = []

    async def main() -> list[np.ndarray]:
        b = DynamicBatcher(runner, max_batch=32, max_delay=5.0, executor=pool, on_inline=lambda: inline.append(1))
        try:
            runner.gate.clear()
            running = asyncio.ensure_future(b.submit(rows(1)))
            while not runner.threads:  # the batch is in the pool, held
                await asyncio.sleep(0.01)
            behind = asyncio.ensure_future(b.submit(rows(2), inline=True))
            await asyncio.sleep(0.05)
            assert not behind.done()
            runner.gate.set()
            out = [await running, await behind]

            async def decoding() -> np.ndarray:
                with b.expect():
                    await asyncio.sleep(0.05)
                    return await b.submit(rows(4))

            slow = asyncio.ensure_future(decoding())
            await asyncio.sleep(0)  # announced
            out += [await b.submit(rows(3), inline=True), await slow]
            return out
        finally:
            await b.close()

    outs = asyncio.run(main())
    assert [float(o[0, 0, 0, 0]) for o in outs] == [10, 20, 30, 40]
    assert inline == [] and runner.threads == {"ort_0"}
    assert runner.sizes == [1, 1, 2]  # the call marked inline joined the decoding one's batch


def test_once_calls_overlap_batching_holds_before_a_call_runs_inline_again(pool: ThreadPoolExecutor) -> None:
    """Two calls in one batch: for OVERLAP_HOLD seconds a lone call marked inline still goes
    to the pool (a loop busy with runs would not see the calls arriving meanwhile), then
    runs on the loop again; a call marked inline that is not alone starts the hold too."""
    runner = Runner()
    inline: list[int] = []

    async def main() -> list[str]:
        b = DynamicBatcher(runner, max_batch=32, max_delay=5.0, executor=pool, on_inline=lambda: inline.append(1))
        where = []
        try:
            await asyncio.gather(call(b, rows(1)), call(b, rows(2)))
            for step in ("held", "after the hold", "not alone", "held again"):
                if step == "after the hold":
                    await asyncio.sleep(OVERLAP_HOLD * 1.5)
                runner.threads.clear()
                await b.submit(rows(3), inline=True, alone=step != "not alone")
                where.append(next(iter(runner.threads)))
            return where
        finally:
            await b.close()

    where = asyncio.run(main())
    assert runner.sizes[0] == 2
    assert where == ["ort_0", threading.main_thread().name, "ort_0", "ort_0"]
    assert inline == [1]


def test_a_call_is_alone_until_another_is_accepted_beside_it() -> None:
    """Each call's token lives in its own task's context, as the interceptor notes it: a
    call accepted while another is live makes both not alone, and for OVERLAP_HOLD after;
    a call that ended (its done callback) or whose task is gone without one counts no more."""
    arrivals = Arrivals()

    async def main() -> list[bool]:
        seen: list[bool] = []
        first_in, second_in, first_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def first() -> None:
            arrivals.arrived()
            seen.append(arrivals.alone())  # nothing else yet
            first_in.set()
            await second_in.wait()
            seen.append(arrivals.alone())  # the second was accepted beside it
            arrivals.finished()(None)
            first_done.set()

        async def second() -> None:
            await first_in.wait()
            arrivals.arrived()
            second_in.set()
            await first_done.wait()
            seen.append(arrivals.alone())  # the first ended, but they overlapped lately
            await asyncio.sleep(OVERLAP_HOLD * 1.5)
            seen.append(arrivals.alone())
            arrivals.finished()(None)

        async def never_finished() -> None:  # accepted, its message never came: no done callback
            arrivals.arrived()

        async def third() -> None:
            arrivals.arrived()
            seen.append(arrivals.alone())

        await asyncio.gather(first(), second())
        await asyncio.create_task(never_finished())
        gc.collect()
        await asyncio.create_task(third())
        seen.append(arrivals.alone())  # this test's own task was never noted
        return seen

    assert asyncio.run(main()) == [True, False, False, True, True, True]
