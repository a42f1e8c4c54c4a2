"""Metrics: the gRPC interceptor against real servers, the score distribution, bulk histogram writes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Histogram

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.interceptors import MetricsInterceptor
from engine.metrics import (
    GRPC_CODE_NAMES,
    RISK_BANDS,
    SCORE_BUCKETS,
    EngineMetrics,
    MultiprocessMetrics,
    _observe_counts,
    _score_counts,
)
from engine.models.spec import RiskBands
from tests.conftest import ROOT, ServerFactory, make_trade, sample_request

SCORER = "tradescore.v1.TradeScorer"
#: generous: the engine compiles its numba kernels on its first call after a fresh install
TIMEOUT = 60.0


def value(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    got = registry.get_sample_value(metric, labels)
    assert got is not None, f"no sample {metric}{labels}"
    return got


def handled(
    registry: CollectorRegistry, method: str, code: str, kind: str = "unary", service: str = SCORER
) -> float:
    return value(
        registry,
        "grpc_server_handled_total",
        grpc_type=kind,
        grpc_service=service,
        grpc_method=method,
        grpc_code=code,
    )


def grpc_labels(method: str, kind: str = "unary", service: str = SCORER) -> dict[str, str]:
    return dict(grpc_type=kind, grpc_service=service, grpc_method=method)


def test_go_code_names_cover_every_status_code() -> None:
    assert set(GRPC_CODE_NAMES) == set(grpc.StatusCode)
    assert GRPC_CODE_NAMES[grpc.StatusCode.CANCELLED] == "Canceled"  # Go's spelling, one "l"
    assert GRPC_CODE_NAMES[grpc.StatusCode.RESOURCE_EXHAUSTED] == "ResourceExhausted"


def test_bulk_histogram_write_equals_observe() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.beta(0.5, 12, 5000), [0.0, 0.01, 0.99, 1.0], SCORE_BUCKETS])
    bulk_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    bulk = Histogram("s", "s", buckets=SCORE_BUCKETS, registry=bulk_reg)
    ref = Histogram("s", "s", buckets=SCORE_BUCKETS, registry=ref_reg)
    edges = np.asarray(SCORE_BUCKETS)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    _observe_counts(bulk, counts.tolist(), float(values.sum()))
    for v in values:
        ref.observe(float(v))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in bulk_reg.collect() for s in m.samples}
    want = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in ref_reg.collect() for s in m.samples}
    got = {k: v for k, v in got.items() if not k[0].endswith("_created")}
    want = {k: v for k, v in want.items() if not k[0].endswith("_created")}
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key]), key


def test_model_info_keeps_one_serving_model() -> None:
    metrics = EngineMetrics()
    metrics.set_model("m", "1.0.0", 100.0)
    metrics.set_model("m", "1.1.0", 200.0)
    r = metrics.registry
    assert value(r, "engine_model_info", name="m", version="1.1.0", loaded_at="200") == 1
    assert r.get_sample_value("engine_model_info", dict(name="m", version="1.0.0", loaded_at="100")) is None


async def test_engine_counts_unary_calls_codes_and_scores(start_engine: ServerFactory) -> None:
    engine, channel = await start_engine()
    stub = pb_grpc.TradeScorerStub(channel)
    r = engine.metrics.registry
    # every TradeScorer method and code exists at 0 before the first call
    assert handled(r, "Score", "OK") == 0
    assert handled(r, "ScoreStream", "Internal", kind="bidi_stream") == 0

    requests = [sample_request(7, seed=i) for i in range(5)]
    responses = [await stub.Score(req, timeout=TIMEOUT) for req in requests]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(pb.ScoreRequest(trades=[make_trade(0, quantity=-1.0)]), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)

    assert value(r, "grpc_server_started_total", **grpc_labels("Score")) == 6
    assert handled(r, "Score", "OK") == 5
    assert handled(r, "Score", "InvalidArgument") == 1
    assert value(r, "grpc_server_msg_received_total", **grpc_labels("Score")) == 6
    assert value(r, "grpc_server_msg_sent_total", **grpc_labels("Score")) == 5
    assert value(r, "grpc_server_handling_seconds_count", **grpc_labels("Score")) == 6
    assert value(r, "grpc_server_handling_seconds_sum", **grpc_labels("Score")) > 0
    assert handled(r, "GetModelInfo", "OK") == 1

    scores = np.array([s.fail_probability for resp in responses for s in resp.scores])
    bands = np.array([s.risk_band for resp in responses for s in resp.scores])
    assert value(r, "engine_score_count") == 35
    assert value(r, "engine_score_sum") == pytest.approx(scores.sum(), rel=1e-5)
    below = value(r, "engine_score_bucket", le="0.05")
    assert below == int((scores <= 0.05).sum())
    for number, band in enumerate(("LOW", "MEDIUM", "HIGH", "CRITICAL"), start=1):
        assert value(r, "engine_risk_band_total", band=band) == int((bands == number).sum())


async def test_engine_counts_stream_messages(start_engine: ServerFactory) -> None:
    engine, channel = await start_engine()
    stub = pb_grpc.TradeScorerStub(channel)

    async def requests() -> AsyncIterator[pb.ScoreRequest]:
        for i in range(4):
            yield sample_request(3, seed=i, request_id=f"s{i}")
        yield pb.ScoreRequest(request_id="bad")  # no trades: an error response, the stream goes on

    got = [resp async for resp in stub.ScoreStream(requests(), timeout=TIMEOUT)]
    assert len(got) == 5
    r = engine.metrics.registry
    labels = grpc_labels("ScoreStream", kind="bidi_stream")
    assert value(r, "grpc_server_msg_received_total", **labels) == 5
    assert value(r, "grpc_server_msg_sent_total", **labels) == 5
    assert handled(r, "ScoreStream", "OK", kind="bidi_stream") == 1


async def test_health_watch_counts_writes_of_a_writer_style_handler(start_engine: ServerFactory) -> None:
    """grpc_health's aio Watch writes with context.write(): counted through the wrapped context."""
    engine, channel = await start_engine()
    health = health_pb2_grpc.HealthStub(channel)
    assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == 1
    call = health.Watch(health_pb2.HealthCheckRequest(service=SCORER))
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()
    r = engine.metrics.registry
    labels = grpc_labels("Watch", kind="server_stream", service="grpc.health.v1.Health")
    for _ in range(100):  # the server sees the cancellation a moment later
        if value(r, "grpc_server_handled_total", **labels, grpc_code="Canceled") == 1:
            break
        await asyncio.sleep(0.02)
    assert value(r, "grpc_server_handled_total", **labels, grpc_code="Canceled") == 1
    assert value(r, "grpc_server_msg_sent_total", **labels) >= 1
    assert value(r, "grpc_server_msg_received_total", **labels) == 1
    assert handled(r, "Check", "OK", service="grpc.health.v1.Health") == 1


# -- the interceptor on its own: raw-bytes handlers, every handler shape, deadlines ------------------


class _Echo:
    """Handlers of every shape over raw bytes (request_deserializer=None, response_serializer=None)."""

    async def unary(self, request: bytes, context: Any) -> bytes:
        if request == b"abort":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        if request == b"raise":
            raise RuntimeError("boom")
        if request == b"slow":
            await asyncio.sleep(5)
        if request == b"set":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return b""
        return request[::-1]

    async def server_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for ch in request:
            yield bytes([ch])

    async def client_stream(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        return b"".join([r async for r in requests])

    def sync_unary(self, request: bytes, context: Any) -> bytes:
        return request.upper()

    def sync_stream(self, request: bytes, context: Any) -> Any:
        yield from (request, request)


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[EngineMetrics, grpc.aio.Channel]]:
    metrics = EngineMetrics()
    echo = _Echo()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream),
        "SyncUnary": grpc.unary_unary_rpc_method_handler(echo.sync_unary),
        "SyncStream": grpc.unary_stream_rpc_method_handler(echo.sync_stream),
    }
    pool = ThreadPoolExecutor(2)
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics)], migration_thread_pool=pool)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield metrics, channel
    await channel.close(None)
    await server.stop(None)
    pool.shutdown()


async def test_interceptor_wraps_raw_bytes_handlers_of_every_shape(
    echo_server: tuple[EngineMetrics, grpc.aio.Channel],
) -> None:
    metrics, channel = echo_server
    r = metrics.registry
    unary = channel.unary_unary("/test.Echo/Unary", None, None)
    assert await unary(b"abc", timeout=5) == b"cba"  # bytes in, bytes out: (de)serializers kept as None
    for payload, code in (
        (b"abort", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (b"raise", grpc.StatusCode.UNKNOWN),
        (b"set", grpc.StatusCode.NOT_FOUND),
        (b"slow", grpc.StatusCode.DEADLINE_EXCEEDED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(payload, timeout=0.3 if payload == b"slow" else 5)
        assert err.value.code() == code
    server_stream = channel.unary_stream("/test.Echo/ServerStream", None, None)
    assert [m async for m in server_stream(b"xyz", timeout=5)] == [b"x", b"y", b"z"]

    async def parts() -> AsyncIterator[bytes]:
        for p in (b"a", b"b", b"c", b"d"):
            yield p

    assert await channel.stream_unary("/test.Echo/ClientStream", None, None)(parts(), timeout=5) == b"abcd"
    assert await channel.unary_unary("/test.Echo/SyncUnary", None, None)(b"up", timeout=5) == b"UP"
    sync_stream = channel.unary_stream("/test.Echo/SyncStream", None, None)
    assert [m async for m in sync_stream(b"s", timeout=5)] == [b"s", b"s"]

    def echo(method: str, kind: str = "unary") -> dict[str, str]:
        return grpc_labels(method, kind, "test.Echo")

    def h(method: str, code: str, kind: str = "unary") -> float:
        return handled(r, method, code, kind=kind, service="test.Echo")

    for _ in range(100):  # the deadline's cancellation reaches the handler a moment after the client
        if h("Unary", "DeadlineExceeded") == 1:
            break
        await asyncio.sleep(0.02)
    assert h("Unary", "OK") == 1
    assert h("Unary", "ResourceExhausted") == 1
    assert h("Unary", "Unknown") == 1
    assert h("Unary", "NotFound") == 1
    assert h("Unary", "DeadlineExceeded") == 1
    assert value(r, "grpc_server_msg_sent_total", **echo("Unary")) == 1
    assert h("ServerStream", "OK", "server_stream") == 1
    assert value(r, "grpc_server_msg_sent_total", **echo("ServerStream", "server_stream")) == 3
    assert h("ClientStream", "OK", "client_stream") == 1
    assert value(r, "grpc_server_msg_received_total", **echo("ClientStream", "client_stream")) == 4
    assert h("SyncUnary", "OK") == 1
    assert h("SyncStream", "OK", "server_stream") == 1
    assert value(r, "grpc_server_msg_sent_total", **echo("SyncStream", "server_stream")) == 2
    # the handling-time histogram saw every call, with sub-millisecond resolution
    assert value(r, "grpc_server_handling_seconds_count", **echo("Unary")) == 5
    assert value(r, "grpc_server_handling_seconds_bucket", **echo("SyncUnary"), le="0.01") == 1


@pytest.mark.slow
def test_cost_measurement_scenario_runs_and_counts_its_calls(tmp_path: Path) -> None:
    """The benchmark's metrics_cost scenario (the per-call cost report) works in both modes;
    timings are not asserted."""
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtest" / "bench.py"),
            "--scenarios",
            "metrics_cost",
            "--cost-calls",
            "40",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    (report,) = tmp_path.glob("bench-*-costs.json")
    results = json.loads(report.read_text())["costs"]["metrics_cost"]["modes"]
    assert [r["multiprocess"] for r in results] == [False, True]
    for r in results:
        assert r["calls_counted"] == 5 * 40  # best of 5 runs, each through the wrapped handler
        assert r["wrapped_ns"] > 0 and r["observe_scores_256_ns"] > 0


def test_multiprocess_dir_of_its_own_is_removed_at_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    shared = MultiprocessMetrics()
    path = shared.prepare()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == path and os.path.isdir(path)
    assert list(shared.registry().collect()) == []  # the parent has no metrics of its own
    shared.close()
    assert not os.path.exists(path) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_score_counts_match_searchsorted_and_risk_bands() -> None:
    """The compiled per-batch tally equals np.searchsorted bucketing and RiskBands.assign,
    values on the bucket and band edges and NaN included."""
    bands = RiskBands((0.04, 0.14, 0.41))
    edges = np.asarray(SCORE_BUCKETS, dtype=np.float64)
    rng = np.random.default_rng(3)
    probs = np.concatenate([rng.random(500), edges, bands.edges, [0.0, 1.0, np.nan, np.nan]]).astype(
        np.float32
    )
    counts = np.zeros(len(SCORE_BUCKETS) + 1 + len(RISK_BANDS), dtype=np.int64)
    total = _score_counts(probs, edges, bands.edges, counts)
    want_buckets = np.bincount(np.searchsorted(edges, probs, side="left"), minlength=len(edges) + 1)
    want_bands = np.bincount(bands.assign(probs), minlength=len(RISK_BANDS) + 1)[1:]
    assert counts[: len(edges) + 1].tolist() == want_buckets.tolist()
    assert counts[len(edges) + 1 :].tolist() == want_bands.tolist()
    finite = probs[~np.isnan(probs)]
    assert np.isnan(total)
    counts[:] = 0
    want_total = float(finite.astype(np.float64).sum())
    assert _score_counts(finite, edges, bands.edges, counts) == pytest.approx(want_total)
