"""engine train --scheduler: lightgbm.dask on a real two-worker cluster; the same bundle as engine train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.batch.train import TEST, TRAIN, VALID, Part, best_iteration, fit, heldout, prepare, split_codes
from engine.models.bundle import DEFAULT_BUNDLE
from engine.scoring.servable import load_serving_model
from engine.training import metrics as m
from engine.training.data import write_trades
from engine.training.synthetic import generate_trades
from engine.training.train import TrainConfig

from .conftest import engine, quiet

pytestmark = pytest.mark.slow

CONFIG = TrainConfig(seed=11, num_boost_round=60, early_stopping_rounds=10, learning_rate=0.1, threads=1)


def test_split_is_stable_and_about_the_asked_shares() -> None:
    ids = np.array([f"T{i:08d}" for i in range(20_000)], dtype=object)
    codes = split_codes(ids, 0.2, seed=3)
    assert np.array_equal(codes, split_codes(ids[::-1], 0.2, seed=3)[::-1])  # per trade, not per position
    shares = np.bincount(codes, minlength=3) / ids.size
    assert shares[TRAIN] == pytest.approx(0.8, abs=0.01) and shares[VALID] == pytest.approx(0.1, abs=0.01)
    assert not np.array_equal(codes, split_codes(ids, 0.2, seed=4))


def test_dask_training_matches_single_machine_on_the_same_rows(cluster: Any) -> None:
    import lightgbm as lgb

    trades, labels, references = generate_trades(40_000, seed=11)
    bounds = np.linspace(0, len(trades), 5).astype(int)
    parts = cluster.scatter(
        [Part(trades.take(slice(lo, hi)), labels[lo:hi]) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    )
    prepared = prepare(cluster, parts, references, CONFIG, quiet)
    booster, _ = fit(cluster, prepared, CONFIG, quiet)
    x_valid, y_valid = heldout(cluster, prepared, VALID)
    x_test, y_test = heldout(cluster, prepared, TEST)
    x_train, y_train = heldout(cluster, prepared, TRAIN)
    params = {k: v for k, v in CONFIG.lgb_params().items() if k not in ("metric", "first_metric_only")}
    local = lgb.train(params, lgb.Dataset(x_train, y_train), num_boost_round=CONFIG.num_boost_round)
    aucs = []
    for model in (booster, local):
        best, _ = best_iteration(model, x_valid, y_valid, CONFIG.early_stopping_rounds)
        aucs.append(m.roc_auc(y_test, model.predict(x_test, num_iteration=best)))
    assert aucs[0] == pytest.approx(aucs[1], abs=0.02), aucs  # the benchmark measures it on 400k rows
    assert aucs[0] > 0.75


def test_train_command_on_partitioned_files_writes_a_servable_bundle(tmp_path: Path) -> None:
    trades, labels, _ = generate_trades(24_000, seed=5)
    for i, lo in enumerate(range(0, 24_000, 8_000)):
        write_trades(
            tmp_path / "data" / f"part-{i}.parquet",
            trades.take(slice(lo, lo + 8_000)),
            labels[lo : lo + 8_000],
        )
    out = tmp_path / "bundle"
    run = engine(
        "train", "--scheduler", "local", "--workers", "2", "--data", str(tmp_path / "data"),
        "--reference-from", str(DEFAULT_BUNDLE), "--num-boost-round", "40", "--out", str(out),
        "--version", "9.9.9-dask",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "on 2 Dask worker(s)" in run.stderr and "parity:" in run.stderr
    model = load_serving_model(out)  # the checks engine serve runs: hashes, golden rows, TreeSHAP parity
    manifest = json.loads((out / "manifest.json").read_text())
    assert model.version == "9.9.9-dask" and model.explainer is not None
    assert manifest["training"]["distributed"]["library"] == "lightgbm.dask"
    assert manifest["training"]["source"]["partitions"] == 3
    assert manifest["parity"]["max_abs_diff"] < 1e-5 and 0.6 < manifest["metrics"]["roc_auc"] < 1.0
    assert set(manifest["metrics"]) >= {"roc_auc", "pr_auc", "brier", "log_loss", "band_high_share"}
    usage = engine(
        "train", "--scheduler", "local", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "b2")
    )
    assert usage.returncode == 2 and "needs --reference-from" in usage.stderr
