"""A real engine on a free port, called by real gRPC clients."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.server import EngineServer
from tests.conftest import (
    HeldBatches,
    ServerFactory,
    copy_bundle,
    in_process_probabilities,
    make_trade,
    resign,
    sample_request,
)

Stub = tuple[EngineServer, "pb_grpc.TradeScorerAsyncStub"]


async def test_scores_equal_in_process_onnx_runtime(engine_stub: Stub) -> None:
    engine, stub = engine_stub
    request = sample_request(300, seed=11)
    response = await stub.Score(request)
    assert [s.trade_id for s in response.scores] == [t.trade_id for t in request.trades]
    got = np.array([s.fail_probability for s in response.scores])
    want = in_process_probabilities(engine, request)
    np.testing.assert_array_equal(got, want.astype(np.float64))
    model = engine.models.current
    assert (response.model_name, response.model_version) == (model.name, model.version)
    bands = model.bundle.manifest.risk_bands.assign(want)
    assert [s.risk_band for s in response.scores] == bands.tolist()
    assert {s.risk_band for s in response.scores} <= {1, 2, 3, 4}


async def test_concurrent_callers_each_get_their_own_trades_in_order(engine_stub: Stub) -> None:
    engine, stub = engine_stub
    requests = [sample_request(1 + (i % 7) * 13, seed=100 + i, request_id=f"r{i}") for i in range(60)]
    responses = await asyncio.gather(*(stub.Score(r) for r in requests))
    for request, response in zip(requests, responses, strict=True):
        assert response.request_id == request.request_id
        assert [s.trade_id for s in response.scores] == [t.trade_id for t in request.trades]
        got = np.array([s.fail_probability for s in response.scores])
        np.testing.assert_array_equal(got, in_process_probabilities(engine, request).astype(np.float64))
    # the calls really were coalesced: fewer model calls than requests
    assert engine.metrics.batches_run() < len(requests)


async def test_stream_answers_in_order_and_survives_a_bad_message(engine_stub: Stub) -> None:
    engine, stub = engine_stub
    requests = [sample_request(1 + i % 3, seed=200 + i, request_id=f"s{i}") for i in range(40)]
    requests[17] = pb.ScoreRequest(request_id="s17", trades=[make_trade(0, quantity=-5.0)])

    async def feed() -> AsyncIterator[pb.ScoreRequest]:
        for r in requests:
            yield r

    responses = [r async for r in stub.ScoreStream(feed())]
    assert [r.request_id for r in responses] == [r.request_id for r in requests]
    bad = responses[17]
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (bad.error.field, bad.error.trade_index) == ("quantity", 0)
    assert len(bad.scores) == 0
    for request, response in zip(requests, responses, strict=True):
        if response.request_id == "s17":
            continue
        assert not response.HasField("error")
        assert [s.trade_id for s in response.scores] == [t.trade_id for t in request.trades]
        got = np.array([s.fail_probability for s in response.scores])
        np.testing.assert_array_equal(got, in_process_probabilities(engine, request).astype(np.float64))


BAD_INPUTS = [
    ("missing trade id", [make_trade(0), make_trade(1, trade_id="")], "trades[1].trade_id", "required"),
    ("negative quantity", [make_trade(0, quantity=-1.0)], "trades[0].quantity", "> 0"),
    ("zero price", [make_trade(0), make_trade(1), make_trade(2, price=0.0)], "trades[2].price", "> 0"),
    ("NaN price", [make_trade(0, price=math.nan)], "trades[0].price", "a number > 0 and at most 1e+12"),
    ("inf quantity", [make_trade(0), make_trade(1, quantity=math.inf)], "trades[1].quantity", "1e+15"),
    ("unknown asset class", [make_trade(0, asset_class=99)], "trades[0].asset_class", "AssetClass"),
    ("unspecified side", [make_trade(0), make_trade(1, side=0)], "trades[1].side", "Side"),
    (
        "settlement before trade date",
        [make_trade(0, settlement_date="2026-11-19")],
        "trades[0].settlement_date",
        "before trade_date",
    ),
    ("malformed date", [make_trade(0, trade_date="20/11/2026")], "trades[0].trade_date", "YYYY-MM-DD"),
    (
        "impossible date",
        [make_trade(0), make_trade(1, trade_date="2026-02-30")],
        "trades[1].trade_date",
        "YYYY",
    ),
    ("duplicate trade id", [make_trade(0), make_trade(0)], "trades[1].trade_id", "repeats"),
    (
        "no settlement date or cycle",
        [make_trade(0, settlement_date=None)],
        "trades[0].settlement_date",
        "settlement_cycle_days",
    ),
    (
        "cycle too long",
        [make_trade(0, settlement_date=None, settlement_cycle_days=45)],
        "settlement_cycle_days",
        "0..30",
    ),
    ("NaN inventory", [make_trade(0, inventory_ratio=math.nan)], "trades[0].inventory_ratio", "NaN"),
    ("inf inventory", [make_trade(0, inventory_ratio=math.inf)], "trades[0].inventory_ratio", "[0, 1e+09]"),
    (
        "NaN fail rate",
        [make_trade(0), make_trade(1, counterparty_fail_rate=math.nan)],
        "trades[1].counterparty",
        "NaN",
    ),
    (
        "fail rate above 1",
        [make_trade(0, counterparty_fail_rate=1.5)],
        "trades[0].counterparty_fail_rate",
        "[0, 1]",
    ),
    ("no trades", [], "trades", "at least one"),
    ("too many trades", [make_trade(i) for i in range(1001)], "trades", "limit of 1000"),
]


@pytest.mark.parametrize("case, trades, where, reason", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_refused_naming_field_and_index(
    engine_stub: Stub, case: str, trades: list[pb.Trade], where: str, reason: str
) -> None:
    engine, stub = engine_stub
    before = engine.metrics.rows_scored._value.get()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Score(pb.ScoreRequest(trades=trades))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert where in str(info.value.details())
    assert reason in str(info.value.details())
    assert engine.metrics.rows_scored._value.get() == before  # nothing scored, nothing half-done
    # and the server is fine afterwards
    ok = await stub.Score(pb.ScoreRequest(trades=[make_trade(0)]))
    assert len(ok.scores) == 1


async def test_unset_optional_signals_are_missing_not_zero(engine_stub: Stub) -> None:
    engine, stub = engine_stub
    unset = make_trade(0, inventory_ratio=None, ssi_matched=None)
    zero = make_trade(0, inventory_ratio=0.0, ssi_matched=False)
    from engine.scoring.messages import trades_to_columns

    cols = trades_to_columns([unset, zero])
    assert np.isnan(cols.inventory_ratio[0]) and cols.inventory_ratio[1] == 0.0
    assert np.isnan(cols.ssi_matched[0]) and cols.ssi_matched[1] == 0.0
    r = await stub.Score(
        pb.ScoreRequest(trades=[unset, make_trade(1, inventory_ratio=0.0, ssi_matched=False)])
    )
    assert r.scores[0].fail_probability != r.scores[1].fail_probability


async def test_full_queue_gets_resource_exhausted_at_once(start_engine: ServerFactory) -> None:
    # the first call is held in the model, the second waits behind it in the queue; the third
    # does not fit in the bounded queue and is refused immediately
    engine, channel = await start_engine(
        max_queue_rows=1000, max_trades_per_request=1000, max_batch_rows=1000, inline_rows=0
    )
    stub = pb_grpc.TradeScorerStub(channel)
    with HeldBatches(engine) as held:
        first = asyncio.ensure_future(stub.Score(sample_request(600, seed=1)))
        await held.wait_entered()
        second = asyncio.ensure_future(stub.Score(sample_request(600, seed=2)))
        while engine.batcher is not None and engine.batcher.queued_rows == 0:
            await asyncio.sleep(0.005)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(sample_request(600, seed=3), timeout=2.0)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in str(info.value.details())
        # shed before its trades are decoded: a call with a bad trade is refused for the full queue too
        bad = sample_request(600, seed=4)
        bad.trades[5].quantity = -1.0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(bad, timeout=2.0)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [len(r.scores) for r in await asyncio.gather(first, second)] == [600, 600]  # both complete
    assert engine.metrics.rejected.labels("overload")._value.get() == 2


async def test_calls_beyond_the_concurrency_limit_get_resource_exhausted(start_engine: ServerFactory) -> None:
    # two calls are in flight (one held in the model, one queued behind it); a third scoring call
    # is over the limit, while health checks and model info, which are not scoring calls, are
    # still answered
    engine, channel = await start_engine(max_concurrent_rpcs=2, inline_rows=0)
    stub = pb_grpc.TradeScorerStub(channel)
    with HeldBatches(engine) as held:
        waiting = [asyncio.ensure_future(stub.Score(pb.ScoreRequest(trades=[make_trade(0)])))]
        await held.wait_entered()
        waiting.append(asyncio.ensure_future(stub.Score(pb.ScoreRequest(trades=[make_trade(1)]))))
        while engine.batcher is not None and engine.batcher.queued_rows < 1:
            await asyncio.sleep(0.005)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(pb.ScoreRequest(trades=[make_trade(9)]), timeout=2.0)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many scoring calls in progress (limit 2)" in str(info.value.details())
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tradescore.v1.TradeScorer"):
            probe = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
            assert probe.status == health_pb2.HealthCheckResponse.SERVING
        assert (await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2.0)).name
        assert engine.calls is not None and engine.calls.active == 2  # still full: probes were not refused
    assert [len(r.scores) for r in await asyncio.gather(*waiting)] == [1, 1]
    assert engine.metrics.rejected.labels("overload")._value.get() == 1
    refused = engine.metrics.grpc_handled.labels(
        "unary", "tradescore.v1.TradeScorer", "Score", "ResourceExhausted"
    )._value.get()
    assert refused == 1


async def test_expired_call_is_dropped_before_inference(start_engine: ServerFactory) -> None:
    engine, channel = await start_engine(inline_rows=0)
    stub = pb_grpc.TradeScorerStub(channel)
    with HeldBatches(engine) as held:
        blocker = asyncio.ensure_future(stub.Score(pb.ScoreRequest(trades=[make_trade(0)]), timeout=10))
        await held.wait_entered()
        # queued behind the held batch: its deadline passes before the model is free
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(pb.ScoreRequest(trades=[make_trade(1)]), timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len((await blocker).scores) == 1
    # a call with time to spare, queued after: the expired one is not in its batch
    r = await stub.Score(pb.ScoreRequest(trades=[make_trade(2)]), timeout=5)
    assert len(r.scores) == 1
    assert engine.metrics.rows_scored._value.get() == 2


async def test_a_lone_call_is_scored_without_waiting(start_engine: ServerFactory) -> None:
    """One trade, nothing else in flight: scored on the event loop at once, in a batch of its own;
    no timer ran (the queue wait is the time between two lines of the batcher, far below
    --max-wait-ms)."""
    engine, channel = await start_engine(max_wait_ms=1000.0)
    stub = pb_grpc.TradeScorerStub(channel)
    for i in range(3):
        assert len((await stub.Score(pb.ScoreRequest(trades=[make_trade(i)]), timeout=5)).scores) == 1
    registry = engine.metrics.registry
    assert registry.get_sample_value("engine_batches_total", {"lane": "inline"}) == 3
    assert registry.get_sample_value("engine_batches_total", {"lane": "thread"}) == 0
    assert registry.get_sample_value("engine_batch_size_bucket", {"le": "1.0"}) == 3
    assert registry.get_sample_value("engine_queue_wait_seconds_count") == 3
    assert (registry.get_sample_value("engine_queue_wait_seconds_sum") or 0.0) < 3 * 0.5


async def test_health_and_reflection(engine_stub: Stub) -> None:
    engine, _ = engine_stub
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tradescore.v1.TradeScorer"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for answer in refl.ServerReflectionInfo(ask()):
            names = {s.name for s in answer.list_services_response.service}
            assert {"tradescore.v1.TradeScorer", "grpc.health.v1.Health"} <= names


async def test_model_info(engine_stub: Stub) -> None:
    engine, stub = engine_stub
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    manifest = engine.models.current.bundle.manifest
    assert (info.name, info.version, info.content_hash) == (
        manifest.name,
        manifest.version,
        manifest.content_hash,
    )
    assert [f.name for f in info.features] == list(manifest.features.names)
    assert 0.5 < info.metrics["roc_auc"] < 1.0
    assert info.parity_max_abs_diff <= 1e-5 and info.parity_rows > 0
    assert [b.band for b in info.risk_bands] == [
        pb.RISK_BAND_MEDIUM,
        pb.RISK_BAND_HIGH,
        pb.RISK_BAND_CRITICAL,
    ]
    assert info.loaded_at.seconds > 0


async def test_hot_reload_swaps_good_bundles_and_refuses_bad_ones(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path / "bundle", version="1.0.0-a")
    engine, channel = await start_engine(bundle=bundle, watch=True, watch_interval_s=0.05)
    stub = pb_grpc.TradeScorerStub(channel)
    request = sample_request(20, seed=5)
    first = await stub.Score(request)
    assert first.model_version == "1.0.0-a"

    # a good new version appears in place: the watcher swaps it in
    staged = copy_bundle(tmp_path / "staged", version="1.0.0-b")
    for f in staged.rglob("*"):
        if f.is_file():
            (bundle / f.relative_to(staged)).write_bytes(f.read_bytes())
    for _ in range(200):
        if (await stub.GetModelInfo(pb.GetModelInfoRequest())).version == "1.0.0-b":
            break
        await asyncio.sleep(0.05)
    second = await stub.Score(request)
    assert second.model_version == "1.0.0-b"
    assert [s.fail_probability for s in second.scores] == [s.fail_probability for s in first.scores]

    # a corrupt model file: refused, the last good model keeps serving
    model_file = bundle / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    assert await engine.reload() is False
    third = await stub.Score(request)
    assert third.model_version == "1.0.0-b"
    assert engine.metrics.model_reloads.labels("failure")._value.get() >= 1

    # a consistently signed bundle whose model is not ONNX is refused too
    broken = copy_bundle(tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not a model")
    resign(broken, "9.9.9")
    assert await engine.models.reload(broken) is False
    assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).version == "1.0.0-b"


async def test_max_connection_age_closes_old_connections(start_engine: ServerFactory) -> None:
    # after the age a connection gets GOAWAY: new calls go over a new connection (the
    # channel reconnects, re-resolving the name), a call still open past the grace ends
    engine, channel = await start_engine(max_connection_age_s=0.5, max_connection_age_grace_s=0.5)
    stub = pb_grpc.TradeScorerStub(channel)
    assert len((await stub.Score(sample_request(3))).scores) == 3
    hold = asyncio.Event()

    async def feed() -> AsyncIterator[pb.ScoreRequest]:
        yield sample_request(1, request_id="first")
        await hold.wait()  # then stay open and idle

    responses = stub.ScoreStream(feed()).__aiter__()
    assert (await responses.__anext__()).request_id == "first"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(responses.__anext__(), timeout=10)  # until the server drops it
    hold.set()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len((await stub.Score(sample_request(2), timeout=5)).scores) == 2  # a fresh connection
