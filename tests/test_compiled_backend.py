"""The compiled backend (--model-backend compiled) against ONNX Runtime, its oracle.

Parity on the shipped model (random rows on and around every threshold, NaN, inf; the
golden rows; synthetic trades), on freshly trained models of both generated layouts,
refusals of bundles whose model text is not the ONNX graph's model, the machine-code
cache, and real servers on both backends: scores, GetModelInfo, hot reload, the flag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.config import Settings, SettingsError, from_sources
from engine.errors import BundleError
from engine.models.bundle import DEFAULT_BUNDLE, LGB_FILE, ModelBundle, onnx_session
from engine.models.forest import (
    MAX_BITVECTOR_LEAVES,
    PARITY_TOLERANCE,
    RANDOM_ROWS,
    CompiledForest,
    check_parity,
    forest_ir,
    random_rows,
)
from engine.models.treeshap import parse_trees
from tests.conftest import EngineProcess, ServerFactory, copy_bundle, make_trade, resign, sample_request


@pytest.fixture(scope="module")
def shipped() -> ModelBundle:
    return ModelBundle.load(DEFAULT_BUNDLE, backend="compiled")


def test_shipped_model_matches_onnx_runtime_on_random_and_golden_rows(shipped: ModelBundle) -> None:
    assert shipped.backend == "compiled"
    parity = shipped.backend_parity
    assert parity is not None and parity["passed"]
    assert parity["rows"]["random"]["rows"] == RANDOM_ROWS
    assert parity["rows"]["golden"]["rows"] == shipped.manifest.golden_inputs.shape[0]
    assert parity["max_abs_diff"] <= PARITY_TOLERANCE
    x = random_rows(forest_ir((DEFAULT_BUNDLE / LGB_FILE).read_text()), 20_000, seed=3)
    assert np.isnan(x).mean() > 0.05 and np.isinf(x).any()
    np.testing.assert_allclose(shipped.predict(x), shipped.predict_onnx(x), rtol=0, atol=PARITY_TOLERANCE)


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 63, 257, 1024])
def test_every_batch_size_scores_every_row(shipped: ModelBundle, rows: int) -> None:
    from engine.features.compute import FeaturePlan
    from engine.training.synthetic import generate_trades

    plan = FeaturePlan(shipped.manifest.features, shipped.references)
    x = plan.compute(generate_trades(max(rows, 1), seed=rows).trades)[:rows]
    got = shipped.predict(x)
    assert got.dtype == np.float32 and got.shape == (rows,)
    np.testing.assert_allclose(got, shipped.predict_onnx(x), rtol=0, atol=PARITY_TOLERANCE)
    # a strided or float64 view is copied, not misread
    wide = np.repeat(x.astype(np.float64), 2, axis=1)[:, ::2]
    np.testing.assert_array_equal(shipped.predict(wide), got)  # type: ignore[arg-type]


def _trained(num_leaves: int, seed: int) -> tuple[str, bytes]:
    """A small binary LightGBM model on data with NaNs, float32-exact as `engine train` writes it, and
    its ONNX graph."""
    import lightgbm as lgb

    from engine.training.export import round_thresholds_down, to_onnx

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan
    y = ((np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) ** 2 + rng.normal(size=4000)) > 0.7).astype(
        int
    )
    params = {
        "objective": "binary",
        "num_leaves": num_leaves,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "seed": seed,
    }
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=25)
    rewritten, text, _ = round_thresholds_down(booster)
    return text, to_onnx(rewritten, 6)


@pytest.mark.parametrize(("num_leaves", "layout"), [(31, "bitvector"), (MAX_BITVECTOR_LEAVES + 36, "tree")])
def test_fresh_models_of_both_layouts_match_onnx_runtime(num_leaves: int, layout: str) -> None:
    text, graph = _trained(num_leaves, seed=num_leaves)
    trees, _, _ = parse_trees(text, "test")
    widest = max(len(t.leaf_value) for t in trees)
    assert (widest <= MAX_BITVECTOR_LEAVES) == (layout == "bitvector")
    if layout == "tree":  # wider trees are compiled to branches
        assert "@leaves0" not in forest_ir(text).ir
    forest = CompiledForest.from_text(text)
    session = onnx_session(graph)
    parity = check_parity(
        forest,
        lambda x: session.run(["probabilities"], {"features": x})[0][:, 1],
        {"none": np.zeros((0, 6), dtype=np.float32)},
    )
    assert parity["passed"], parity
    assert parity["rows"]["random"]["rows"] == RANDOM_ROWS


def test_machine_code_is_cached_by_model() -> None:
    text = (DEFAULT_BUNDLE / LGB_FILE).read_text()
    CompiledForest.from_text(text)
    again = CompiledForest.from_text(text)
    assert again.origin == "cached"
    assert forest_ir(text, layout="tree").key != again.key


def _tamper_leaf(bundle: Path) -> None:
    """Change one leaf value of the model text: no longer the model the ONNX graph was exported from."""
    path = bundle / LGB_FILE
    lines = path.read_text().split("\n")
    i = next(n for n, line in enumerate(lines) if line.startswith("leaf_value="))
    values = lines[i].split("=", 1)[1].split()
    values[0] = repr(float(values[0]) + 0.5)
    lines[i] = "leaf_value=" + " ".join(values)
    path.write_text("\n".join(lines))


def test_a_model_text_that_is_not_the_graphs_model_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = copy_bundle(tmp_path / "b")
    _tamper_leaf(bundle)
    resign(bundle, "tampered")
    with caplog.at_level(logging.ERROR, logger="engine.models.bundle"):
        with pytest.raises(BundleError, match="does not match ONNX Runtime"):
            ModelBundle.load(bundle, backend="compiled")
    assert any("compiled model refused" in r.getMessage() for r in caplog.records)
    assert ModelBundle.load(bundle).backend == "onnx"  # ONNX Runtime still serves it


def test_a_bundle_without_model_text_is_refused_for_the_compiled_backend(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    (bundle / LGB_FILE).unlink()
    resign(bundle, "no-text")
    with pytest.raises(BundleError, match="needs model.lgb.txt"):
        ModelBundle.load(bundle, backend="compiled")
    with pytest.raises(ValueError, match="backend must be one of"):
        ModelBundle.load(bundle, backend="tensorrt")


def test_the_setting_takes_onnx_or_compiled() -> None:
    assert Settings().model_backend == "onnx"
    assert from_sources(None, {"ENGINE_MODEL_BACKEND": "compiled"}).model_backend == "compiled"
    with pytest.raises(SettingsError, match="model_backend"):
        Settings(model_backend="llvm")


# -- real servers ------------------------------------------------------------------------------


async def test_servers_on_both_backends_answer_alike(start_engine: ServerFactory) -> None:
    onnx_engine, onnx_channel = await start_engine()
    compiled_engine, compiled_channel = await start_engine(model_backend="compiled")
    request = sample_request(300, seed=21)
    answers = {}
    for name, channel in (("onnx", onnx_channel), ("compiled", compiled_channel)):
        stub = pb_grpc.TradeScorerStub(channel)
        answers[name] = await stub.Score(request)
        assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).backend == name
    got = np.array([s.fail_probability for s in answers["compiled"].scores])
    want = np.array([s.fail_probability for s in answers["onnx"].scores])
    np.testing.assert_allclose(got, want, rtol=0, atol=PARITY_TOLERANCE)
    assert [s.risk_band for s in answers["compiled"].scores] == [s.risk_band for s in answers["onnx"].scores]
    assert compiled_engine.models.current.backend == "compiled"
    assert onnx_engine.models.current.backend == "onnx"


async def test_hot_reload_on_the_compiled_backend(start_engine: ServerFactory, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "bundle", version="2.0.0-a")
    engine, channel = await start_engine(
        bundle=bundle, model_backend="compiled", watch=True, watch_interval_s=0.05
    )
    stub = pb_grpc.TradeScorerStub(channel)
    request = sample_request(40, seed=9)
    first = await stub.Score(request)

    # a good new version in place: swapped in by the watcher, still compiled
    staged = copy_bundle(tmp_path / "staged", version="2.0.0-b")
    for f in staged.rglob("*"):
        if f.is_file():
            (bundle / f.relative_to(staged)).write_bytes(f.read_bytes())
    for _ in range(400):
        if (await stub.GetModelInfo(pb.GetModelInfoRequest())).version == "2.0.0-b":
            break
        await asyncio.sleep(0.05)
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.version, info.backend) == ("2.0.0-b", "compiled")
    second = await stub.Score(request)
    assert [s.fail_probability for s in second.scores] == [s.fail_probability for s in first.scores]

    # a bundle whose model text is not its graph's model: refused, the last good one serves on
    bad = copy_bundle(tmp_path / "bad")
    _tamper_leaf(bad)
    resign(bad, "2.0.0-bad")
    assert await engine.models.reload(bad) is False
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.version, info.backend) == ("2.0.0-b", "compiled")
    assert engine.metrics.model_reloads.labels("failure")._value.get() >= 1
    third = await stub.Score(pb.ScoreRequest(request_id="x", trades=[make_trade(1)]))
    assert third.model_version == "2.0.0-b"


@pytest.mark.slow
def test_engine_serve_flag_and_engine_info(tmp_path: Path) -> None:
    server = EngineProcess("--model-backend", "compiled")
    try:
        assert any("(backend compiled)" in line for line in server.lines)
        info = subprocess.run(
            [sys.executable, "-m", "engine.cli", "info", "--target", server.target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["backend"] == "compiled"
    finally:
        server.stop()
    local = subprocess.run(
        [sys.executable, "-m", "engine.cli", "info", "--model-backend", "compiled"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr
    shown = json.loads(local.stdout)
    assert shown["backend"] == "compiled" and shown["backend_parity"]["passed"] is True
    refused = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--model-backend", "fpga"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "model_backend" in refused.stderr
