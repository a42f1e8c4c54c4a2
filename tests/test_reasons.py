"""Trade reasons: the TreeSHAP kernel against LightGBM's own, the bundle check, and Score serving them."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.errors import BundleError, InvalidInput
from engine.models.bundle import DEFAULT_BUNDLE, MANIFEST, ModelBundle
from engine.models.spec import BAND_NAMES
from engine.models.treeshap import BLOCK_MIN_ROWS, TreeExplainer
from engine.scoring.messages import trades_to_columns
from engine.scoring.reasons import REASONS_PER_TRADE, reasons_bytes
from engine.scoring.servable import LGB_FILE, explain_threshold, load_serving_model
from engine.scoring.wire import decode_request, prepare_request

from .conftest import ServerFactory, copy_bundle, resign, sample_request


def _default_features(n: int = 1500, seed: int = 5) -> np.ndarray:
    model = load_serving_model(DEFAULT_BUNDLE)
    return model.plan.compute(trades_to_columns(sample_request(n, seed=seed).trades))


def _assert_same(explainer: TreeExplainer, booster: lgb.Booster, x: np.ndarray) -> None:
    ours = explainer.contributions(x)
    theirs = np.asarray(booster.predict(x.astype(np.float64), pred_contrib=True))
    np.testing.assert_allclose(ours, theirs[:, :-1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(theirs[:, -1], explainer.bias, rtol=0, atol=1e-9)
    raw = np.asarray(booster.predict(x.astype(np.float64), raw_score=True))
    np.testing.assert_allclose(ours.sum(axis=1) + explainer.bias, raw, rtol=0, atol=1e-9)


def test_kernel_matches_lightgbm_on_the_default_model() -> None:
    path = DEFAULT_BUNDLE / LGB_FILE
    explainer = TreeExplainer.load(path)
    booster = lgb.Booster(model_file=str(path))
    x = _default_features()
    _assert_same(explainer, booster, x)  # all rows at once (the block kernel)
    for n in (1, BLOCK_MIN_ROWS - 1):  # row by row
        _assert_same(explainer, booster, x[:n])
    # unknown signals (NaN) take each split's default direction, as LightGBM does
    holes = x.copy()
    holes[np.random.default_rng(1).random(holes.shape) < 0.15] = np.nan
    _assert_same(explainer, booster, holes)


def test_kernel_matches_lightgbm_on_zero_as_missing_and_default_left_splits() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0.0
    x[rng.random(x.shape) < 0.1] = np.nan
    y = ((np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])) > 0.2).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "zero_as_missing": True, "verbose": -1, "seed": 3}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=25)
    text = booster.model_to_string()
    types = {
        int(t) for line in text.splitlines() if line.startswith("decision_type=") for t in line[14:].split()
    }
    assert any((t >> 2) & 3 == 1 for t in types), "the model should hold zero-as-missing splits"
    assert any(t & 2 for t in types), "the model should hold default-left splits"
    explainer = TreeExplainer.from_text(text)
    _assert_same(explainer, booster, x[:500])
    _assert_same(explainer, booster, x[:3])


def test_categorical_splits_and_other_objectives_are_refused() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 6, size=(2000, 3)).astype(np.float32)
    y = (x[:, 0] == 2).astype(int)
    params = {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, categorical_feature=[0]), num_boost_round=3)
    with pytest.raises(BundleError, match="categorical"):
        TreeExplainer.from_text(booster.model_to_string())
    regression = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x, y), num_boost_round=2)
    with pytest.raises(BundleError, match="binary"):
        TreeExplainer.from_text(regression.model_to_string())


def test_a_model_text_that_is_not_the_graphs_model_is_refused(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    text = (bundle / LGB_FILE).read_text()
    first = text.index("leaf_value=")
    line_end = text.index("\n", first)
    values = [float(v) + 0.5 for v in text[first + len("leaf_value=") : line_end].split()]
    (bundle / LGB_FILE).write_text(
        text[:first] + "leaf_value=" + " ".join(map(repr, values)) + text[line_end:]
    )
    resign(bundle, "tampered")
    with pytest.raises(BundleError, match="does not reproduce model.onnx"):
        load_serving_model(bundle)


def test_explain_is_decoded_last_one_wins_and_unknown_values_are_refused() -> None:
    model = load_serving_model(DEFAULT_BUNDLE)
    raw = sample_request(2).SerializeToString()
    assert decode_request(raw, model.wire, 10).explain == pb.EXPLAIN_UNSPECIFIED
    every = pb.ScoreRequest(explain=pb.EXPLAIN_ALL).SerializeToString()
    none = pb.ScoreRequest(explain=pb.EXPLAIN_NONE).SerializeToString()
    assert decode_request(raw + every, model.wire, 10).explain == pb.EXPLAIN_ALL
    # protobuf merges concatenated messages: the last value wins, also an explicit 0
    assert decode_request(raw + every + none, model.wire, 10).explain == pb.EXPLAIN_NONE
    assert decode_request(raw + none + bytes([0x18, 0x00]), model.wire, 10).explain == 0
    for value, shown in ((7, "7"), (2**40, ">= 256")):
        unknown = bytes([0x18]) + _varint(value)  # field 3, varint
        with pytest.raises(
            InvalidInput, match=rf"explain: is not a tradescore.v1.Explain value \(got {shown}\)"
        ):
            prepare_request(raw + unknown, model.wire, model.plan, 10)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _expected(features: np.ndarray) -> tuple[np.ndarray, float]:
    booster = lgb.Booster(model_file=str(DEFAULT_BUNDLE / LGB_FILE))
    contrib = np.asarray(booster.predict(features.astype(np.float64), pred_contrib=True))
    return contrib[:, :-1], float(contrib[0, -1])


def _check_reasons(entry: pb.TradeReasons, contrib: np.ndarray, features: np.ndarray, base: float) -> None:
    spec = ModelBundle.load(DEFAULT_BUNDLE).manifest.features
    codes = [f.name.upper() for f in spec.features]
    positive = sorted(((c, j) for j, c in enumerate(contrib) if c > 0), reverse=True)[:REASONS_PER_TRADE]
    assert [r.code for r in entry.reasons] == [codes[j] for _, j in positive]
    for reason, (c, j) in zip(entry.reasons, positive, strict=True):
        assert reason.contribution == pytest.approx(c, abs=1e-9)
        value = float(features[j])
        assert (math.isnan(reason.value) and math.isnan(value)) or reason.value == pytest.approx(value)
        feature = spec.features[j]
        if feature.kind == "categorical":
            assert reason.category == feature.categories[int(value)]
        else:
            assert reason.category == ""
    assert entry.base_log_odds == pytest.approx(base, abs=1e-9)


async def test_score_returns_reasons_for_trades_at_or_above_the_explain_band(
    start_engine: ServerFactory,
) -> None:
    engine, channel = await start_engine()
    stub = pb_grpc.TradeScorerStub(channel)
    request = sample_request(600, seed=11)
    response = await stub.Score(request)
    model = engine.models.current
    features = model.plan.compute(trades_to_columns(request.trades))
    contrib, base = _expected(features)
    probabilities = np.array([s.fail_probability for s in response.scores])
    flagged = [i for i, s in enumerate(response.scores) if s.risk_band >= pb.RISK_BAND_HIGH]
    assert flagged, "the sample should hold high-risk trades"
    assert [r.trade_index for r in response.reasons] == flagged
    threshold = explain_threshold("HIGH", model.band_edges)
    assert all(probabilities[i] >= threshold for i in flagged)
    for entry in response.reasons:
        assert entry.trade_id == request.trades[entry.trade_index].trade_id
        assert entry.reasons, "a high-risk trade has features that raised its risk"
        _check_reasons(entry, contrib[entry.trade_index], features[entry.trade_index], base)
    # the contributions add up to the score: base + all features = the model's log-odds
    i = flagged[0]
    assert base + contrib[i].sum() == pytest.approx(
        math.log(probabilities[i] / (1 - probabilities[i])), abs=1e-4
    )
    assert engine.metrics.trades_explained._value.get() == len(flagged)

    # asked: every trade, also in ScoreStream responses
    request.explain = pb.EXPLAIN_ALL
    response = await stub.Score(request)
    assert [r.trade_index for r in response.reasons] == list(range(600))
    for entry in response.reasons[:50]:
        _check_reasons(entry, contrib[entry.trade_index], features[entry.trade_index], base)

    window = request.trades[flagged[0] : flagged[0] + 20]  # holds at least one flagged trade

    async def three() -> AsyncIterator[pb.ScoreRequest]:
        yield pb.ScoreRequest(request_id="a", trades=window, explain=pb.EXPLAIN_ALL)
        yield pb.ScoreRequest(request_id="b", trades=window)
        yield pb.ScoreRequest(request_id="c", trades=window, explain=pb.EXPLAIN_NONE)

    answers = [r async for r in stub.ScoreStream(three())]
    in_window = [i - flagged[0] for i in flagged if i < flagged[0] + 20]
    assert [[r.trade_index for r in a.reasons] for a in answers] == [list(range(len(window))), in_window, []]


@pytest.mark.parametrize("band", ["OFF", "CRITICAL", "LOW"])
async def test_the_explain_band_setting(start_engine: ServerFactory, band: str) -> None:
    engine, channel = await start_engine(explain_band=band.lower())
    stub = pb_grpc.TradeScorerStub(channel)
    response = await stub.Score(sample_request(600, seed=11))
    lowest = pb.RiskBand.Value(f"RISK_BAND_{band}") if band != "OFF" else len(BAND_NAMES) + 1
    expected = [i for i, s in enumerate(response.scores) if s.risk_band >= lowest]
    assert [r.trade_index for r in response.reasons] == expected
    if band == "CRITICAL":
        assert 0 < len(expected) < 600


async def test_a_bundle_without_model_text_scores_and_refuses_explain(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    bundle = tmp_path / "no-text"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    (bundle / LGB_FILE).unlink()
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"].pop(LGB_FILE)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    resign(bundle, "no-text")
    _, channel = await start_engine(bundle=bundle, explain_band="low")
    stub = pb_grpc.TradeScorerStub(channel)
    response = await stub.Score(sample_request(50))
    assert len(response.scores) == 50 and not response.reasons
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(pb.ScoreRequest(trades=sample_request(3).trades, explain=pb.EXPLAIN_ALL))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.lgb.txt" in (err.value.details() or "")


def _runtime_reasons(
    request: pb.ScoreRequest,
    rows: np.ndarray,
    features: np.ndarray,
    contributions: np.ndarray,
    codes: list[str],
    categories: list[tuple[str, ...]],
    base: float,
) -> bytes:
    """The oracle: the same reasons built as protobuf messages and serialized by the runtime."""
    out = pb.ScoreResponse()
    for i, row in enumerate(rows.tolist()):
        entry = out.reasons.add(trade_index=row, trade_id=request.trades[row].trade_id, base_log_odds=base)
        order = sorted(range(len(codes)), key=lambda j: -contributions[i, j])[:REASONS_PER_TRADE]
        for j in order:
            contribution = float(contributions[i, j])
            if contribution <= 0.0:
                break
            value = float(str(features[i, j]))
            reason = entry.reasons.add(code=codes[j], value=value, contribution=contribution)
            if categories[j] and value == value and 0 <= int(value) < len(categories[j]):
                reason.category = categories[j][int(value)]
    return out.SerializeToString()


@pytest.mark.parametrize("seed", range(6))
def test_reasons_bytes_are_the_protobuf_runtimes(seed: int) -> None:
    """The compiled encoder writes the bytes the runtime writes for the same reasons, edge values
    included: +0.0 and -0.0, NaN, a first trade (index 0), an empty trade id, a zero base."""
    rng = np.random.default_rng(seed)
    model = load_serving_model(DEFAULT_BUNDLE)
    explainer = model.explainer
    assert explainer is not None
    request = sample_request(40, seed=seed)
    request.trades[3].trade_id = "é-ü-trade"  # multi-byte UTF-8, copied as bytes
    raw = request.SerializeToString()
    decoded, features = prepare_request(raw, model.wire, model.plan, 100)
    rows = np.sort(rng.choice(40, size=12, replace=False))
    rows[0] = 0
    x = features[rows].copy()
    x[1, :4] = [0.0, -0.0, np.nan, 1e-30]
    contributions = rng.normal(0.0, 0.3, size=(12, x.shape[1]))
    contributions[2] = -np.abs(contributions[2])  # no positive contribution: no reason at all
    contributions[1, :4] = [5.0, 4.0, 3.0, 2.0]  # the edge values are the top reasons
    contributions[4, :3] = [1.0, 1.0, 1.0]  # ties keep feature order
    for base in (explainer.shap.bias, 0.0, -0.0):
        got = reasons_bytes(decoded, rows, x, contributions, explainer.fields, base)
        want = _runtime_reasons(
            request, rows, x, contributions, list(explainer.codes), list(explainer.categories), base
        )
        assert got == want
        assert pb.ScoreResponse.FromString(got) == pb.ScoreResponse.FromString(want)
