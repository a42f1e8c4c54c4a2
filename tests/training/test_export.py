"""ONNX export: float32 thresholds, missing values, parity refusals, atomic bundle writes."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from engine.models.bundle import MANIFEST, ModelBundle, onnx_session
from engine.training.errors import ExportError, ParityError
from engine.training.export import (
    check_parity,
    onnx_predict,
    rewrite_model_text,
    round_down_f32,
    round_thresholds_down,
    to_onnx,
    verify_rewrite,
    write_bundle,
)
from engine.training.package import package
from engine.training.train import TrainedModel

from .conftest import quiet

# adjacent float32 values; `a` has an odd mantissa, so the midpoint (a + b) / 2, which LightGBM
# picks as the threshold between them, rounds *up* to b under round-to-nearest-even
A = np.float32(1.0) + np.float32(2.0**-23)
B = np.float32(1.0) + np.float32(2.0**-22)


def _stump_on_adjacent_floats() -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = np.where(rng.random(4_000) < 0.5, A, B).astype(np.float32)
    noise = rng.normal(size=4_000).astype(np.float32)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 2, "min_data_in_leaf": 1, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(np.c_[x, noise], (x == B).astype(int)), num_boost_round=3)


def test_round_to_nearest_would_flip_a_decision_and_round_down_does_not() -> None:
    booster = _stump_on_adjacent_floats()
    threshold = float(rewrite_model_text(booster.model_to_string())[0].split("threshold=")[1].split()[0])
    original = float(booster.model_to_string().split("threshold=")[1].split()[0])
    assert float(A) < original < float(B)  # LightGBM's float64 threshold between the two floats
    assert float(np.float32(original)) == float(B)  # ...which round-to-nearest moves onto B
    assert threshold == float(A)  # ...and round-down onto A

    x = np.array([[B, 0.0], [A, 0.0]], dtype=np.float32)
    lgb_p = booster.predict(x)
    assert lgb_p[0] > lgb_p[1]  # LightGBM: B goes right (> threshold), A left

    naive = onnx_predict(onnx_session(to_onnx(booster, 2)), x)
    assert abs(naive[0] - lgb_p[0]) > 0.1  # the naive export sends B left: a flipped decision

    rewritten, _, stats = round_thresholds_down(booster)
    assert stats.nearest_would_flip == stats.splits == 3
    assert np.array_equal(rewritten.predict(x), lgb_p)  # same decisions on float32 inputs
    exported = onnx_predict(onnx_session(to_onnx(rewritten, 2)), x)
    np.testing.assert_allclose(exported, lgb_p, atol=1e-6)


def test_round_down_is_equivalent_for_every_float32_input() -> None:
    rng = np.random.default_rng(1)
    t = np.r_[rng.normal(0, 1e3, 2_000), rng.normal(0, 1e-3, 2_000), 1e300, -1e300, 0.0, 1e-35]
    with np.errstate(over="ignore"):
        rd = round_down_f32(t)
        assert (rd <= t).all()
        assert rd[-4] == np.finfo(np.float32).max and rd[-3] == -np.inf
    assert np.array_equal(rd.astype(np.float32).astype(np.float64), rd)  # exactly float32
    r32 = rd.astype(np.float32)
    with np.errstate(over="ignore"):
        t32 = t.astype(np.float32)
        x = np.r_[t32, r32, np.nextafter(r32, np.float32(np.inf)), np.nextafter(r32, np.float32(-np.inf))]
    x64 = x.astype(np.float64)
    for i in range(t.size):
        assert np.array_equal(x64 <= t[i], x64 <= rd[i]), t[i]


def test_nan_on_a_split_trained_without_nan_matches_onnx() -> None:
    """LightGBM reads NaN as 0.0 on 'missing None' splits; the rewrite makes ONNX do the same."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5_000, 2)).astype(np.float32)  # no NaN in training
    y = ((x[:, 0] > 0.3) ^ (rng.random(5_000) < 0.1)).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 4, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=5)
    rewritten, text, stats = round_thresholds_down(booster)
    assert stats.missing_none_rewritten > 0
    probe = np.array([[np.nan, np.nan], [0.0, 0.0], [1.0, np.nan], [np.nan, -1.0]], dtype=np.float32)
    verify_rewrite(booster, rewritten, probe)
    np.testing.assert_allclose(
        onnx_predict(onnx_session(to_onnx(rewritten, 2)), probe), booster.predict(probe), atol=1e-6
    )
    assert check_parity(rewritten, to_onnx(rewritten, 2), probe)["max_abs_diff"] <= 1e-6
    assert "tree_sizes=" in text  # kept consistent, or LightGBM would misread the trees
    lgb.Booster(model_str=text)


def test_categorical_splits_are_refused() -> None:
    rng = np.random.default_rng(3)
    x = np.c_[rng.integers(0, 6, 3_000), rng.normal(size=3_000)].astype(np.float32)
    y = np.isin(x[:, 0], (1, 4)).astype(int)
    params = {
        "objective": "binary",
        "verbose": -1,
        "num_threads": 1,
        "min_data_per_group": 5,
        "cat_smooth": 1,
    }
    booster = lgb.train(params, lgb.Dataset(x, y, categorical_feature=[0]), num_boost_round=3)
    with pytest.raises(ExportError, match="categorical"):
        round_thresholds_down(booster)


def test_only_binary_models_export() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 2)).astype(np.float32)
    booster = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x, x[:, 0].copy()), 2)
    with pytest.raises(ExportError, match="binary"):
        round_thresholds_down(booster)


def _package(model: TrainedModel, out: Path, **kw: object) -> dict[str, object]:
    return package(
        out,
        booster=model.booster,
        booster_text=model.booster_text,
        rewrite=model.rewrite,
        spec=model.spec,
        references=model.references,
        bands=model.bands,
        metrics=model.metrics,
        heldout=model.heldout,
        training={"source": {"kind": "test"}},
        log=quiet,
        **kw,  # type: ignore[arg-type]
    )


def test_failed_parity_writes_nothing_and_names_the_worst_rows(
    small_model: TrainedModel, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(ParityError) as caught:
        _package(small_model, out, tolerance=1e-12)
    message = str(caught.value)
    assert "row " in message and "LightGBM" in message and "ONNX" in message
    assert len(caught.value.worst) == 5
    index, lgb_p, onnx_p = caught.value.worst[0]
    assert abs(lgb_p - onnx_p) > 1e-12 and 0 <= index < small_model.heldout.shape[0]
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging directory left behind


def test_existing_bundle_is_replaced_atomically(small_model: TrainedModel, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    first = _package(small_model, out, version="1")
    second = _package(small_model, out, version="2", parity_rows=500)
    assert first["version"] == "1" and second["version"] == "2"
    assert ModelBundle.load(out).version == "2"
    assert second["parity"]["rows"] == 500  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no .staging / .old leftovers


def test_a_non_bundle_directory_is_never_replaced(small_model: TrainedModel, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a model bundle"):
        write_bundle(out, model=b"", booster_text="", references=small_model.references, manifest={})
    assert (out / "notes.txt").read_text() == "keep me"


def test_onnx_model_shape(small_bundle: Path) -> None:
    import onnx

    model = onnx.load(str(small_bundle / "model.onnx"))
    (inp,) = model.graph.input
    assert inp.name == "features" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1] == 15
    assert "probabilities" in [o.name for o in model.graph.output]
    assert (small_bundle / MANIFEST).is_file()
