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
    """Doubles column 0; can be held at a gate, made to fail, or to return too few rows."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, np.ndarray]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False
        self.short_next = False

    def __call__(self, key: object, x: np.ndarray) -> np.ndarray:
        self.calls.append((key, x.copy()))
        self.entered.set()
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        if self.short_next:
            self.short_next = False
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


async def test_concurrent_calls_share_one_batch_and_get_their_own_rows(
    batcher: Batcher, model: FakeModel
) -> None:
    futures = [batcher.submit(KEY, rows(i, i + 0.5)) for i in range(4)]
    results = await asyncio.gather(*futures)
    assert len(model.calls) == 1
    assert model.calls[0][1].shape == (8, 2)
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, [2 * i, 2 * i + 1])


async def test_batch_closes_at_max_rows(batcher: Batcher, model: FakeModel) -> None:
    futures = [batcher.submit(KEY, rows(*range(3))) for _ in range(5)]  # 15 rows, max 8
    await asyncio.gather(*futures)
    sizes = [x.shape[0] for _, x in model.calls]
    assert sum(sizes) == 15
    assert all(s <= 8 for s in sizes)
    assert sizes[0] == 6  # two whole calls; a call is never split across batches


async def test_lone_call_is_flushed_by_max_wait(batcher: Batcher, model: FakeModel) -> None:
    result = await asyncio.wait_for(batcher.submit(KEY, rows(1.0)), timeout=5)
    np.testing.assert_array_equal(result, [2.0])


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
    model.fail_next = True
    doomed = [batcher.submit(KEY, rows(1.0)) for _ in range(3)]
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
    futures = [batcher.submit(old, rows(1.0)), batcher.submit(new, rows(2.0)), batcher.submit(new, rows(3.0))]
    await asyncio.gather(*futures)
    assert [k for k, _ in model.calls] == [old, new]
    assert [x.shape[0] for _, x in model.calls] == [1, 2]


async def test_close_drains_then_refuses(model: FakeModel) -> None:
    b = make(model, max_wait_s=10.0)  # nothing flushes on time: close must flush
    b.start()
    pending = b.submit(KEY, rows(7.0))
    await b.close(timeout=5)
    np.testing.assert_array_equal(await pending, [14.0])
    with pytest.raises(ShuttingDown):
        b.submit(KEY, rows(1.0))


async def test_batching_off_runs_each_call_alone(model: FakeModel) -> None:
    b = make(model, coalesce=False)
    b.start()
    try:
        await asyncio.gather(*(b.submit(KEY, rows(float(i))) for i in range(4)))
    finally:
        await b.close(timeout=5)
    assert [x.shape[0] for _, x in model.calls] == [1, 1, 1, 1]


async def test_sparse_arrivals_are_not_held_for_max_wait(model: FakeModel) -> None:
    b = make(model, max_wait_s=10.0)
    b._last_submit -= 1000.0  # the engine has been idle: calls arrive far apart
    b.start()
    try:
        result = await asyncio.wait_for(b.submit(KEY, rows(3.0)), timeout=5)  # not 10 s
        np.testing.assert_array_equal(result, [6.0])
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
