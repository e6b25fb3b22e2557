"""Dynamic batching of Classify across concurrent calls (after Triton's dynamic batcher).

Requests queue per served model; a worker takes the first request, gathers more until
``max_batch`` images or ``max_delay`` seconds, runs them as one ONNX Runtime batch in
a thread, and hands each caller its rows. It waits only while more callers are on
their way (:meth:`DynamicBatcher.expect` counts calls still decoding), so a lone call
runs at once. A lone call its caller marks ``inline`` (small, and no other call in flight)
runs on the event loop itself when nothing is queued, gathering or running and no calls
have overlapped for :data:`OVERLAP_HOLD` seconds: the hand-off to a thread and back (a
pool submit, a wake-up, the self-pipe write) costs more than batching saves for one call,
and batching starts once calls overlap (two in one batch, or a call marked inline that
found the batcher busy) and holds while they keep overlapping. A caller that
gave up (cancelled, deadline passed) before its batch ran is dropped from it. Closing
(the model was replaced or removed) lets what is queued run; a call that took the
batcher before then and submits after runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from camseg.core.errors import ResourceExhaustedError, UnavailableError

logger = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]
OVERLAP_HOLD = 0.05
"""Seconds after calls last overlapped during which none runs on the event loop: a loop
busy with one run does not take the calls arriving meanwhile, which then look lone one
after another and never batch (measured: mean batch 1.0 and -28% images/s at c=32)."""

# the batcher a call announced itself to and has not yet submitted to (one per call's task)
_ON_ITS_WAY: contextvars.ContextVar[DynamicBatcher | None] = contextvars.ContextVar("camseg_on_its_way", default=None)


class _Call:
    """A token of one accepted call, held by its task's context (the live set holds it
    weakly): ended by the call's done callback, or gone with its task where the handler
    never ran."""

    __slots__ = ("__weakref__",)


class Arrivals:
    """The calls the server has accepted and not finished, so a call can tell whether it is
    alone: the server accepts one call a turn of the event loop, before its message is
    read, so a call running on the loop cannot see the next in the batcher
    (:meth:`DynamicBatcher.expect`), only here. An acceptance while another call is live
    is an overlap; a call is alone while none is live beside it and none overlapped in the
    last :data:`OVERLAP_HOLD` seconds. A call's token lives in its task's context, so a
    call that never reached its handler (its message never came) leaves no count behind."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet[_Call] = weakref.WeakSet()
        self._mine: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("camseg_call", default=None)
        self._overlap_until = 0.0

    def arrived(self) -> None:
        """Note the current call (in its task's context) as accepted."""
        if len(self._live):
            self._overlap_until = time.perf_counter() + OVERLAP_HOLD
        token = _Call()
        self._live.add(token)
        self._mine.set(token)

    def finished(self) -> Callable[[object], None]:
        """A callback that ends the current call (for gRPC's ``add_done_callback``, which
        runs once its status is sent)."""
        mine = self._mine.get()
        return lambda _call: self._live.discard(mine) if mine is not None else None

    def alone(self) -> bool:
        """Whether the current call has no other live beside it and no acceptance overlapped
        lately (True for a call not noted: nothing is known against it)."""
        mine = self._mine.get()
        if mine is None:
            return True
        return len(self._live) <= 1 and time.perf_counter() >= self._overlap_until


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued: float


def _unavailable(items: list[_Item]) -> None:
    """Answer the calls of ``items`` not yet answered with UNAVAILABLE (their worker is gone)."""
    for it in items:
        if not it.future.done():
            it.future.set_exception(UnavailableError("the model version was replaced; try again"))


class DynamicBatcher:
    def __init__(self, run: Runner, *, max_batch: int, max_delay: float, executor: Executor,
                 max_queue: int | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 on_queue_time: Callable[[float], None] | None = None,
                 on_inline: Callable[[], None] | None = None):
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be >= 1 and max_delay >= 0")
        self._run = run
        self.max_queue = max_queue
        self._queued = 0  # images waiting in the queue
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._executor = executor
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()  # None: the end, after what is queued
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._on_batch = on_batch
        self._on_queue_time = on_queue_time
        self._on_way = 0  # calls announced by expect() that have not submitted yet
        self._busy = False  # the worker holds a batch (gathering it or running it)
        self._overlap_until = 0.0  # perf_counter until which calls count as overlapping
        self._on_inline = on_inline

    @contextlib.contextmanager
    def expect(self) -> Iterator[None]:
        """Mark a call on its way to :meth:`submit` (decoding), so a batch waits for it;
        the mark ends when the call submits or leaves the block."""
        self._on_way += 1
        token = _ON_ITS_WAY.set(self)
        try:
            yield
        finally:
            if _ON_ITS_WAY.get() is self:  # left without submitting (a decoding error)
                self._on_way -= 1
            _ON_ITS_WAY.reset(token)

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._worker())

    async def close(self) -> None:
        """Stop batching once what is queued has run (its callers are answered, never left
        waiting); later submits run alone. Cancelling the closing call cancels the worker."""
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                self._task.cancel()
                self._fail_queued()
                raise
            finally:
                if self._task.done():
                    self._task = None

    def _fail_queued(self) -> None:
        """Answer every call still queued with UNAVAILABLE (the worker is gone)."""
        while not self._queue.empty():
            if (item := self._queue.get_nowait()) is not None:
                _unavailable([item])

    def idle(self) -> bool:
        """Nothing queued, gathering or running, no call on its way, and no calls
        overlapped in the last :data:`OVERLAP_HOLD` seconds."""
        return (not self._busy and self._on_way == 0 and self._queue.empty()
                and time.perf_counter() >= self._overlap_until)

    def _overlapped(self) -> None:
        self._overlap_until = time.perf_counter() + OVERLAP_HOLD

    async def submit(self, x: np.ndarray, *, inline: bool = False, alone: bool = True) -> np.ndarray:
        """Probabilities for the images ``x`` ``(n, C, S, S)``, batched with others. Where
        ``inline`` (the caller's word that the run is short) and ``alone`` (no other call
        in flight) and the batcher is :meth:`idle`, it runs at once on the event loop; an
        ``inline`` call that is not alone or finds the batcher busy marks the calls as
        overlapping."""
        self.start()
        if _ON_ITS_WAY.get() is self:
            self._on_way -= 1
            _ON_ITS_WAY.set(None)
        if inline and not self._closed:
            if alone and self.idle():
                if self._on_inline:
                    self._on_inline()
                out = self._run(x)
                if self._on_batch:
                    self._on_batch(len(x))
                return out
            self._overlapped()
        if self._closed:  # took this batcher before its model left: its own batch, on the model it holds
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, x)
        if self.max_queue is not None and self._queued + len(x) > self.max_queue:
            raise ResourceExhaustedError(f"{self._queued} images are waiting for a batch; the queue holds "
                                         f"{self.max_queue}: try again later")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queued += len(x)
        self._queue.put_nowait(_Item(x, fut, time.perf_counter()))
        return await fut

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        ending = False
        while not ending:
            first = await self._queue.get()
            if first is None:
                return
            self._queued -= len(first.x)
            self._busy = True
            try:
                ending = await self._batch(first, loop)
            finally:
                self._busy = False

    async def _batch(self, first: _Item, loop: asyncio.AbstractEventLoop) -> bool:
        """Gather a batch from ``first`` and run it; True where the end was met while gathering."""
        ending = False
        items = [first]
        count = len(first.x)
        deadline = loop.time() + self.max_delay
        while count < self.max_batch:
            if not self._queue.empty():  # already queued: no reason to wait
                nxt = self._queue.get_nowait()
            elif self._on_way > 0:  # a caller is still decoding: wait for it, up to max_delay
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
            else:
                break
            if nxt is None:
                ending = True
                break
            self._queued -= len(nxt.x)
            items.append(nxt)
            count += len(nxt.x)
        if len(items) > 1:
            self._overlapped()
        live = [it for it in items if not it.future.done()]
        if not live:
            return ending
        now = time.perf_counter()
        if self._on_queue_time:
            for it in live:
                self._on_queue_time(now - it.queued)
        batch = np.concatenate([it.x for it in live]) if len(live) > 1 else live[0].x
        try:
            out = await loop.run_in_executor(self._executor, self._run, batch)
        except asyncio.CancelledError:  # the worker is gone: its batch's callers are answered
            _unavailable(live)
            raise
        except Exception as exc:
            for it in live:
                if not it.future.done():
                    it.future.set_exception(exc)
            return ending
        if self._on_batch:
            self._on_batch(len(batch))
        start = 0
        for it in live:
            rows = out[start : start + len(it.x)]
            start += len(it.x)
            if not it.future.done():
                it.future.set_result(rows)
        return ending
