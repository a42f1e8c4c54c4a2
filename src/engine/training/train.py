"""Train the settlement-fail classifier: features -> LightGBM -> float32-exact booster.

The feature matrix comes from the serving code itself
(`engine.features.compute.default_spec` + `FeaturePlan.compute`), so the model
never sees a feature computed differently in training and in serving.

Splits (stratified by label, seeded): the held-out `valid_fraction` of rows is
halved into

- *valid*: early stopping (on log-loss, which keeps the probabilities calibrated),
  and the risk-band thresholds when the rule is `share` (`metrics.BandRule`);
- *test*: the metrics recorded in the manifest, on rows that chose nothing.

Categorical features (asset class, side, venue, currency) are integer codes
that LightGBM splits as numbers; we never pass `categorical_feature`, because
ONNX set-membership splits are a parity risk (see `engine.training.export`).
Missing signals stay NaN and LightGBM learns a direction for them per split.

Determinism: `deterministic=True`, `force_row_wise=True`, a fixed
`num_threads` and `seed` make the same data give the same trees, bit for bit,
on the same build of LightGBM (change the thread count and trees may differ).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.features.columns import TradeColumns
from engine.features.compute import FeaturePlan, default_spec
from engine.models.reference import ReferenceTables
from engine.models.spec import FeatureSpec, RiskBands
from engine.training import metrics as m
from engine.training.errors import DataError
from engine.training.export import PARITY_TOLERANCE, RewriteStats, round_thresholds_down, verify_rewrite

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Idx = npt.NDArray[np.intp]
Printer = Callable[[str], None]

DEFAULT_SEED = 20261121
_log = logging.getLogger("engine.training")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int = DEFAULT_SEED
    num_boost_round: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    early_stopping_rounds: int = 30
    valid_fraction: float = 0.2
    parity_rows: int = 100_000
    threads: int = 2
    log_every: int = 25
    band_rule: m.BandRule = field(default_factory=m.BandRule)
    parity_tolerance: float = PARITY_TOLERANCE

    def lgb_params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "metric": ["binary_logloss", "auc"],
            "first_metric_only": True,  # early stopping on log-loss: probabilities must be calibrated
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "max_bin": 255,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.threads,
            "verbose": -1,
        }


@dataclass(frozen=True, slots=True)
class Split:
    train: Idx
    valid: Idx
    test: Idx

    def sizes(self) -> dict[str, int]:
        return {"train": int(self.train.size), "valid": int(self.valid.size), "test": int(self.test.size)}


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A trained, threshold-rewritten booster and what the bundle needs to describe it."""

    booster: Any  # lightgbm.Booster with float32-exact thresholds (best iteration only)
    booster_text: str
    rewrite: RewriteStats
    spec: FeatureSpec
    references: ReferenceTables
    bands: RiskBands
    metrics: dict[str, float]
    best_iteration: int
    params: dict[str, Any]
    #: held-out rows (valid + test) as float32 features, for parity and golden rows
    heldout: F32
    rows: dict[str, int]
    timings: dict[str, float]


def split_rows(labels: npt.NDArray[np.int8], valid_fraction: float, seed: int) -> Split:
    """Stratified train / valid / test indices (valid and test: half of `valid_fraction` each)."""
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"valid fraction must be inside (0, 1), got {valid_fraction}")
    rng = np.random.default_rng([seed, 1])
    parts: dict[str, list[Idx]] = {"train": [], "valid": [], "test": []}
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_hold = int(round(idx.size * valid_fraction))
        n_valid = n_hold // 2
        parts["valid"].append(idx[:n_valid])
        parts["test"].append(idx[n_valid:n_hold])
        parts["train"].append(idx[n_hold:])
    split = Split(*(np.sort(np.concatenate(parts[k])).astype(np.intp) for k in ("train", "valid", "test")))
    for name, idx in (("train", split.train), ("valid", split.valid), ("test", split.test)):
        y = labels[idx]
        if y.size == 0 or y.min() == y.max():
            raise DataError(
                f"the {name} split has no {'rows' if y.size == 0 else 'failed or no settled trades'}: "
                f"need more rows (have {labels.size}, {int(labels.sum())} failed) "
                "or a larger --valid-fraction"
            )
    return split


class _Progress:
    """LightGBM callback: the valid metrics every `every` rounds."""

    order = 30

    def __init__(self, log: Printer, every: int) -> None:
        self.log = log
        self.every = max(1, every)
        self.rounds = 0

    def __call__(self, env: Any) -> None:
        it = env.iteration + 1
        self.rounds = it
        if it % self.every == 0 or it == env.end_iteration:
            parts = "  ".join(f"{name} {value:.5f}" for _, name, value, _ in env.evaluation_result_list)
            self.log(f"  [{it:4d}] valid {parts}")


def features_for(trades: TradeColumns, spec: FeatureSpec, references: ReferenceTables) -> F32:
    """The model input matrix, computed by the serving feature code."""
    return FeaturePlan(spec, references).compute(trades)


def train_model(
    trades: TradeColumns,
    labels: npt.NDArray[np.int8],
    references: ReferenceTables,
    config: TrainConfig = TrainConfig(),
    log: Printer = _log.info,
) -> TrainedModel:
    """Fit, early-stop, rewrite thresholds, score the test split and choose risk bands."""
    import lightgbm as lgb

    timings: dict[str, float] = {}
    n = len(trades)
    if labels.shape != (n,):
        raise DataError(f"{labels.shape[0]} labels for {n} trades")
    log(f"data: {n:,} trades, base fail rate {labels.mean():.2%}")
    split = split_rows(labels, config.valid_fraction, config.seed)
    log(
        f"split (stratified, seed {config.seed}): train {split.train.size:,} / valid {split.valid.size:,} "
        f"(early stopping, risk bands) / test {split.test.size:,} (metrics)"
    )

    t0 = time.perf_counter()
    train_trades = trades.take(split.train)
    spec = default_spec(train_trades.settlement_venue, train_trades.currency)
    x = features_for(trades, spec, references)
    y = labels.astype(np.float64)
    timings["features_s"] = time.perf_counter() - t0
    missing = np.isnan(x).mean(axis=0)
    log(
        f"features: {x.shape[1]} columns in {timings['features_s']:.1f} s; missing: "
        + ", ".join(f"{k} {share:.0%}" for k, share in zip(spec.names, missing, strict=True) if share > 0)
    )

    t0 = time.perf_counter()
    params = config.lgb_params()
    train_set = lgb.Dataset(x[split.train], y[split.train], feature_name=list(spec.names), free_raw_data=True)
    valid_set = lgb.Dataset(x[split.valid], y[split.valid], reference=train_set)
    log(
        f"LightGBM {lgb.__version__}: up to {config.num_boost_round} rounds, learning rate "
        f"{config.learning_rate}, {config.num_leaves} leaves, early stopping after "
        f"{config.early_stopping_rounds} rounds without log-loss gain, {config.threads} thread(s)"
    )
    progress = _Progress(log, config.log_every)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[
            lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False),
            progress,
        ],
    )
    best = int(booster.best_iteration or booster.current_iteration())
    timings["fit_s"] = time.perf_counter() - t0
    best_scores = booster.best_score.get("valid", {})
    log(
        f"best iteration {best} (ran {progress.rounds}; "
        + ", ".join(f"valid {k} {v:.5f}" for k, v in best_scores.items())
        + f"); fit {timings['fit_s']:.1f} s"
    )

    rows = {**split.sizes(), "total": n}
    valid, test = (x[split.valid], y[split.valid]), (x[split.test], y[split.test])
    return finish_training(booster, best, spec, references, config, valid, test, params, rows, timings, log)


def finish_training(
    booster: Any,
    best: int,
    spec: FeatureSpec,
    references: ReferenceTables,
    config: TrainConfig,
    valid: tuple[F32, F64],
    test: tuple[F32, F64],
    params: dict[str, Any],
    rows: dict[str, int],
    timings: dict[str, float],
    log: Printer = _log.info,
) -> TrainedModel:
    """From a fitted booster to a `TrainedModel`: thresholds rounded down to float32 (and checked),
    risk bands from the valid rows, metrics on the test rows. Shared by `train_model` and the
    distributed training (`engine.batch.train`), so both write the same bundle."""
    (x_valid, _), (x_test, y_test) = valid, test
    # float32-exact thresholds; on float32 inputs the rewritten booster must be the same function
    rewritten, text, rewrite = round_thresholds_down(booster, num_iteration=best)
    heldout = np.ascontiguousarray(np.concatenate([x_valid, x_test]))
    verify_rewrite(booster, rewritten, heldout, num_iteration=best, threads=config.threads)
    log(
        f"thresholds: {rewrite.splits:,} splits, {rewrite.rounded:,} rounded down to float32 "
        f"({rewrite.nearest_would_flip:,} would have rounded up); predictions unchanged on "
        f"{heldout.shape[0]:,} held-out rows"
    )

    p_valid = rewritten.predict(x_valid, num_threads=config.threads)
    p_test = rewritten.predict(x_test, num_threads=config.threads)
    bands = m.choose_risk_bands(p_valid, config.band_rule)
    scores = m.summary(y_test, p_test)
    scores.update(m.band_report(bands, y_test, p_test))
    log(
        "test: ROC-AUC {roc_auc:.4f}  PR-AUC {pr_auc:.4f}  Brier {brier:.5f}  log-loss {log_loss:.5f}  "
        "base rate {base_rate:.2%}  ({rows:,.0f} rows)".format(**scores)
    )
    log(
        "risk bands (lower bounds): "
        + ", ".join(f"{k} >= {v:.4f}" for k, v in bands.to_json().items())
        + f" ({config.band_rule.kind} rule); test fail rate by band: "
        + ", ".join(
            f"{b} {scores[f'band_{b.lower()}_fail_rate']:.1%} of {scores[f'band_{b.lower()}_share']:.1%}"
            for b in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
        )
    )
    for warning in m.band_warnings(bands, scores):
        log(f"warning: risk band {warning} on the test split")
    return TrainedModel(
        booster=rewritten,
        booster_text=text,
        rewrite=rewrite,
        spec=spec,
        references=references,
        bands=bands,
        metrics=scores,
        best_iteration=best,
        params=params,
        heldout=heldout,
        rows=rows,
        timings=timings,
    )
