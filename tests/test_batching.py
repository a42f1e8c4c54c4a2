"""The micro-batcher, driven by a fake model gated by events (no sleeps to wait for work)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from engine.batching import MicroBatcher, concat_matrices
from engine.errors import DeadlineExpired, InferenceFailed, Overloaded, ShuttingDown
from engine.metrics import EngineMetrics

Batcher = MicroBatcher[object, np.ndarray]


class FakeModel:
    """Doubles column 0; can be held at a gate (batches of more than `gate_above` rows only), made
    to fail, or to return too few rows. Records each batch and the thread that ran it."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, np.ndarray]] = []
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.gate_above = 0
        self.entered = threading.Event()
        self.fail_next = False
        self.short_next = False

    def __call__(self, key: object, x: np.ndarray) -> np.ndarray:
        self.calls.append((key, x.copy()))
        self.threads.append(threading.current_thread().name)
        fail, short = self.fail_next, self.short_next  # what this batch does, decided as it enters
        self.fail_next = self.short_next = False
        if x.shape[0] > self.gate_above:
            self.entered.set()
            self.gate.wait(10)
        if fail:
            raise RuntimeError("model exploded")
        if short:
            return x[:-1, 0] * 2
        return x[:, 0] * 2


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values], dtype=np.float32)


async def wait_entered(model: FakeModel) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 10)
    model.entered.clear()


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def make(model: FakeModel, **kw: object) -> Batcher:
    opts: dict[str, object] = dict(max_batch_rows=8, max_wait_s=0.05, max_queue_rows=16)
    opts.update(kw)
    return MicroBatcher(model, concat_matrices, metrics=EngineMetrics(), **opts)  # type: ignore[arg-type]


@pytest.fixture
async def batcher(model: FakeModel) -> AsyncIterator[Batcher]:
    b = make(model)
    b.start()
    yield b
    model.gate.set()
    await b.close(timeout=5)


KEY = object()


def lane_count(b: Batcher, lane: str) -> float:
    metrics = b._metrics
    assert metrics is not None
    return metrics.registry.get_sample_value("engine_batches_total", {"lane": lane}) or 0.0


# -- the thread lane ----------------------------------------------------------------------


async def test_a_lone_call_goes_to_the_model_at_once(batcher: Batcher, model: FakeModel) -> None:
    """No timer: a lone call is handed to the free inference thread as it is queued."""
    model.gate.clear()
    pending = batcher.submit(KEY, rows(1.0))
    await wait_entered(model)  # in the model while the 50 ms max_wait has not passed
    model.gate.set()
    np.testing.assert_array_equal(await pending, [2.0])
    assert model.threads == ["inference-0"]
    assert lane_count(batcher, "thread") == 1


async def test_calls_queued_while_the_model_is_busy_share_the_next_batch(
    batcher: Batcher, model: FakeModel
) -> None:
    model.gate.clear()
    first = batcher.submit(KEY, rows(0.0))
    await wait_entered(model)
    futures = [batcher.submit(KEY, rows(i, i + 0.5)) for i in range(1, 4)]  # 6 rows, max 8
    model.gate.set()
    results = await asyncio.gather(first, *futures)
    assert [x.shape[0] for _, x in model.calls] == [1, 6]
    for i, r in enumerate(results[1:], start=1):
        np.testing.assert_array_equal(r, [2 * i, 2 * i + 1])


async def test_batch_closes_at_max_rows(batcher: Batcher, model: FakeModel) -> None:
    model.gate.clear()
    first = batcher.submit(KEY, rows(0.0))
    await wait_entered(model)
    futures = [batcher.submit(KEY, rows(*range(3))) for _ in range(5)]  # 15 rows, max 8
    model.gate.set()
    await asyncio.gather(first, *futures)
    sizes = [x.shape[0] for _, x in model.calls]
    assert sum(sizes) == 16
    assert all(s <= 8 for s in sizes)
    assert sizes[1] == 6  # two whole calls; a call is never split across batches


async def test_full_queue_refuses_at_once(batcher: Batcher, model: FakeModel) -> None:
    model.gate.clear()
    first = batcher.submit(KEY, rows(*range(8)))
    await wait_entered(model)  # the first batch is in the model; the queue is empty again
    queued = [batcher.submit(KEY, rows(*range(8))) for _ in range(2)]  # 16 rows: queue full
    with pytest.raises(Overloaded, match="queue full"):
        batcher.submit(KEY, rows(1.0))
    model.gate.set()
    await asyncio.gather(first, *queued)


async def test_expired_callers_are_dropped_before_inference(batcher: Batcher, model: FakeModel) -> None:
    with pytest.raises(DeadlineExpired):
        batcher.submit(KEY, rows(1.0), deadline=time.monotonic() - 1)
    model.gate.clear()
    blocker = batcher.submit(KEY, rows(*range(8)))
    await wait_entered(model)
    doomed = batcher.submit(KEY, rows(99.0), deadline=time.monotonic() + 0.001)
    alive = batcher.submit(KEY, rows(5.0))
    await asyncio.sleep(0.01)  # let the doomed call's deadline pass while the model is busy
    model.gate.set()
    await blocker
    with pytest.raises(DeadlineExpired):
        await doomed
    np.testing.assert_array_equal(await alive, [10.0])
    assert all(99.0 not in x[:, 0] for _, x in model.calls)


async def test_cancelled_caller_never_blocks_the_others(batcher: Batcher, model: FakeModel) -> None:
    model.gate.clear()
    blocker = batcher.submit(KEY, rows(*range(8)))
    await wait_entered(model)
    gone = batcher.submit(KEY, rows(42.0))
    stays = batcher.submit(KEY, rows(3.0))
    gone.cancel()
    model.gate.set()
    await blocker
    np.testing.assert_array_equal(await stays, [6.0])
    assert all(42.0 not in x[:, 0] for _, x in model.calls)


async def test_model_error_fails_exactly_that_batch(batcher: Batcher, model: FakeModel) -> None:
    model.gate.clear()
    blocker = batcher.submit(KEY, rows(0.0))
    await wait_entered(model)
    model.fail_next = True  # the next batch to enter: the three calls queued meanwhile
    doomed = [batcher.submit(KEY, rows(1.0)) for _ in range(3)]
    model.gate.set()
    await blocker
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(o, InferenceFailed) for o in outcomes)
    assert "exploded" not in InferenceFailed("x").client_message()  # internals stay private
    np.testing.assert_array_equal(await batcher.submit(KEY, rows(4.0)), [8.0])


async def test_wrong_row_count_is_an_inference_failure(batcher: Batcher, model: FakeModel) -> None:
    model.short_next = True
    with pytest.raises(InferenceFailed, match="returned 1 rows for 2"):
        await batcher.submit(KEY, rows(1.0, 2.0))


async def test_rows_of_different_models_never_share_a_batch(batcher: Batcher, model: FakeModel) -> None:
    old, new = object(), object()
    model.gate.clear()
    blocker = batcher.submit(old, rows(0.0))
    await wait_entered(model)
    futures = [batcher.submit(old, rows(1.0)), batcher.submit(new, rows(2.0)), batcher.submit(new, rows(3.0))]
    model.gate.set()
    await asyncio.gather(blocker, *futures)
    assert [k for k, _ in model.calls] == [old, old, new]
    assert [x.shape[0] for _, x in model.calls] == [1, 1, 2]


async def test_close_drains_then_refuses(model: FakeModel) -> None:
    b = make(model)
    b.start()
    model.gate.clear()
    running = b.submit(KEY, rows(7.0))
    await wait_entered(model)
    queued = b.submit(KEY, rows(8.0))
    closing = asyncio.ensure_future(b.close(timeout=5))
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown):
        b.submit(KEY, rows(1.0))
    model.gate.set()
    await closing
    np.testing.assert_array_equal(await running, [14.0])
    np.testing.assert_array_equal(await queued, [16.0])


async def test_batching_off_runs_each_call_alone(model: FakeModel) -> None:
    b = make(model, coalesce=False)
    b.start()
    try:
        model.gate.clear()
        first = b.submit(KEY, rows(0.0))
        await wait_entered(model)
        rest = [b.submit(KEY, rows(float(i))) for i in range(1, 4)]
        model.gate.set()
        await asyncio.gather(first, *rest)
    finally:
        await b.close(timeout=5)
    assert [x.shape[0] for _, x in model.calls] == [1, 1, 1, 1]


# -- the inline lane ----------------------------------------------------------------------


async def test_a_small_call_on_an_idle_loop_is_scored_before_submit_returns(model: FakeModel) -> None:
    b = make(model, inline_rows=4)
    b.start()
    try:
        await asyncio.sleep(0.01)  # the loop blocks (waits for the timer): it is idle
        future = b.submit(KEY, rows(1.0, 2.0))
        assert future.done()  # no timer, no thread, no loop turn
        np.testing.assert_array_equal(future.result(), [2.0, 4.0])
        assert model.threads == ["MainThread"]
        assert lane_count(b, "inline") == 1 and lane_count(b, "thread") == 0
    finally:
        await b.close(timeout=5)


async def test_small_calls_on_a_busy_loop_share_a_batch(model: FakeModel) -> None:
    """Queued back to back, without the loop blocking in between: the first runs at once (the loop
    had been idle before it), the next ones wait for each other until max_wait or inline_rows."""
    b = make(model, inline_rows=4, max_wait_s=0.05)
    b.start()
    try:
        await asyncio.sleep(0.01)
        first = b.submit(KEY, rows(1.0))
        second = b.submit(KEY, rows(2.0))  # the loop has not blocked since the first call
        third = b.submit(KEY, rows(3.0))
        assert first.done() and not second.done() and not third.done()
        assert (await second).tolist() == [4.0] and (await third).tolist() == [6.0]
        assert [x.shape[0] for _, x in model.calls] == [1, 2]  # the timer closed the shared batch
        # the loop was idle while the timer ran: the next call runs at once; the two after it
        # wait together until they fill a batch (4 rows)
        full = [b.submit(KEY, rows(4.0, 5.0)) for _ in range(3)]
        assert all(f.done() for f in full)
        assert [x.shape[0] for _, x in model.calls] == [1, 2, 2, 4]
    finally:
        await b.close(timeout=5)


async def test_a_full_small_batch_runs_without_waiting(model: FakeModel) -> None:
    b = make(model, inline_rows=4, max_wait_s=10.0)
    b.start()
    try:
        b.submit(KEY, rows(0.0))  # idle loop: at once
        queued = [b.submit(KEY, rows(float(i), float(i))) for i in range(1, 3)]  # 4 rows: full
        assert all(f.done() for f in queued)  # not after 10 s
        assert [x.shape[0] for _, x in model.calls] == [1, 4]
    finally:
        await b.close(timeout=5)


async def test_small_calls_never_wait_behind_a_large_one(model: FakeModel) -> None:
    """A large call holds the inference thread; small calls are scored on the loop meanwhile."""
    b = make(model, inline_rows=2)
    b.start()
    try:
        model.gate_above = 2  # only batches of more than 2 rows are held
        model.gate.clear()
        large = b.submit(KEY, rows(*range(6)))
        await wait_entered(model)
        await asyncio.sleep(0.01)  # idle loop
        small = b.submit(KEY, rows(9.0))
        assert small.done() and not large.done()
        np.testing.assert_array_equal(small.result(), [18.0])
        model.gate.set()
        np.testing.assert_array_equal(await large, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
        assert model.threads == ["inference-0", "MainThread"]
    finally:
        model.gate.set()
        await b.close(timeout=5)


async def test_an_inline_failure_fails_exactly_its_calls(model: FakeModel) -> None:
    b = make(model, inline_rows=4)
    b.start()
    try:
        model.fail_next = True
        with pytest.raises(InferenceFailed):
            await b.submit(KEY, rows(1.0))
        np.testing.assert_array_equal(await b.submit(KEY, rows(4.0)), [8.0])
    finally:
        await b.close(timeout=5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")
async def test_inference_threads_carry_their_names_in_proc(model: FakeModel) -> None:
    b = make(model, max_inflight_batches=2)
    b.start()
    try:
        assert (await b.submit(KEY, rows(1.0))).tolist() == [2.0]  # a worker has run
        native = {t.native_id for t in threading.enumerate() if t.name.startswith("inference-")}
        deadline = time.monotonic() + 5  # each thread names itself first thing, which may lag start()
        while True:
            comms = {Path(f"/proc/self/task/{tid}/comm").read_text().strip() for tid in native}
            if comms == {"inference-0", "inference-1"} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert comms == {"inference-0", "inference-1"}
    finally:
        await b.close(timeout=5)
