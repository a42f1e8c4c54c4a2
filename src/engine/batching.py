"""The micro-batcher: rows from concurrent calls, one model call per batch.

    caller ──submit(key, rows, deadline)──▶ bounded FIFO (rows) ──▶ dispatch (size OR time)
       ▲                                                            │ SimpleQueue
       └── future (rows' results, by offset) ◀── call_soon_threadsafe ◀── inference thread:
                                                                          run(key, concat(rows))

`rows` is any sized payload: a float32 matrix (model inputs) or raw trade
columns, merged with the `concat` function given to the batcher. Per-batch
work in `run` (feature computation, inference) is paid once per batch, not
once per call.

- A batch closes at `max_batch_rows` rows or `max_wait` after its *first* row
  was queued (monotonic clock), whichever comes first. It does not wait at all
  when calls arrive further apart than `max_wait` (a moving average of the
  gaps): waiting would add latency and gather nothing.
- Rows of one batch share one `key` (the model bundle they were prepared for):
  a hot swap never mixes two models' inputs in one call.
- The queue is bounded in rows: `submit` raises `Overloaded` at once when full.
- Callers that were cancelled, or whose deadline passed, are dropped before
  inference; futures are completed only if not already done, so one cancelled
  caller never strands the others.
- Inference runs off the event loop, in `max_inflight_batches` threads of
  its own, so at most that many batches run at once. An exception fails
  exactly the calls in that batch, as `InferenceFailed`; a wrong row count is
  such a failure too.

There is no collector task: dispatching is a plain function run when a call
is queued, when a batch finishes and when the head batch's wait runs out (one
timer). A call therefore costs the event loop its own work plus one wake-up
per batch from the inference thread, not a chain of tasks and futures
(a submit -> result round trip with a no-op model, `loadtest/batcher_cost.py`:
~120 us of CPU with a collector task and `run_in_executor`, 31-41 us this way).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
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


class MicroBatcher(Generic[K, P]):
    """Coalesces rows from concurrent calls into batched calls of `run(key, concat(rows...))`."""

    def __init__(
        self,
        run: Callable[[K, P], Result],
        concat: Callable[[Sequence[P]], P],
        *,
        max_batch_rows: int,
        max_wait_s: float,
        max_queue_rows: int,
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
        self.max_wait_s = max_wait_s
        self.max_queue_rows = max_queue_rows
        self._metrics = metrics
        self._thread_name = thread_name
        self._queue: deque[_Item[K, P]] = deque()
        self._queued_rows = 0
        self._slots = max_inflight_batches
        self._free = max_inflight_batches
        self._jobs: queue.SimpleQueue[_Batch[K, P] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._idle: asyncio.Event | None = None
        self._closing = False
        self._last_submit = time.monotonic()
        self._gap = 0.0  # moving average of the time between submits, capped per sample

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

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
        """Queue `rows` for the model of `key`; the future resolves to their results, in order."""
        if self._closing:
            raise ShuttingDown("the engine is shutting down")
        n = len(rows)
        self.check_room(n)
        now = time.monotonic()
        self._gap += 0.2 * (min(now - self._last_submit, 10 * self.max_wait_s) - self._gap)
        self._last_submit = now
        if deadline is not None and deadline <= now:
            raise DeadlineExpired("the call's deadline passed before it could be queued")
        assert self._loop is not None, "start() the batcher first"
        future: asyncio.Future[Result] = self._loop.create_future()
        self._queue.append(_Item(key, rows, future, deadline, now))
        self._queued_rows += n
        self._dispatch()
        return future

    def check_room(self, n: int) -> None:
        """Raise Overloaded if `n` rows would be refused now (what `submit` checks first).

        A queue holding nothing admits any call, however large (it runs as its own batch)."""
        if self._queued_rows + n > self.max_queue_rows and self._queue:
            raise Overloaded(
                f"queue full ({self._queued_rows} trades waiting, limit {self.max_queue_rows}); retry later"
            )

    async def close(self, timeout: float | None = None) -> None:
        """Take no more rows, finish what is queued and running, then stop."""
        self._closing = True
        if self._loop is not None and self._idle is not None:
            self._dispatch()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("batches still running at shutdown; their calls fail")
        for item in self._queue:
            _fail(item.future, ShuttingDown("the engine shut down before this call was scored"))
        self._queue.clear()
        self._queued_rows = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _ in self._threads:
            self._jobs.put(None)  # each thread exits after its current batch

    # -- dispatching (on the event loop) -------------------------------------------

    def _wait_left(self) -> float:
        """Seconds the head batch should still wait for more rows (0: close it now)."""
        if self._closing or not self.coalesce or self._queued_rows >= self.max_batch_rows:
            return 0.0
        if self._gap > self.max_wait_s:  # sparse arrivals: nothing more is coming in time
            return 0.0
        head = self._queue[0]
        if self._queue[-1].key is not head.key:
            return 0.0  # a newer model's rows are waiting (keys only move forward): close now
        return max(0.0, head.queued_at + self.max_wait_s - time.monotonic())

    def _dispatch(self) -> None:
        """Hand every ready batch to a free inference thread; time the wait of the next one."""
        while self._queue and self._free > 0:
            wait = self._wait_left()
            if wait > 0.0:
                self._arm(wait)
                return
            items = self._take()
            if items:
                self._free -= 1
                rows = sum(len(i.rows) for i in items)
                self._jobs.put(_Batch(items[0].key, items, rows))
        self._check_idle()

    def _arm(self, wait: float) -> None:
        assert self._loop is not None
        at = self._loop.time() + wait
        if self._timer is not None:
            if self._timer_at <= at:
                return  # an earlier (or the same) deadline is already armed
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _check_idle(self) -> None:
        if self._idle is not None and not self._queue and self._free == self._slots:
            self._idle.set()
        elif self._idle is not None:
            self._idle.clear()

    def _take(self) -> list[_Item[K, P]]:
        """Pop the next batch: head's key, up to max_batch_rows rows, live callers only."""
        now = time.monotonic()
        items: list[_Item[K, P]] = []
        rows = 0
        key = self._queue[0].key
        while self._queue:
            item = self._queue[0]
            n = len(item.rows)
            if items and (item.key is not key or rows + n > self.max_batch_rows or not self.coalesce):
                break
            self._queue.popleft()
            self._queued_rows -= n
            if item.future.done():  # cancelled by its caller
                continue
            if item.deadline is not None and item.deadline <= now:
                if self._metrics is not None:
                    self._metrics.rejected.labels("deadline").inc()
                _fail(item.future, DeadlineExpired("deadline passed while waiting for a batch"))
                continue
            items.append(item)
            rows += n
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._queued_rows)
            if items:
                self._metrics.queue_wait.observe(now - items[0].queued_at)
        return items

    def _finish(self, batch: _Batch[K, P]) -> None:
        """On the event loop: hand each caller its rows' results (or the batch's error)."""
        self._free += 1
        try:
            result = batch.result
            error = batch.error
            if error is None and (result is None or result.shape[0] != batch.rows):
                got = "nothing" if result is None else f"{result.shape[0]} rows"
                error = InferenceFailed(f"model returned {got} for {batch.rows}")
            if error is not None:
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
            assert result is not None
            if self._metrics is not None:
                self._metrics.inference.observe(batch.seconds)
                self._metrics.batch_size.observe(batch.rows)
                self._metrics.batches.inc()
                self._metrics.rows_scored.inc(batch.rows)
            offset = 0
            for item in batch.items:
                n = len(item.rows)
                if not item.future.done():
                    item.future.set_result(result[offset : offset + n])
                offset += n
        finally:
            self._dispatch()

    # -- inference (in the batcher's threads) ----------------------------------------

    def _worker(self) -> None:
        name_os_thread(threading.current_thread().name)
        loop = self._loop
        assert loop is not None
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            started = time.perf_counter()
            try:
                parts = [i.rows for i in batch.items]
                batch.result = self._run(batch.key, parts[0] if len(parts) == 1 else self._concat(parts))
            except Exception as exc:  # noqa: BLE001 - reported to exactly this batch's callers
                batch.error = exc
            batch.seconds = time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(self._finish, batch)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
