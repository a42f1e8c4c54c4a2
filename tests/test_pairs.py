"""Sync breaks: pair features, the forest's ONNX export, the bundle section, BreakScorer served for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.errors import BundleError, InvalidInput
from engine.features.pairs import (
    CLASS_MISSING,
    CLASS_NONE,
    CLASS_STATIC,
    CLASS_STATUS,
    CLASS_VALUE,
    PAIR_FEATURES,
    REASON_MIN_STRENGTH,
    SIDE_A,
    SIDE_B,
    PairColumns,
    PairStats,
    break_classes,
    likely_right,
    pair_features,
)
from engine.models.bundle import DEFAULT_BUNDLE, MANIFEST, ModelBundle, onnx_session, write_manifest
from engine.scoring.servable import PairModel
from engine.training.pairs import (
    BREAK_MIX,
    forest_to_onnx,
    generate_pairs,
    onnx_scores,
    train_pair_model,
)

from .conftest import ServerFactory, copy_bundle

T0 = 1_790_000_000
FEATURE = {name: i for i, name in enumerate(PAIR_FEATURES)}


def view(source: str = "trading", t: int = T0, **fields: Any) -> pb.RecordView:
    base: dict[str, Any] = {
        "status": "settled",
        "quantity": 100.0,
        "amount": 25_000.0,
        "name": "Blue River Capital LLC",
        "address": "12 Main Street, Boston",
    }
    base.update(fields)
    given = {k: v for k, v in base.items() if v is not None}
    return pb.RecordView(source=source, updated_at=Timestamp(seconds=t), **given)


def pair(key: str = "POS-1", a: pb.RecordView | None = None, b: pb.RecordView | None = None) -> pb.RecordPair:
    out = pb.RecordPair(key=key)
    if a is not None:
        out.a.CopyFrom(a)
    if b is not None:
        out.b.CopyFrom(b)
    return out


def stats() -> PairStats:
    manifest = json.loads((DEFAULT_BUNDLE / MANIFEST).read_text())
    return PairStats.from_json(manifest["pairs"]["stats"])


# -- features ---------------------------------------------------------------------------


def test_each_break_class_has_its_signature() -> None:
    pairs = [
        pair("same", view(), view("risk", status=" SETTLED ")),  # spelling of a status is not a break
        pair("status", view(), view("risk", status="pending")),
        pair("fill", view(), view("risk", quantity=40.0, amount=10_000.0)),
        pair("typo", view(), view("risk", name="Blue Rivr Capital LLC")),
        pair("missing", view()),
        pair("fat", view(), view("risk", amount=2_500_000.0)),
    ]
    cols = PairColumns.from_messages(pairs)
    f = pair_features(cols, stats())
    x = f.matrix
    assert x.dtype == np.float32 and x.shape == (6, len(PAIR_FEATURES))
    assert not f.differs[0].any() and x[0, FEATURE["status_mismatch"]] == 0
    assert x[1, FEATURE["status_mismatch"]] == 1
    assert x[2, FEATURE["quantity_rel_delta"]] == pytest.approx(-0.6)  # the fill: 60 of 100 missing on B
    assert x[2, FEATURE["amount_rel_delta"]] == pytest.approx(-0.6)
    assert 0.9 < x[3, FEATURE["name_similarity"]] < 1.0 and x[3, FEATURE["address_similarity"]] == 1.0
    assert x[4, FEATURE["missing_b"]] == 1 and x[4, FEATURE["missing_a"]] == 0
    assert x[4, FEATURE["name_similarity"]] == 1 and x[4, FEATURE["quantity_rel_delta"]] == 0
    assert x[5, FEATURE["amount_z_b"]] - x[5, FEATURE["amount_z_a"]] > 2
    assert list(break_classes(f.differs)) == [
        CLASS_NONE, CLASS_STATUS, CLASS_VALUE, CLASS_STATIC, CLASS_MISSING, CLASS_VALUE
    ]  # fmt: skip


def test_likely_right_follows_recency_fat_fingers_duplicates_and_presence() -> None:
    pairs = [
        pair("stale", view(t=T0 + 600, amount=25_100.0), view("risk", t=T0)),  # A newer
        pair("stale-b", view(t=T0, amount=25_100.0), view("risk", t=T0 + 600)),  # B newer
        pair("fat", view(t=T0), view("risk", t=T0 + 5, amount=2_500_000.0)),  # B newer but x100
        pair("missing", None, view("risk")),
        pair("same", view(), view("risk")),
        # booked twice on B (B the newer), three times on A: the other side is right
        pair("twice-b", view(t=T0), view("risk", t=T0 + 30, quantity=200.0, amount=50_000.0)),
        pair("thrice-a", view(t=T0 + 9, quantity=300.0, amount=75_000.0), view("risk", t=T0)),
        # an account (no quantity) booked twice on B
        pair("acct", view(quantity=None), view("risk", t=T0 + 3, quantity=None, amount=50_000.0)),
        # 2x the amount but not the quantity: an amendment, not a duplicate: the newer side
        pair("amended", view(t=T0), view("risk", t=T0 + 30, amount=50_000.0)),
    ]
    st = stats()
    f = pair_features(PairColumns.from_messages(pairs), st)
    side, conf = likely_right(f.matrix, f.differs, f.quantities, st.log_amount_std)
    assert list(side[:4]) == [SIDE_A, SIDE_B, SIDE_A, SIDE_B]
    assert side[4] == 0 and conf[4] == 0
    assert 0.6 <= conf[0] <= 0.95 and conf[3] == 0.5
    assert list(side[5:8]) == [SIDE_A, SIDE_B, SIDE_A] and list(conf[5:8]) == [0.8, 0.8, 0.8]
    assert side[8] == SIDE_B and conf[8] != 0.8


@pytest.mark.parametrize(
    ("bad", "field", "index"),
    [
        (pair("", view(), view("risk")), "key", 1),
        (pair("k"), "a", 1),
        (pair("k", view(source=""), view("risk")), "a.source", 1),
        (pair("k", view(), pb.RecordView(source="risk")), "b.updated_at", 1),
        (pair("k", view(quantity=float("inf")), view("risk")), "a.quantity", 1),
        (pair("k", view(), view("risk", amount=float("nan"))), "b.amount", 1),  # NaN is not "unset"
    ],
)
def test_bad_pairs_name_the_field_and_the_pair(bad: pb.RecordPair, field: str, index: int) -> None:
    with pytest.raises(InvalidInput) as exc:
        PairColumns.from_messages([pair("ok", view(), view("risk")), bad])
    assert exc.value.field == field and exc.value.index == index
    assert str(exc.value).startswith(f"pairs[{index}].{field}: ")


# -- the model ----------------------------------------------------------------------------


def test_forest_export_matches_scikit_learn_even_on_the_thresholds() -> None:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 5)).astype(np.float32)
    forest = IsolationForest(n_estimators=20, max_samples=512, random_state=7).fit(x)
    session = onnx_session(forest_to_onnx(forest, 5))
    # rows that sit exactly on (float32-rounded) split thresholds: a double-vs-float slip shows here
    tree = forest.estimators_[0].tree_
    edge = np.repeat(x[:1], 50, axis=0)
    inner = np.flatnonzero(tree.children_left >= 0)[:50]
    columns = forest.estimators_features_[0]
    for row, node in enumerate(inner):
        edge[row, columns[tree.feature[node]]] = np.float32(tree.threshold[node])
    for rows in (x[:500], edge[: len(inner)]):
        want = -forest.score_samples(rows)
        assert np.max(np.abs(onnx_scores(session, rows) - want)) < 1e-5


def test_synthetic_pairs_carry_every_break_class() -> None:
    data = generate_pairs(20_000, seed=3)
    shares = {cls: float((data.labels == cls).mean()) for cls in BREAK_MIX}
    for cls, share in BREAK_MIX.items():
        assert 0.4 * share < shares[cls] < 2.0 * share, cls
    assert (data.broken_side[data.labels == "consistent"] == -1).all()
    assert set(data.broken_side[data.is_break]) <= {0, 1}


@pytest.mark.slow
def test_trained_model_lands_in_the_bundle_and_finds_breaks(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    lines: list[str] = []
    manifest = train_pair_model(bundle, pairs=20_000, seed=11, trees=50, max_samples=2048, log=lines.append)
    section = manifest["pairs"]
    assert section["kind"] == "isolation_forest" and section["parity"]["max_abs_diff"] < 1e-5
    assert section["metrics"]["precision"] > 0.7 and section["metrics"]["recall"] > 0.7
    # both models, side by side on the same held-out pairs; the classifier saw the labels
    comparison = section["comparison"]
    assert set(comparison) == {"isolation_forest", "lightgbm"}
    assert comparison["isolation_forest"]["heldout_breaks"] == comparison["lightgbm"]["heldout_breaks"] > 0
    assert comparison["lightgbm"]["f1"] > 0.9
    assert any("precision" in line for line in lines)
    loaded = ModelBundle.load(bundle)  # every file hashed, the trade model untouched
    assert loaded.version == json.loads((DEFAULT_BUNDLE / MANIFEST).read_text())["version"]
    model = PairModel.load(loaded)
    assert model is not None and model.threshold == section["threshold"]


def test_the_shipped_bundle_has_a_pair_model_that_reproduces_its_golden_rows() -> None:
    model = PairModel.load(ModelBundle.load(DEFAULT_BUNDLE))
    assert model is not None
    assert model.metrics["precision"] > 0.8 and model.metrics["recall"] > 0.8


def test_a_pair_section_that_does_not_reproduce_is_refused(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["pairs"]["golden"]["scores"][0] += 0.01
    for key in ("files", "content_hash", "format_version"):
        manifest.pop(key)
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="golden rows"):
        PairModel.load(ModelBundle.load(bundle))


def test_a_bundle_without_pairs_has_no_pair_model(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    manifest = json.loads((bundle / MANIFEST).read_text())
    for key in ("files", "content_hash", "format_version", "pairs"):
        manifest.pop(key)
    (bundle / "pairs" / "model.onnx").unlink()
    write_manifest(bundle, manifest)
    assert PairModel.load(ModelBundle.load(bundle)) is None


# -- served ----------------------------------------------------------------------------------


async def test_score_pairs_over_grpc(start_engine: ServerFactory) -> None:
    engine, channel = await start_engine()
    stub = pb_grpc.BreakScorerStub(channel)
    request = pb.ScorePairsRequest(
        request_id="recon-1",
        pairs=[
            pair("clean", view(), view("risk")),
            pair("drift", view(t=T0 + 900), view("risk", status="pending")),
            pair("gone", view()),
        ],
    )
    response = await stub.ScorePairs(request, timeout=10)
    assert response.request_id == "recon-1" and [s.key for s in response.scores] == ["clean", "drift", "gone"]
    clean, drift, gone = response.scores
    assert not clean.is_break and clean.break_class == pb.BREAK_CLASS_NONE and not clean.corrections
    assert drift.is_break and drift.break_class == pb.BREAK_CLASS_STATUS
    assert list(drift.differences) == ["status"] and drift.likely_right == pb.PAIR_SIDE_A
    assert [(c.field, c.value, c.source) for c in drift.corrections] == [("status", "settled", "trading")]
    # the two unusual features (the status differs; A changed 15 minutes after B), most unusual first
    assert {r.code for r in drift.reasons} == {"STATUS_MISMATCH", "UPDATE_LAG"}
    strengths = [r.contribution for r in drift.reasons]
    assert strengths == sorted(strengths, reverse=True) and min(strengths) >= REASON_MIN_STRENGTH
    assert (
        gone.is_break and gone.break_class == pb.BREAK_CLASS_MISSING and gone.reasons[0].code == "MISSING_B"
    )
    assert clean.break_score < drift.break_score
    assert response.model_version == engine.models.current.pairs.version  # type: ignore[union-attr]
    scored = engine.metrics.registry.get_sample_value("engine_pairs_scored_total")
    flagged = engine.metrics.registry.get_sample_value("engine_pair_breaks_total", {"break_class": "STATUS"})
    assert scored == 3 and flagged == 1


async def test_bad_pair_gets_invalid_argument_naming_it(start_engine: ServerFactory) -> None:
    _, channel = await start_engine()
    stub = pb_grpc.BreakScorerStub(channel)
    request = pb.ScorePairsRequest(pairs=[pair("ok", view(), view("risk")), pair("k", view(source=""))])
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ScorePairs(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details() == "pairs[1].a.source: required"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ScorePairs(pb.ScorePairsRequest(), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pair_stream_answers_in_order_and_survives_a_bad_message(start_engine: ServerFactory) -> None:
    _, channel = await start_engine()
    stub = pb_grpc.BreakScorerStub(channel)
    requests = [
        pb.ScorePairsRequest(request_id="1", pairs=[pair("a", view(), view("risk"))]),
        pb.ScorePairsRequest(request_id="2", pairs=[pair("", view())]),
        pb.ScorePairsRequest(request_id="3", pairs=[pair("c", view(), view("risk", status="open"))]),
    ]
    answers = [r async for r in stub.ScorePairsStream(iter(requests), timeout=10)]
    assert [a.request_id for a in answers] == ["1", "2", "3"]
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[1].error.field == "key" and answers[1].error.trade_index == 0
    assert answers[2].scores[0].break_class == pb.BREAK_CLASS_STATUS


async def test_without_a_pair_model_the_call_fails_with_failed_precondition(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path / "b")
    manifest = json.loads((bundle / MANIFEST).read_text())
    for key in ("files", "content_hash", "format_version", "pairs"):
        manifest.pop(key)
    write_manifest(bundle, manifest)
    _, channel = await start_engine(bundle=bundle)
    stub = pb_grpc.BreakScorerStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ScorePairs(pb.ScorePairsRequest(pairs=[pair("a", view())]), timeout=10)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no sync-break model" in (exc.value.details() or "")


async def test_autonomy_modes_per_break_class(start_engine: ServerFactory) -> None:
    _, channel = await start_engine(break_autonomy="STATUS=autonomous:0.8,VALUE=monitor")
    stub = pb_grpc.BreakScorerStub(channel)
    request = pb.ScorePairsRequest(
        pairs=[
            pair("drift", view(t=T0 + 900), view("risk", status="pending")),  # believed side A, 0.90
            pair("drift-unsure", view(t=T0 + 1), view("risk", status="pending")),  # same, 0.60
            pair("fill", view(t=T0 + 60), view("risk", quantity=40.0, amount=10_000.0)),
            pair("gone", view()),
            pair("clean", view(), view("risk")),
        ]
    )
    drift, unsure, fill, gone, clean = (await stub.ScorePairs(request, timeout=10)).scores
    assert drift.is_break and drift.autonomy == pb.AUTONOMY_MODE_AUTONOMOUS
    assert drift.confidence >= 0.8 and drift.auto_approvable and drift.corrections
    assert unsure.autonomy == pb.AUTONOMY_MODE_AUTONOMOUS and unsure.confidence < 0.8
    assert not unsure.auto_approvable and unsure.corrections  # proposed, for an operator to approve
    assert fill.is_break and fill.autonomy == pb.AUTONOMY_MODE_MONITOR
    assert not fill.corrections and not fill.auto_approvable and fill.reasons  # flagged and explained only
    assert gone.autonomy == pb.AUTONOMY_MODE_MONITOR and not gone.corrections  # MISSING's default
    assert clean.autonomy == pb.AUTONOMY_MODE_MONITOR and not clean.is_break and not clean.auto_approvable


@pytest.mark.slow
async def test_a_bundle_serving_the_supervised_classifier(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path / "b")
    manifest = train_pair_model(
        bundle, pairs=20_000, seed=5, trees=20, max_samples=1024, model="best", log=print
    )
    assert manifest["pairs"]["kind"] == "lightgbm"  # labelled synthetic breaks: the classifier wins
    model = PairModel.load(ModelBundle.load(bundle))
    assert model is not None and model.kind == "lightgbm" and model.output_column == 1
    engine, channel = await start_engine(bundle=bundle)
    stub = pb_grpc.BreakScorerStub(channel)
    request = pb.ScorePairsRequest(
        pairs=[
            pair("clean", view(), view("risk")),
            pair("drift", view(t=T0 + 900), view("risk", status="pending")),
        ]
    )
    clean, drift = (await stub.ScorePairs(request, timeout=10)).scores
    assert 0.0 <= clean.break_score < 0.5 < drift.break_score <= 1.0  # probabilities of a break
    assert drift.is_break and not clean.is_break
