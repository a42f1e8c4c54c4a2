"""The micro-batcher: rows from concurrent calls, one model call per batch.

    caller ──submit(key, rows, deadline)──▶ bounded FIFO (rows) ──▶ collector task
       ▲                                                            │ size OR time
       └──── future (rows' results, by offset) ◀── run_in_executor(run(key, concat(rows)))

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
- Inference runs off the event loop in a thread pool; at most
  `max_inflight_batches` run at once. An exception fails exactly the calls in
  that batch, as `InferenceFailed`; a wrong row count is such a failure too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
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


def _wake_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


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
    ) -> None:
        self._run = run
        self._concat = concat
        #: False: every call is its own model call (batching off, for comparison)
        self.coalesce = coalesce
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self.max_queue_rows = max_queue_rows
        self._metrics = metrics
        self._queue: deque[_Item[K, P]] = deque()
        self._queued_rows = 0
        self._slots = asyncio.Semaphore(max_inflight_batches)
        self._executor = ThreadPoolExecutor(max_inflight_batches, thread_name_prefix="inference")
        self._wakeup: asyncio.Future[None] | None = None
        self._collector: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._closing = False
        self._last_submit = time.monotonic()
        self._gap = 0.0  # moving average of the time between submits, capped per sample

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        if self._collector is None:
            self._collector = asyncio.get_running_loop().create_task(self._collect(), name="batch-collector")
            self._collector.add_done_callback(self._collector_done)

    def submit(self, key: K, rows: P, deadline: float | None = None) -> asyncio.Future[Result]:
        """Queue `rows` for the model of `key`; the future resolves to their results, in order."""
        if self._closing:
            raise ShuttingDown("the engine is shutting down")
        n = len(rows)
        if self._queued_rows + n > self.max_queue_rows and self._queue:
            raise Overloaded(
                f"queue full ({self._queued_rows} trades waiting, limit {self.max_queue_rows}); retry later"
            )
        now = time.monotonic()
        self._gap += 0.2 * (min(now - self._last_submit, 10 * self.max_wait_s) - self._gap)
        self._last_submit = now
        if deadline is not None and deadline <= now:
            raise DeadlineExpired("the call's deadline passed before it could be queued")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(key, rows, future, deadline, now))
        self._queued_rows += n
        self._wake()
        return future

    async def close(self, timeout: float | None = None) -> None:
        """Take no more rows, finish what is queued and running, then stop."""
        self._closing = True
        self._wake()
        tasks = [t for t in (self._collector, *self._batches) if t is not None]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        for item in self._queue:
            _fail(item.future, ShuttingDown("the engine shut down before this call was scored"))
        self._queue.clear()
        self._queued_rows = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- collector -------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = waiter = loop.create_future()
        handle = None
        if timeout is not None:
            handle = loop.call_later(timeout, _wake_future, waiter)
        try:
            await waiter
        finally:
            if handle is not None:
                handle.cancel()
            self._wakeup = None

    async def _collect(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                await self._sleep_until_woken(None)
            await self._slots.acquire()
            try:
                await self._fill()
                items = self._take()
            except BaseException:
                self._slots.release()
                raise
            if not items:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(items))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _fill(self) -> None:
        """Wait until the head batch is full, its time is up, or the engine is closing."""
        while self._queue and not self._closing:
            head = self._queue[0]
            left = head.queued_at + self.max_wait_s - time.monotonic()
            if left <= 0 or self._queued_rows >= self.max_batch_rows or not self.coalesce:
                return
            if self._gap > self.max_wait_s:  # sparse arrivals: nothing more is coming in time
                return
            if self._queue[-1].key is not head.key:
                return  # a newer model's rows are waiting (keys only move forward): close now
            await self._sleep_until_woken(left)

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

    async def _run_batch(self, items: list[_Item[K, P]]) -> None:
        try:
            n_rows = sum(len(i.rows) for i in items)
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(
                    self._executor, self._job, items[0].key, [i.rows for i in items]
                )
                if result.shape[0] != n_rows:
                    raise InferenceFailed(f"model returned {result.shape[0]} rows for {n_rows}")
            except Exception as exc:
                log.exception("inference failed for a batch of %d rows from %d calls", n_rows, len(items))
                if self._metrics is not None:
                    self._metrics.batch_failures.inc()
                error = exc if isinstance(exc, InferenceFailed) else InferenceFailed(str(exc))
                for item in items:
                    _fail(item.future, error)
                return
            if self._metrics is not None:
                self._metrics.inference.observe(time.perf_counter() - started)
                self._metrics.batch_size.observe(n_rows)
                self._metrics.batches.inc()
                self._metrics.rows_scored.inc(n_rows)
            offset = 0
            for item in items:
                n = len(item.rows)
                if not item.future.done():
                    item.future.set_result(result[offset : offset + n])
                offset += n
        finally:
            self._slots.release()
            self._wake()

    def _job(self, key: K, parts: list[P]) -> Result:
        """In the inference thread: merge the calls' rows, run the model once."""
        return self._run(key, parts[0] if len(parts) == 1 else self._concat(parts))

    def _collector_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("batch collector stopped", exc_info=task.exception())
