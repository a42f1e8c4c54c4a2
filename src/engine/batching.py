"""The micro-batcher: rows from concurrent calls, one model call per batch.

    caller ──submit(key, rows, deadline)──┬─ small call: inline lane ──▶ run on the event loop
       ▲                                  └─ large call: thread lane ──▶ run in an inference thread
       └── future (rows' results, by offset) ◀───────────── split by row offsets ◀┘

`rows` is any sized payload: a float32 matrix (model inputs) or raw trade
columns, merged with the `concat` function given to the batcher. Per-batch
work in `run` (feature computation, inference) is paid once per batch, not
once per call.

Batching costs nothing when nothing can join the batch, and coalesces under load:

- A call of up to `inline_rows` rows is *small*. When the event loop has been
  idle since the previous small call (its thread blocked, waiting for the
  network: it counts a voluntary context switch), nothing else is waiting to
  join, and the call is scored there and then, on the event loop: no timer, no
  thread hand-off, no GIL hand-back, no extra loop turn. When the loop has been
  busy without a pause since, more calls are arriving faster than it serves
  them: the call waits for a batch, which closes at `inline_rows` rows or
  `max_wait_s` after its first call, and runs on the event loop too.
- A larger call goes to the *thread lane*: to one of `max_inflight_batches`
  inference threads as soon as one is free, with every large call that queued
  while they were busy (up to `max_batch_rows` rows), so the event loop keeps
  serving small calls meanwhile; they never queue behind a large one.

In both lanes:
- Rows of one batch share one `key` (the model bundle they were prepared for):
  a hot swap never mixes two models' inputs in one call.
- The queue is bounded in rows (both lanes together): `submit` raises
  `Overloaded` at once when full.
- Callers that were cancelled, or whose deadline passed, are dropped before
  inference; futures are completed only if not already done, so one cancelled
  caller never strands the others.
- An exception in `run` fails exactly the calls in that batch, as
  `InferenceFailed`; a wrong row count is such a failure too.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from engine.errors import DeadlineExpired, InferenceFailed, Overloaded, ShuttingDown
from engine.metrics import EngineMetrics

log = logging.getLogger(__name__)

K = TypeVar("K")
P = TypeVar("P", bound=Sized)  # payload: rows of one call
Result = npt.NDArray[Any]

#: engine_batches_total{lane}: batches run on the event loop / in an inference thread
INLINE, THREAD = "inline", "thread"


@dataclass(slots=True)
class _Item(Generic[K, P]):
    key: K
    rows: P
    future: asyncio.Future[Result]
    deadline: float | None  # time.monotonic() seconds
    queued_at: float


@dataclass(slots=True)
class _Batch(Generic[K, P]):
    key: K
    items: list[_Item[K, P]]
    rows: int
    result: Result | None = None
    error: BaseException | None = None
    seconds: float = 0.0  # inference time


class _Fifo(Generic[K, P]):
    """One lane's queue: calls in arrival order, and the rows they hold."""

    __slots__ = ("items", "rows")

    def __init__(self) -> None:
        self.items: deque[_Item[K, P]] = deque()
        self.rows = 0


def _fail(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def name_os_thread(name: str) -> None:
    """Show the calling thread as `name` (15 bytes at most) in /proc/<pid>/task/<tid>/comm.

    Python threads are all "python" to the OS; named, the inference threads can
    be told apart from grpc.aio's poller in `top -H`, perf, py-spy and
    `loadtest/bench.py`'s CPU split. Linux only; a failure changes nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(15, name.encode("utf-8")[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


def concat_matrices(parts: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    return np.concatenate(parts)


def _voluntary_switches() -> int:
    """Times the calling thread has blocked (waited for I/O, a lock, a timer) so far: Linux counts
    them per thread (getrusage RUSAGE_THREAD, well under a microsecond). Elsewhere -1: never known
    to be busy."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw if _RUSAGE_THREAD is not None else -1


_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
#: a process whose CPU time grew by this share of the clock or more was busy all along
_BUSY = 0.9


class MicroBatcher(Generic[K, P]):
    """Coalesces rows from concurrent calls into batched calls of `run(key, concat(rows...))`."""

    def __init__(
        self,
        run: Callable[[K, P], Result],
        concat: Callable[[Sequence[P]], P],
        *,
        max_batch_rows: int,
        max_queue_rows: int,
        max_wait_s: float = 0.002,
        inline_rows: int = 0,
        max_inflight_batches: int = 1,
        coalesce: bool = True,
        metrics: EngineMetrics | None = None,
        thread_name: str = "inference",
    ) -> None:
        self._run = run
        self._concat = concat
        #: False: every call is its own model call (batching off, for comparison)
        self.coalesce = coalesce
        self.max_batch_rows = max_batch_rows
        #: how long a batch of small calls may wait for more while the event loop is busy
        self.max_wait_s = max_wait_s
        #: calls of at most this many rows are scored on the event loop (0: none)
        self.inline_rows = min(inline_rows, max_batch_rows)
        self.max_queue_rows = max_queue_rows
        self._metrics = metrics
        self._thread_name = thread_name
        self._small: _Fifo[K, P] = _Fifo()
        self._large: _Fifo[K, P] = _Fifo()
        self._switches = -2  # the event loop thread's voluntary switches at the last small call
        self._cpu = 0.0  # the process's CPU time then
        self._at = 0.0  # and the time (monotonic)
        self._flush_timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._slots = max_inflight_batches
        self._free = max_inflight_batches
        self._jobs: queue.SimpleQueue[_Batch[K, P] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._closing = False

    @property
    def queued_rows(self) -> int:
        return self._small.rows + self._large.rows

    @property
    def room(self) -> int:
        """Rows the queue takes before it refuses a call (any call, when it holds nothing)."""
        queued = self._small.rows + self._large.rows
        return self.max_queue_rows - queued if queued else self.max_queue_rows

    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        for i in range(self._slots):
            thread = threading.Thread(target=self._worker, name=f"{self._thread_name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, key: K, rows: P, deadline: float | None = None) -> asyncio.Future[Result]:
        """Queue `rows` for the model of `key`; the future resolves to their results, in order
        (a small call that finds the event loop idle has its result before this returns)."""
        if self._closing:
            raise ShuttingDown("the engine is shutting down")
        loop = self._loop
        if loop is None:
            raise RuntimeError("start() the batcher first")
        n = len(rows)
        self.check_room(n)
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExpired("the call's deadline passed before it could be queued")
        item = _Item(key, rows, loop.create_future(), deadline, now)
        if n > self.inline_rows:
            self._large.items.append(item)
            self._large.rows += n
            self._dispatch()
            return item.future
        small = self._small
        small.items.append(item)
        small.rows += n
        if small.rows >= self.inline_rows or not self.coalesce:
            self._flush_small()
        elif len(small.items) == 1:
            switches, cpu = _voluntary_switches(), time.process_time()
            # idle: the loop blocked since the last small call (it waited for the network), and
            # the process was not busy all along meanwhile (on one core the loop also blocks
            # while gRPC's own threads run) unless that was a large batch in an inference thread
            blocked = switches != self._switches
            saturated = cpu - self._cpu >= _BUSY * (now - self._at) and self._free == self._slots
            idle = blocked and not saturated
            self._switches, self._cpu, self._at = switches, cpu, now
            if idle or self.max_wait_s <= 0.0:
                self._flush_small()
            elif self._flush_timer is None:
                self._flush_timer = loop.call_later(self.max_wait_s, self._on_flush_timer)
        return item.future

    def check_room(self, n: int) -> None:
        """Raise Overloaded if `n` rows would be refused now (what `submit` checks first).

        A queue holding nothing admits any call, however large (it runs as its own batch)."""
        queued = self.queued_rows
        if queued + n > self.max_queue_rows and queued:
            raise Overloaded(
                f"queue full ({queued} trades waiting, limit {self.max_queue_rows}); retry later"
            )

    async def close(self, timeout: float | None = None) -> None:
        """Take no more rows, finish what is queued and running, then stop."""
        self._closing = True
        if self._loop is not None and self._idle is not None:
            self._flush_small()
            self._dispatch()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("batches still running at shutdown; their calls fail")
        for fifo in (self._small, self._large):
            for item in fifo.items:
                _fail(item.future, ShuttingDown("the engine shut down before this call was scored"))
            fifo.items.clear()
            fifo.rows = 0
        for _ in self._threads:
            self._jobs.put(None)  # each thread exits after its current batch

    # -- the inline lane (on the event loop) -------------------------------------------

    def _on_flush_timer(self) -> None:
        self._flush_timer = None
        self._flush_small()

    def _flush_small(self) -> None:
        """Run every queued small call here and now, in batches of up to `inline_rows` rows."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        while self._small.items:
            items = self._take(self._small, self.inline_rows)
            if items:
                batch = _Batch(items[0].key, items, sum(len(i.rows) for i in items))
                self._execute(batch)
                self._finish(batch, INLINE)
        self._check_idle()

    # -- the thread lane (dispatching on the event loop) -------------------------------

    def _dispatch(self) -> None:
        """Hand the thread lane's queued calls, batched, to the free inference threads."""
        while self._large.items and self._free > 0:
            items = self._take(self._large, self.max_batch_rows)
            if items:
                self._free -= 1
                self._jobs.put(_Batch(items[0].key, items, sum(len(i.rows) for i in items)))
        self._check_idle()

    def _check_idle(self) -> None:
        if self._idle is None:
            return
        if not self._small.items and not self._large.items and self._free == self._slots:
            self._idle.set()
        else:
            self._idle.clear()

    def _take(self, fifo: _Fifo[K, P], max_rows: int) -> list[_Item[K, P]]:
        """Pop the next batch: head's key, up to `max_rows` rows, live callers only."""
        now = time.monotonic()
        items: list[_Item[K, P]] = []
        rows = 0
        waiting = fifo.items
        key = waiting[0].key
        while waiting:
            item = waiting[0]
            n = len(item.rows)
            if items and (item.key is not key or rows + n > max_rows or not self.coalesce):
                break
            waiting.popleft()
            fifo.rows -= n
            if item.future.done():  # cancelled by its caller
                continue
            if item.deadline is not None and item.deadline <= now:
                if self._metrics is not None:
                    self._metrics.rejected.labels("deadline").inc()
                _fail(item.future, DeadlineExpired("deadline passed while waiting for a batch"))
                continue
            items.append(item)
            rows += n
        if self._metrics is not None and items:
            self._metrics.observe_queue(self.queued_rows, now - items[0].queued_at)
        return items

    def _thread_done(self, batch: _Batch[K, P]) -> None:
        """On the event loop: an inference thread finished `batch`."""
        self._free += 1
        try:
            self._finish(batch, THREAD)
        finally:
            self._dispatch()

    def _finish(self, batch: _Batch[K, P], lane: str) -> None:
        """Hand each caller its rows' results (or the batch's error)."""
        result = batch.result
        error = batch.error
        if error is None and (result is None or result.shape[0] != batch.rows):
            got = "nothing" if result is None else f"{result.shape[0]} rows"
            error = InferenceFailed(f"model returned {got} for {batch.rows}")
        if error is not None or result is None:
            log.error(
                "inference failed for a batch of %d rows from %d calls",
                batch.rows,
                len(batch.items),
                exc_info=error,
            )
            if self._metrics is not None:
                self._metrics.batch_failures.inc()
            failure = error if isinstance(error, InferenceFailed) else InferenceFailed(str(error))
            for item in batch.items:
                _fail(item.future, failure)
            return
        if self._metrics is not None:
            self._metrics.observe_batch(lane, batch.rows, batch.seconds)
        offset = 0
        for item in batch.items:
            n = len(item.rows)
            if not item.future.done():
                item.future.set_result(result[offset : offset + n])
            offset += n

    # -- inference ------------------------------------------------------------------

    def _execute(self, batch: _Batch[K, P]) -> None:
        """Run the model on `batch`, recording its result or its error and the time it took."""
        started = time.perf_counter()
        try:
            items = batch.items
            rows = items[0].rows if len(items) == 1 else self._concat([i.rows for i in items])
            batch.result = self._run(batch.key, rows)
        except Exception as exc:  # noqa: BLE001 - reported to exactly this batch's callers
            batch.error = exc
        batch.seconds = time.perf_counter() - started

    def _worker(self) -> None:
        """An inference thread: batches from the thread lane, results back to the event loop."""
        name_os_thread(threading.current_thread().name)
        loop = self._loop
        if loop is None:
            return
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            self._execute(batch)
            try:
                loop.call_soon_threadsafe(self._thread_done, batch)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
