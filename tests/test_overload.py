"""Overload: offered three times what the engine can score, it sheds the excess with RESOURCE_EXHAUSTED
at once, keeps scoring through it, and scores the next call after it.

A real `engine serve` subprocess; the test's client offers an open-loop spike (calls started on a
fixed schedule whatever the answers) of 500-trade calls, so that this VM's second core is enough
to offer three times the engine's saturation rate. Latency figures are printed, not asserted
(timing belongs to `loadtest/`); what is asserted is the behaviour: every call ends with a score
or RESOURCE_EXHAUSTED (no timeouts, no other errors), some are shed, the engine keeps scoring
through the spike, and the call after it is scored (its latency against the same call before the
spike is printed).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from tradescore_locust.server_metrics import QUEUE_WAIT, histogram_quantile, scrape, server_p99, window

from engine._proto.tradescore.v1 import tradescore_pb2 as pb

from .conftest import EngineProcess, free_port, sample_request

#: saturates an engine process (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow

TRADES = 500
#: the queue holds four such calls beyond the one being scored: a call waits for at most ~5 batches
QUEUE_ROWS = 4 * TRADES
SPIKE_SECONDS = 4.0


async def _closed_loop_rate(score: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], raw: bytes) -> float:
    """Calls per second four callers get, each sending its next call when the last one returns."""
    done = 0
    end = time.monotonic() + 3.0

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < end:
            await score(raw, timeout=10)  # four callers never fill a queue of four calls
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(4)))
    return done / (time.monotonic() - started)


async def _spike(
    score: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], raw: bytes, rate: float
) -> tuple[dict[str, int], list[float]]:
    """Open loop: a call every 1/rate seconds for SPIKE_SECONDS; (outcomes by code, OK latencies)."""
    outcomes: dict[str, int] = {}
    latencies: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        try:
            await score(raw, timeout=10)
            code = "OK"
            latencies.append(time.perf_counter() - t0)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        outcomes[code] = outcomes.get(code, 0) + 1

    tasks = []
    start = time.monotonic()
    n = int(rate * SPIKE_SECONDS)
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    return outcomes, latencies


async def _drive(target: str, metrics_url: str) -> dict[str, float]:
    raw = sample_request(TRADES, seed=21).SerializeToString()
    async with grpc.aio.insecure_channel(target) as channel:
        score = channel.unary_unary("/tradescore.v1.TradeScorer/Score", None, None)
        await score(raw, timeout=60)  # warm
        t0 = time.perf_counter()
        await score(raw, timeout=10)
        before_ms = (time.perf_counter() - t0) * 1000
        saturation = await _closed_loop_rate(score, raw)
        before = scrape([metrics_url])
        outcomes, latencies = await _spike(score, raw, 3 * saturation)
        during = window(before, scrape([metrics_url]))
        # after the spike (every call of it has ended): the next call is scored, not shed; how
        # fast, against the same call before the spike, is printed, not asserted
        t0 = time.perf_counter()
        out = await score(raw, timeout=10)
        after_ms = (time.perf_counter() - t0) * 1000
        assert len(pb.ScoreResponse.FromString(out).scores) == TRADES
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert outcomes.get("RESOURCE_EXHAUSTED", 0) > 0, (
        f"nothing was shed at three times saturation: {outcomes}"
    )
    assert outcomes.get("OK", 0) > 0, outcomes
    return {
        "saturation_calls_s": saturation,
        "offered_calls_s": 3 * saturation,
        "ok": outcomes.get("OK", 0),
        "shed": outcomes.get("RESOURCE_EXHAUSTED", 0),
        "goodput_vs_saturation": outcomes.get("OK", 0) / SPIKE_SECONDS / saturation,
        "accepted_p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "accepted_p99_ms": float(np.percentile(latencies, 99)) * 1000,
        # the engine's own view: every Score call's handling time (the shed ones are quick), and
        # how long a batch's oldest trade waited in the bounded queue
        "server_p99_ms": (server_p99(during).p99_s or math.nan) * 1000,
        "queue_wait_p99_ms": (histogram_quantile(0.99, during.histograms.get(QUEUE_WAIT, {})) or math.nan)
        * 1000,
        "before_ms": before_ms,
        "after_ms": after_ms,
    }


def test_three_times_saturation_is_shed_and_the_engine_recovers(
    engine_process: Callable[..., EngineProcess],
) -> None:
    metrics_port = free_port()
    server = engine_process(
        "--max-queue-rows", str(QUEUE_ROWS), "--max-trades-per-request", str(TRADES),
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    figures = asyncio.run(_drive(server.target, f"http://127.0.0.1:{metrics_port}/metrics"))
    assert server.proc.poll() is None
    print("overload: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))
