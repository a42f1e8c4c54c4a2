"""The Locust suite (loadtest/): its arithmetic, and short real runs against a real engine.

Locust runs in subprocesses, as a performance engineer runs it: importing locust
here would monkey-patch this test process with gevent. The modules imported
below are the suite's Locust-free parts (a test checks that they stay so).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from tradescore_locust import latency, profiles, server_metrics, slo
from tradescore_locust.mix import OMS_MIX, SINGLE_MIX, build_mix, mean_trades_per_call
from tradescore_locust.options import Options

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from tests.conftest import ROOT, EngineProcess, sample_request

from .conftest import free_port

LOCUST_CONF = ROOT / "loadtest" / "locust.conf"
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
# Generous latency limits: the runs prove the plumbing on a shared 2-core machine, not the engine's speed
LENIENT = [
    "--slo-p99-ms",
    "1000",
    "--slo-batch-p99-ms",
    "5000",
    "--slo-rate-ratio",
    "0.8",
    "--slo-server-p99-ms",
    "1000",
    "--slo-server-batch-p99-ms",
    "5000",
]


def test_locust_free_modules_do_not_import_locust() -> None:
    code = (
        "import sys; sys.path.insert(0, 'loadtest');"
        "import tradescore_locust.latency, tradescore_locust.server_metrics, tradescore_locust.mix,"
        " tradescore_locust.slo, tradescore_locust.profiles, tradescore_locust.options;"
        "print(sorted(m for m in ('locust', 'gevent') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- arithmetic ------------------------------------------------------------------------


def test_latency_histogram_quantiles_within_a_bucket() -> None:
    hist = latency.LatencyHistogram()
    for i in range(1, 1001):  # 0.01 ms .. 10 ms, uniformly
        hist.record(i * 1e-5)
    assert hist.total == 1000
    for q, exact in ((0.5, 5e-3), (0.99, 9.9e-3)):
        value = hist.quantile(q)
        assert value is not None
        assert exact <= value <= exact * 10 ** (1 / latency.PER_DECADE) * 1.0001
    assert latency.LatencyHistogram().quantile(0.99) is None


def test_latency_books_merge_like_one() -> None:
    a, b, both = latency.LatencyBook(), latency.LatencyBook(), latency.LatencyBook()
    for i in range(200):
        (a if i % 2 else b).record("single", 1e-4 * (1 + i))
        both.record("single", 1e-4 * (1 + i))
    merged = latency.LatencyBook()
    merged.merge(a.drain())
    merged.merge(b.drain())
    assert merged.groups["single"].counts == both.groups["single"].counts
    assert a.groups == {}  # drained


def test_histogram_quantile_is_prometheus_interpolation() -> None:
    buckets = {0.001: 10.0, 0.005: 90.0, 0.01: 100.0, math.inf: 100.0}
    assert server_metrics.histogram_quantile(0.5, buckets) == pytest.approx(0.001 + 0.004 * 40 / 80)
    assert server_metrics.histogram_quantile(0.05, buckets) == pytest.approx(0.0005)
    assert server_metrics.histogram_quantile(0.99, buckets) == pytest.approx(0.005 + 0.005 * 9 / 10)
    over = {0.001: 1.0, math.inf: 10.0}  # the rank is in +Inf: the largest finite bound
    assert server_metrics.histogram_quantile(0.99, over) == 0.001
    assert server_metrics.histogram_quantile(0.99, {math.inf: 0.0}) is None


def grpc_exposition(score_seconds: list[float], streams: int) -> str:
    """What a gRPC server interceptor exports (grpc-ecosystem names and labels)."""
    registry = CollectorRegistry()
    hist = Histogram(
        "grpc_server_handling_seconds",
        "Response latency of gRPC calls handled by the server.",
        ["grpc_type", "grpc_service", "grpc_method"],
        buckets=(0.001, 0.01),
        registry=registry,
    )
    for seconds in score_seconds:
        hist.labels("unary", "tradescore.v1.TradeScorer", "Score").observe(seconds)
    for _ in range(streams):  # a stream is timed whole: minutes, not a message's latency
        hist.labels("bidi_stream", "tradescore.v1.TradeScorer", "ScoreStream").observe(100.0)
    return generate_latest(registry).decode()


def test_grpc_server_histogram_is_preferred_and_streams_are_left_out() -> None:
    before = server_metrics.parse(grpc_exposition([0.0005] * 7, 1))
    after = server_metrics.parse(grpc_exposition([0.0005] * 97 + [0.005] * 10, 6))
    window = server_metrics.window(before, after)
    p99 = server_metrics.server_p99(window)
    assert p99.source.startswith("grpc_server_handling_seconds")
    assert p99.calls == 100  # the 5 new streams are not Score calls
    assert p99.p99_s == pytest.approx(0.001 + 0.009 * 9 / 10)


def test_profiles_follow_domain_multiples() -> None:
    close, open_ = profiles.PROFILES["close"], profiles.PROFILES["open"]
    assert close.multiple(0.0) == 1.0 and close.peak == 8.0 and close.multiple(0.8) == 8.0
    assert open_.peak == 3.0 and open_.multiple(0.175) == pytest.approx(0.3 + 2.7 * 0.5)
    opts = dataclasses.replace(Options.defaults(), load_profile="close", rate=100.0, user_rate=10.0)
    assert profiles.target_users(opts, 0.8 * profiles.duration(opts)) == 80  # 800 calls/s at 10 each
    scaled = dataclasses.replace(opts, rate_scale=10.0)
    assert profiles.target_users(scaled, 0.8 * profiles.duration(scaled)) == 800


@pytest.mark.slow
def test_oms_mix_is_mostly_single_trades_from_the_engines_generator() -> None:
    assert 6.5 < mean_trades_per_call(OMS_MIX) < 7.5
    mix = build_mix(OMS_MIX, singles=64, batches_per_tier=4)
    single, gateway, block = mix.prepared
    assert all(n == 1 for n in single.trades)
    assert all(50 <= n <= 200 for n in gateway.trades) and all(201 <= n <= 500 for n in block.trades)
    for prepared in mix.prepared:
        for payload, n in zip(prepared.payloads, prepared.trades, strict=True):
            request = pb.ScoreRequest.FromString(payload)
            assert len(request.trades) == n == len({t.trade_id for t in request.trades})
    picks = [mix.pick()[0].tier.name for _ in range(20_000)]
    assert 0.96 < picks.count("single") / len(picks) < 0.98
    assert len(build_mix(SINGLE_MIX, singles=8).prepared) == 1


def _facts(**overrides: Any) -> slo.RunFacts:
    book = latency.LatencyBook()
    for _ in range(100):
        book.record("single", 0.002)
    fields: dict[str, Any] = dict(
        calls=1000,
        failures=0,
        latencies=book,
        offered_calls=1000.0,
        paced_calls=990,
        server=server_metrics.ServerLatency(0.0008, "test", 100.0),
        server_batch=server_metrics.ServerLatency(0.02, "test", 10.0),
    )
    return slo.RunFacts(**{**fields, **overrides})


def test_gates() -> None:
    limits = Options.defaults().thresholds()
    gates = {g.name: g for g in slo.evaluate(limits, _facts())}
    assert slo.passed(list(gates.values()))
    assert gates["p99 batch"].ok is None  # no multi-trade calls: not applicable
    assert gates["p99 single"].measured == pytest.approx(2.0, rel=0.06)
    for facts, failing in (
        (_facts(failures=2), "error ratio"),
        (_facts(paced_calls=900), "achieved / offered"),
        (_facts(server=server_metrics.ServerLatency(0.006, "test", 1.0)), "p99 server"),
        (_facts(server=server_metrics.ServerLatency(None, "error: unreachable", 0.0)), "p99 server"),
        (_facts(server_batch=server_metrics.ServerLatency(0.06, "test", 1.0)), "p99 server batch"),
        (_facts(calls=0), "error ratio"),
    ):
        gates = {g.name: g for g in slo.evaluate(limits, facts)}
        assert gates[failing].ok is False and not slo.passed(list(gates.values()))


# -- real runs ---------------------------------------------------------------------------


class Engine:
    def __init__(self) -> None:
        self.metrics_port = free_port()
        self.process = EngineProcess("--metrics-port", str(self.metrics_port))

    @property
    def target(self) -> str:
        return self.process.target

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    server = Engine()
    yield server
    server.process.stop()


def locust(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "locust", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def stats(prefix: Path) -> dict[str, dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def slo_result(prefix: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(Path(f"{prefix}_slo.json").read_text())
    return result


def gate(result: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(g for g in result["gates"] if g["name"] == name)
    return found


@pytest.mark.slow
def test_metrics_are_read_from_a_real_engine(engine: Engine) -> None:
    before = server_metrics.scrape([engine.metrics_url])
    with grpc.insecure_channel(engine.target) as channel:
        stub = pb_grpc.TradeScorerStub(channel)
        for i in range(20):
            stub.Score(sample_request(1 + i % 3, seed=i), timeout=10)
    after = server_metrics.scrape([engine.metrics_url])
    window = server_metrics.window(before, after)
    assert window.counters[server_metrics.ROWS_SCORED] == sum(1 + i % 3 for i in range(20))
    single, batch = server_metrics.server_p99(window, "single"), server_metrics.server_p99(window, "batch")
    assert single.source.startswith("engine_call_seconds") and batch.source.startswith("engine_call_seconds")
    assert (single.calls, batch.calls) == (7, 13)  # one-trade calls judged apart from the others
    assert single.p99_s is not None and 0 < single.p99_s < 1.0
    assert batch.p99_s is not None and 0 < batch.p99_s < 1.0


@pytest.mark.slow
def test_smoke_run_of_the_closing_auction_passes_its_gates(engine: Engine, tmp_path: Path) -> None:
    prefix = tmp_path / "close"
    run = locust(
        *("--config", str(LOCUST_CONF), "--host", engine.target),
        *("--load-profile", "close", "--run-time", "8s", "--rate", "8", "--user-rate", "4"),
        *("--metrics-url", engine.metrics_url, "--check-responses"),
        *("--csv", str(prefix), "--html", str(tmp_path / "close.html")),
        *LENIENT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = stats(prefix)
    for name in ("Score[1]", "ScoreStream[1]", "GetModelInfo"):
        assert int(rows[name]["Request Count"]) > 0, name
        assert rows[name]["Type"] == "grpc"
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert float(rows["Score[1]"]["Average Content Size"]) > 0
    result = slo_result(prefix)
    assert result["passed"] is True and result["profile"] == "close"
    assert gate(result, "p99 server")["ok"] is True  # read from the engine's /metrics
    assert gate(result, "p99 server batch")["measured"] is not None
    assert gate(result, "achieved / offered")["measured"] > 0.8
    assert result["client_latency_ms"]["single"]["calls"] > 0
    assert result["server"]["rows_scored"] > 0
    html = (tmp_path / "close.html").read_text()
    assert "Score[1]" in html and "close" in html  # Locust's report, labelled with the profile
    assert "SLO gates (close): PASS" in run.stdout


@pytest.mark.slow
def test_a_share_of_calls_goes_through_the_open_inference_protocol(engine: Engine, tmp_path: Path) -> None:
    prefix = tmp_path / "oip"
    run = locust(
        *("--config", str(LOCUST_CONF), "--host", engine.target),
        *("--load-profile", "steady", "--run-time", "5s", "--rate", "20", "--user-rate", "5"),
        *("--oip-share", "0.5", "--check-responses"),
        *("--csv", str(prefix), "--html", str(tmp_path / "oip.html")),
        *LENIENT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = stats(prefix)
    assert int(rows["ModelInfer[1]"]["Request Count"]) > 5
    assert int(rows["Score[1]"]["Request Count"]) > 5
    assert int(rows["Aggregated"]["Failure Count"]) == 0  # every ModelInfer answer parsed and checked


@pytest.mark.slow
def test_a_violated_gate_exits_non_zero(engine: Engine, tmp_path: Path) -> None:
    prefix = tmp_path / "strict"
    run = locust(
        *("--config", str(LOCUST_CONF), "--host", engine.target),
        *("--load-profile", "steady", "--run-time", "4s", "--rate", "10"),
        *("--metrics-url", engine.metrics_url, "--csv", str(prefix), "--html", str(tmp_path / "s.html")),
        *LENIENT[:-2],
        *("--slo-server-p99-ms", "0.000001"),  # 1 ns: no engine meets it
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    result = slo_result(prefix)
    assert result["passed"] is False
    assert gate(result, "p99 server")["ok"] is False
    assert gate(result, "error ratio")["ok"] is True
    assert "SLO gates (steady): FAIL" in run.stdout


@pytest.mark.slow
def test_unreachable_target_fails_the_run(tmp_path: Path) -> None:
    prefix = tmp_path / "down"
    run = locust(
        *("--config", str(LOCUST_CONF), "--host", f"127.0.0.1:{free_port()}"),
        *("--load-profile", "steady", "--run-time", "6s", "--rate", "5", "--timeout-ms", "200"),
        *("--csv", str(prefix), "--html", str(tmp_path / "d.html")),
    )
    assert run.returncode == 1
    result = slo_result(prefix)
    assert gate(result, "error ratio")["ok"] is False
    failures = Path(f"{prefix}_failures.csv").read_text()
    assert "UNAVAILABLE" in failures


@pytest.mark.slow
def test_distributed_master_and_worker(engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker"]
        + ["--master-host", "127.0.0.1", "--master-port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        prefix = tmp_path / "dist"
        run = locust(
            *("--config", str(LOCUST_CONF), "--master", "--expect-workers", "1"),
            *("--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)),
            *("--expect-workers-max-wait", "60", "--host", engine.target),
            *("--load-profile", "steady", "--run-time", "5s", "--rate", "10", "--user-rate", "5"),
            *("--csv", str(prefix), "--html", str(tmp_path / "dist.html")),
            *LENIENT,
        )
        worker_out, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert worker.returncode == 0, worker_out[-3000:]
    result = slo_result(prefix)
    # every figure the master judged came from the worker: calls, latency buckets, paced calls
    assert result["calls"] > 0
    assert result["client_latency_ms"]["single"]["calls"] > 0
    assert result["offered_calls"] > 0 and result["paced_calls_completed"] > 0
    assert "trade mix oms" in worker_out  # the worker built the requests, not the master


def test_every_profile_and_option_is_documented() -> None:
    text = (ROOT / "loadtest" / "README.md").read_text()
    for name in profiles.PROFILES:
        assert f"`{name}`" in text, name
    from tradescore_locust.options import SPECS

    for spec in SPECS:
        assert f"`{spec.flag}`" in text, spec.flag
