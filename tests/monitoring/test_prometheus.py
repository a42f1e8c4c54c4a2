"""A real Prometheus scraping a real engine: the series exist and PromQL over them makes sense."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.metrics import EngineMetrics
from tests.conftest import EngineProcess, free_port, sample_request
from tests.monitoring.conftest import RAMP, TRADES_PER_CALL, Recording
from tests.monitoring.prom import Prometheus

#: a real Prometheus scraping real engines (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow

SCORE_OK = 'grpc_server_handled_total{job="tradescore",grpc_method="Score",grpc_code="OK"}'


def expected_families() -> set[str]:
    """Every sample name the engine exports (from its own metric definitions, not a hand-kept list)."""
    names = set()
    for family in EngineMetrics().registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                names.add(sample.name)
    return names


def peak(rec: Recording) -> tuple[float, float]:
    start, end, _ = max(rec.steps, key=lambda s: s[2])
    return start, end


def test_every_engine_series_is_scraped(observed: Recording) -> None:
    scraped = set(observed.prometheus.api("label/__name__/values"))
    missing = expected_families() - scraped
    assert not missing, f"defined but not in Prometheus: {sorted(missing)}"
    labels = observed.prometheus.query(
        'grpc_server_handled_total{grpc_method="Score",grpc_code="ResourceExhausted"}'
    )
    assert labels, "every code is exported from the start (at 0)"
    assert labels[0]["metric"]["grpc_type"] == "unary"
    assert labels[0]["metric"]["grpc_service"] == "tradescore.v1.TradeScorer"
    assert labels[0]["metric"]["namespace"] == "tradescore"


def test_counters_match_what_the_client_did(observed: Recording) -> None:
    p = observed.prometheus
    assert p.value(f"sum({SCORE_OK})") == observed.calls["ok"]
    assert (
        p.value('sum(grpc_server_handled_total{grpc_method="Score",grpc_code="InvalidArgument"})')
        == (observed.calls["invalid"])
    )
    stream = '{job="tradescore",grpc_method="ScoreStream",grpc_type="bidi_stream"}'
    assert p.value(f"sum(grpc_server_msg_sent_total{stream})") == observed.calls["stream_messages"]
    assert p.value(f"sum(grpc_server_msg_received_total{stream})") == observed.calls["stream_messages"]
    # the score distribution saw every trade scored, once
    rows = p.value("sum(engine_rows_scored_total)")
    assert rows == TRADES_PER_CALL * (observed.calls["ok"] + observed.calls["stream_messages"])
    assert p.value("sum(engine_score_count)") == rows
    assert p.value("sum(engine_risk_band_total)") == rows
    assert p.value('sum(engine_model_reloads_total{outcome="success"})') >= 1
    model = p.query("engine_model_info == 1")
    assert [m["metric"]["version"] for m in model] == ["1.0.0"]


def test_rate_over_the_peak(observed: Recording) -> None:
    start, end = peak(observed)
    p = observed.prometheus
    window = int(end - start) - 1
    per_second = p.value(f"sum(rate({SCORE_OK}[{window}s]))", at=end)
    calls_at_peak = p.value(f"sum(increase({SCORE_OK}[{window}s]))", at=end)
    assert per_second > 0
    assert calls_at_peak == pytest.approx(per_second * window, rel=0.01)
    # the rate is what the client could do in that time: between a tenth and all of the calls it made
    assert 0.1 * observed.calls["ok"] / window < per_second <= observed.calls["ok"] / window * 1.5
    # in-flight calls follow the number of callers: 120 at the peak
    inflight = p.value(f"quantile_over_time(0.5, engine_inflight_calls[{window}s])", at=end)
    callers = max(c for _, c in RAMP)
    assert 0.5 * callers <= inflight <= callers + 3  # + a stream and a refused call from the side traffic
    # batching coalesced calls: a batch carries more trades than one call
    mean_batch = p.value(
        f"sum(rate(engine_batch_size_sum[{window}s])) / sum(rate(engine_batch_size_count[{window}s]))", at=end
    )
    assert mean_batch > TRADES_PER_CALL


def test_histogram_quantiles_over_the_peak(observed: Recording) -> None:
    start, end = peak(observed)
    p = observed.prometheus
    window = int(end - start) - 1
    q = {
        quantile: p.value(
            f"histogram_quantile({quantile}, sum by (le) (rate(grpc_server_handling_seconds_bucket"
            f'{{grpc_method="Score"}}[{window}s])))',
            at=end,
        )
        for quantile in (0.5, 0.95, 0.99)
    }
    assert 10e-6 < q[0.5] <= q[0.95] <= q[0.99] < 5.0, q
    # queue wait and inference time resolve below a millisecond-scale call
    for metric in ("engine_queue_wait_seconds", "engine_inference_seconds"):
        p50 = p.value(f"histogram_quantile(0.5, sum by (le) (rate({metric}_bucket[{window}s])))", at=end)
        assert 0 < p50 < q[0.99] * 2, (metric, p50)
    # scores: most trades are far from failing (a few % base rate)
    median = p.value(f"histogram_quantile(0.5, sum by (le) (rate(engine_score_bucket[{window}s])))", at=end)
    assert 0 < median < 0.2


def test_rules_load_and_evaluate(observed: Recording) -> None:
    groups = observed.prometheus.api("rules")["groups"]
    assert groups
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    p = observed.prometheus
    _, end = peak(observed)
    # InvalidArgument calls are the caller's errors, not the server's
    assert p.value("tradescore:grpc_server_errors:ratio_rate5m", at=end + 1) == 0
    slow = p.value("tradescore:score_latency_over_10ms:ratio_rate5m", at=end + 1)
    assert 0 <= slow <= 1
    firing = {a["labels"]["alertname"] for a in p.api("alerts")["alerts"] if a["state"] == "firing"}
    assert not firing & {"TradeScoreErrorBudgetBurn", "TradeScoreErrorRatioHigh", "TradeScoreTargetDown"}


# -- --workers 2: one /metrics for both, numbers that add up ------------------------------------------------


async def _score_over_connections(target: str, connections: int, calls_each: int) -> int:
    async def one(i: int) -> int:
        # a channel per connection: SO_REUSEPORT spreads connections, not calls, over the workers
        async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pb_grpc.TradeScorerStub(ch)
            for k in range(calls_each):
                # generous: each worker compiles its kernels on its first call after a fresh install
                await stub.Score(sample_request(5, seed=i * 31 + k), timeout=60)
        return calls_each

    return sum(await asyncio.gather(*(one(i) for i in range(connections))))


def test_two_workers_add_up(tmp_path: Path) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    (shared / "counter_999999.db").write_bytes(b"stale from an earlier run")
    port, metrics_port = free_port(), free_port()
    engine = EngineProcess(
        "--workers", "2", "--port", str(port), "--metrics-port", str(metrics_port),
        env={"PROMETHEUS_MULTIPROC_DIR": str(shared)},
    )  # fmt: skip
    prometheus = None
    try:
        assert not (shared / "counter_999999.db").exists(), "stale files are cleared at start"
        prometheus = Prometheus(tmp_path / "prom", {"tradescore": [f"127.0.0.1:{metrics_port}"]})
        workers = _wait_workers(prometheus)
        calls = asyncio.run(_score_over_connections(f"127.0.0.1:{port}", connections=16, calls_each=25))
        deadline = time.monotonic() + 20
        while prometheus.value(f"sum({SCORE_OK}) or vector(0)") < calls and time.monotonic() < deadline:
            time.sleep(0.25)
        assert prometheus.value(f"sum({SCORE_OK})") == calls
        assert prometheus.value("sum(engine_rows_scored_total)") == 5 * calls
        assert prometheus.value("sum(engine_score_count)") == 5 * calls
        assert prometheus.value("sum(engine_inflight_calls)") == 0  # livesum: one series, summed
        assert len(prometheus.query("engine_inflight_calls")) == 1
        # each worker's own file holds its share; the shares add up to what /metrics says
        per_worker = {}
        for pid in workers:
            merged = MultiProcessCollector.merge([str(shared / f"counter_{pid}.db")])
            per_worker[pid] = sum(
                s.value
                for m in merged
                for s in m.samples
                if s.name == "grpc_server_handled_total"
                and s.labels.get("grpc_method") == "Score"
                and s.labels.get("grpc_code") == "OK"
            )
        assert sum(per_worker.values()) == calls
        assert all(n > 0 for n in per_worker.values()), f"16 connections all went to one worker: {per_worker}"
    finally:
        if prometheus is not None:
            prometheus.stop()
        engine.signal(signal.SIGTERM)
        code, log = engine.wait(timeout=30)
    assert code == 0, log
    assert not glob.glob(str(shared / "gauge_live*.db")), "dead workers' live gauges are removed"
    assert glob.glob(str(shared / "counter_*.db")), "counters stay (a user-given directory is not deleted)"


def _wait_workers(prometheus: Prometheus) -> list[str]:
    """Both workers' pids, from engine_model_info (multiprocess mode `liveall`: one series per worker)."""
    result = prometheus.wait_for("engine_model_info == 1", timeout=60, at_least=2)
    pids = sorted({r["metric"]["pid"] for r in result})
    assert len(pids) == 2, result
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
    return pids
