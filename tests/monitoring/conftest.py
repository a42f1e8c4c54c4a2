"""One recorded load for the monitoring tests: a real engine, a real Prometheus scraping it, a load ramp.

The `observed` fixture (once per test session) starts `engine serve` with a
metrics port, a Prometheus scraping it every second (job `tradescore`,
namespace label `tradescore`, as in the cluster) with the rule files of
k8s/monitoring/rules loaded, then drives a market-open-like ramp of
closed-loop Score callers (plus streams, refused calls and a model reload)
and lets it fall back to idle. The tests then query what Prometheus recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from tests.conftest import EngineProcess, free_port, make_trade, sample_request
from tests.monitoring.hpa import settle_seconds, spec_from_scaled_object
from tests.monitoring.prom import ROOT, RULES_DIR, Prometheus
from tests.test_pairs import T0, pair, view

#: the KEDA ScaledObject the autoscaling proof reads (query, threshold, replicas, behaviour)
SCALED_OBJECT = ROOT / "k8s" / "base" / "scaledobject.yaml"

#: (seconds, concurrent closed-loop Score callers): a quiet pre-open, the open, the peak, the afternoon
RAMP = ((3.0, 4), (2.0, 24), (2.0, 60), (4.0, 120), (2.0, 48))
#: heavy enough that the engine, not this test's client, is the bottleneck: callers then wait in the
#: engine (in flight) rather than in the client, as a real order-management system's calls would
TRADES_PER_CALL = 100
#: room for every caller's trades in the batch queue: overload is not what this load is about
MAX_QUEUE_ROWS = 16384
#: one second of the recording stands for DILATION seconds on the autoscaler's clock (see test_scaling):
#: the ScaledObject's 1-minute window then spans 3 scrapes, so a late scrape leaves no window empty
DILATION = 20.0


def load_scaled_object() -> dict[str, object]:
    docs = [d for d in yaml.safe_load_all(SCALED_OBJECT.read_text()) if d]
    found = [d for d in docs if d.get("kind") == "ScaledObject"]
    assert len(found) == 1, f"{SCALED_OBJECT}: expected one ScaledObject"
    scaled: dict[str, object] = found[0]
    return scaled


@dataclass
class Recording:
    prometheus: Prometheus
    engine: EngineProcess
    metrics_port: int
    started: float  # unix time the ramp began
    steps: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, callers)
    load_end: float = 0.0
    idle_until: float = 0.0  # the idle tail the autoscaling proof needs is recorded by then
    calls: dict[str, int] = field(default_factory=dict)

    def wait_idle_tail(self) -> None:
        left = self.idle_until - time.time()
        if left > 0:
            time.sleep(left)


async def _drive(target: str, rec: Recording) -> None:
    """The ramp: closed-loop Score callers per step, with streams, refused calls and info calls beside."""
    counts = {"ok": 0, "invalid": 0, "stream_messages": 0, "other": 0}
    requests = [sample_request(TRADES_PER_CALL, seed=i, request_id=f"r{i}") for i in range(64)]
    # the ramp's callers re-score in bulk and read no reasons: on this VM the engine and this client
    # share two cores, and the engine's explain thread would starve the client (fewer calls in flight
    # than callers); the side traffic's streams keep the default, so trades are explained too
    none = pb.EXPLAIN_NONE
    bulk = [pb.ScoreRequest(request_id=r.request_id, trades=r.trades, explain=none) for r in requests]
    bad = pb.ScoreRequest(request_id="bad", trades=[make_trade(0, quantity=-5.0)])
    pairs = pb.ScorePairsRequest(pairs=[pair("drift", view(t=T0 + 900), view("risk", status="pending")),
                                        pair("clean", view(), view("risk"))])  # fmt: skip
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TradeScorerStub(channel)
        breaks = pb_grpc.BreakScorerStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        stop = asyncio.Event()

        async def caller(i: int, until: float) -> None:
            n = i
            while time.time() < until and not stop.is_set():
                await stub.Score(bulk[n % len(bulk)], timeout=10)
                counts["ok"] += 1
                n += 7

        async def side_traffic() -> None:
            k = 0
            while not stop.is_set():
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Score(bad, timeout=5)
                counts["invalid"] += 1
                if k % 5 == 0:

                    async def stream(first: int) -> AsyncIterator[pb.ScoreRequest]:
                        for j in range(6):
                            yield requests[(first + j) % len(requests)]

                    async for _ in stub.ScoreStream(stream(k), timeout=10):
                        counts["stream_messages"] += 1
                    await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    await breaks.ScorePairs(pairs, timeout=10)  # a status break and a clean pair
                    counts["other"] += 3
                k += 1
                await asyncio.sleep(0.1)

        side = asyncio.get_running_loop().create_task(side_traffic())
        for seconds, callers in RAMP:
            start = time.time()
            end = start + seconds
            if callers:
                await asyncio.gather(*(caller(i, end) for i in range(callers)))
            else:
                await asyncio.sleep(seconds)
            rec.steps.append((start, time.time(), callers))
            if len(rec.steps) == 2:
                rec.engine.signal(signal.SIGHUP)  # a model reload while serving (same bundle: success)
        stop.set()
        await side
    rec.calls = counts


async def _warm_up(target: str) -> None:
    """One call first: after a fresh install the engine compiles its kernels on its first request."""
    async with grpc.aio.insecure_channel(target) as channel:
        await pb_grpc.TradeScorerStub(channel).Score(sample_request(TRADES_PER_CALL), timeout=120)


@pytest.fixture(scope="session")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    metrics_port = free_port()
    engine = EngineProcess("--metrics-port", str(metrics_port), "--max-queue-rows", str(MAX_QUEUE_ROWS))
    prometheus: Prometheus | None = None
    try:
        prometheus = Prometheus(
            tmp_path_factory.mktemp("prometheus"),
            {"tradescore": [f"127.0.0.1:{metrics_port}"]},
            labels={"namespace": "tradescore"},
            rule_files=sorted(RULES_DIR.glob("*.yaml")),
            # twice a second: at DILATION 20 a 1m window of the scaler's query then holds ~6 samples, so
            # a scrape or two lost to a busy CI machine does not leave it empty
            interval="500ms",
        )
        up = prometheus.wait_for('up{job="tradescore"} == 1')
        assert up, f"Prometheus never scraped the engine:\n{prometheus.log.read_text()}"
        asyncio.run(_warm_up(engine.target))
        time.sleep(1.5)  # a couple of idle samples before the ramp
        rec = Recording(prometheus, engine, metrics_port, started=time.time())
        asyncio.run(_drive(engine.target, rec))
        rec.calls["ok"] += 1  # the warm-up call
        rec.load_end = time.time()
        # the autoscaling proof needs the idle tail long enough for the HPA to settle back to its minimum
        hpa, _ = spec_from_scaled_object(load_scaled_object())
        peak = min(hpa.max_replicas, math.ceil(max(c for _, c in RAMP) / hpa.target_average_value))
        rec.idle_until = rec.load_end + (settle_seconds(hpa, peak) + 120.0) / DILATION
        time.sleep(2.5)  # the last samples of the load are scraped and the rules evaluated
        yield rec
    finally:
        if prometheus is not None:
            prometheus.stop()
        engine.stop()
