"""`engine train --scheduler ...`: the settlement-fail model trained with `lightgbm.dask` on a cluster.

The same model, features and bundle as `engine train`, with the data spread over the workers:

1. The trades, in partitions: the pieces of `--data` (a folder of Parquet / CSV files, read on
   the workers, validated by the serving path's rules) or the synthetic generator's trades cut
   into `partitions` pieces. Each trade goes to train / valid / test by a stable hash of its
   `trade_id` (a split that needs no global view; `engine train` stratifies by label in memory).
2. The feature spec's vocabularies (venues, currencies) from the training rows of every
   partition; then, per partition on its worker, the serving feature code
   (`FeaturePlan.compute`): the model never sees a feature computed differently.
3. `lightgbm.dask.DaskLGBMClassifier` on the training rows, where they are (LightGBM's own
   distributed data-parallel learner across the workers), with `engine train`'s parameters.
4. Early stopping as `engine train` does it (the first round after which valid log-loss has not
   improved for `early_stopping_rounds` rounds), on the valid rows brought to the client: LightGBM's
   early stopping is not available in its Dask interface.
5. `engine.training.train.finish_training` and `engine.training.package.package`: thresholds
   rounded down to float32, risk bands, test metrics, ONNX export, the parity check and the
   manifest, exactly as `engine train`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from engine.batch import sources
from engine.batch.errors import DataError, UsageError
from engine.features.columns import TradeColumns
from engine.models.reference import ReferenceTables
from engine.models.spec import FeatureSpec
from engine.training.train import TrainConfig, TrainedModel, finish_training

Printer = Callable[[str], None]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
TRAIN, VALID, TEST = 0, 1, 2


def split_codes(trade_ids: npt.NDArray[Any], valid_fraction: float, seed: int) -> npt.NDArray[np.int8]:
    """0 train, 1 valid, 2 test per trade, from a hash of (seed, trade_id): the same on any machine."""
    h = pd.util.hash_array(np.asarray(trade_ids, dtype=object), hash_key=f"{seed:016d}"[-16:])
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = np.full(u.shape[0], TRAIN, dtype=np.int8)
    out[u < valid_fraction] = TEST
    out[u < valid_fraction / 2] = VALID
    return out


@dataclass(frozen=True, slots=True)
class Part:
    """One partition's trades and labels (what a worker holds)."""

    trades: TradeColumns
    labels: npt.NDArray[np.int8]


def read_part(piece: sources.Piece, drop_invalid: bool) -> Part:
    """A piece of a labelled trades dataset, validated as `engine train --data` validates a file."""
    from engine.batch.trades import read_trades
    from engine.training.data import LABEL_COLUMN, parse_labels
    from engine.training.errors import DataError as LabelError

    read = read_trades(piece, drop_invalid)
    if LABEL_COLUMN not in read.table:
        raise UsageError(
            f"{piece.where()}: no label column {LABEL_COLUMN!r} (1 = failed to settle, 0 = settled)"
        )
    try:
        labels = parse_labels(read.table[LABEL_COLUMN])
    except LabelError as exc:
        raise DataError(f"{piece.where()}: {exc}") from None
    return Part(read.trades, labels[read.kept])


def _vocabulary(part: Part, valid_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    train = split_codes(part.trades.trade_id, valid_fraction, seed) == TRAIN
    return set(part.trades.settlement_venue[train].tolist()), set(part.trades.currency[train].tolist())


def _features(
    part: Part, spec: FeatureSpec, references: ReferenceTables, valid_fraction: float, seed: int
) -> tuple[F32, F64, npt.NDArray[np.int8]]:
    from engine.features.compute import FeaturePlan

    x = FeaturePlan(spec, references).compute(part.trades)
    return x, part.labels.astype(np.float64), split_codes(part.trades.trade_id, valid_fraction, seed)


def _select(part: tuple[F32, F64, npt.NDArray[np.int8]], which: int) -> tuple[F32, F64]:
    x, y, split = part
    keep = split == which
    return np.ascontiguousarray(x[keep]), y[keep]


@dataclass(frozen=True, slots=True)
class Prepared:
    """Features on the workers (futures of (x, y, split) per partition) and what they were built with."""

    parts: list[Any]
    spec: FeatureSpec
    references: ReferenceTables
    rows: dict[str, int]


def prepare(
    client: Any, parts: list[Any], references: ReferenceTables, config: TrainConfig, log: Printer
) -> Prepared:
    """Vocabularies from every partition's training rows, then features per partition, kept on the workers."""
    from dask.delayed import delayed

    from engine.features.compute import default_spec

    t0 = time.perf_counter()
    vocab = client.gather(
        client.compute([delayed(_vocabulary)(p, config.valid_fraction, config.seed) for p in parts])
    )
    venues = sorted(set().union(*(v for v, _ in vocab)))
    currencies = sorted(set().union(*(c for _, c in vocab)))
    spec = default_spec(np.asarray(venues), np.asarray(currencies))
    featurise = delayed(_features, pure=True)
    futures = client.persist(
        [featurise(p, spec, references, config.valid_fraction, config.seed) for p in parts]
    )
    sizes = client.gather(
        client.compute([delayed(lambda f: np.bincount(f[2], minlength=3))(f) for f in futures])
    )
    total = np.sum(sizes, axis=0)
    rows = {
        "train": int(total[TRAIN]),
        "valid": int(total[VALID]),
        "test": int(total[TEST]),
        "total": int(total.sum()),
    }
    log(
        f"features: {len(parts)} partitions on the workers in {time.perf_counter() - t0:.1f} s; train "
        f"{rows['train']:,} / valid {rows['valid']:,} / test {rows['test']:,} (split by a hash of trade_id)"
    )
    if min(rows["train"], rows["valid"], rows["test"]) == 0:
        raise DataError(f"a split is empty ({rows}): need more rows or a larger --valid-fraction")
    return Prepared(list(futures), spec, references, rows)


def heldout(client: Any, prepared: Prepared, which: int) -> tuple[F32, F64]:
    """The valid or test rows of every partition, brought to the client."""
    from dask.delayed import delayed

    got = client.gather(client.compute([delayed(_select)(f, which) for f in prepared.parts]))
    return np.ascontiguousarray(np.concatenate([x for x, _ in got])), np.concatenate([y for _, y in got])


def train_arrays(client: Any, prepared: Prepared) -> tuple[Any, Any]:
    """The training rows as Dask arrays, one chunk per partition, where the partitions are."""
    import dask.array as da
    from dask.delayed import delayed

    chunks = [delayed(_select)(f, TRAIN) for f in prepared.parts]
    counts = client.gather(client.compute([delayed(lambda c: len(c[1]))(c) for c in chunks]))
    width = len(prepared.spec)
    xs = [
        da.from_delayed(c[0], shape=(n, width), dtype=np.float32)
        for c, n in zip(chunks, counts, strict=True)
        if n
    ]
    ys = [
        da.from_delayed(c[1], shape=(n,), dtype=np.float64) for c, n in zip(chunks, counts, strict=True) if n
    ]
    return da.concatenate(xs), da.concatenate(ys)


def best_iteration(booster: Any, x_valid: F32, y_valid: F64, patience: int) -> tuple[int, list[float]]:
    """The round `lgb.early_stopping(patience)` on valid log-loss would keep, and the log-loss per round."""
    from engine.training.metrics import log_loss

    raw = np.zeros(len(y_valid))
    losses: list[float] = []
    best, best_loss = 0, np.inf
    for i in range(booster.current_iteration()):
        raw += booster.predict(x_valid, raw_score=True, start_iteration=i, num_iteration=1)
        loss = log_loss(y_valid, 1.0 / (1.0 + np.exp(-raw)))
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = i + 1, loss
        elif i + 1 - best >= patience:
            break
    return best, losses


def fit(client: Any, prepared: Prepared, config: TrainConfig, log: Printer) -> tuple[Any, dict[str, Any]]:
    """`lightgbm.dask.DaskLGBMClassifier` on the training rows, with `engine train`'s parameters."""
    import lightgbm as lgb
    from lightgbm.dask import DaskLGBMClassifier

    x, y = train_arrays(client, prepared)
    # lightgbm.dask sets the objective, and each worker's threads from its Dask threads
    dropped = ("objective", "metric", "first_metric_only", "num_threads")
    params = {k: v for k, v in config.lgb_params().items() if k not in dropped}
    workers = len(client.scheduler_info()["workers"])
    log(
        f"LightGBM {lgb.__version__} on {workers} Dask worker(s): {config.num_boost_round} rounds, "
        f"learning rate {config.learning_rate}, {config.num_leaves} leaves, each worker's Dask threads"
    )
    t0 = time.perf_counter()
    model = DaskLGBMClassifier(client=client, n_estimators=config.num_boost_round, **params)
    with warnings.catch_warnings():
        # the sklearn wrapper's own n_jobs: lightgbm.dask uses each worker's threads and says so
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored", category=UserWarning)
        model.fit(x, y)
    return model.booster_, {
        **params,
        "objective": "binary",
        "distributed": True,
        "workers": workers,
        "fit_s": round(time.perf_counter() - t0, 2),
    }


def train_distributed(
    client: Any, parts: list[Any], references: ReferenceTables, config: TrainConfig, log: Printer
) -> TrainedModel:
    """Fit on the cluster and finish as `engine train` does; the result goes to `package()` unchanged."""
    t0 = time.perf_counter()
    prepared = prepare(client, parts, references, config, log)
    timings = {"features_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    booster, params = fit(client, prepared, config, log)
    timings["fit_s"] = time.perf_counter() - t0
    valid = heldout(client, prepared, VALID)
    test = heldout(client, prepared, TEST)
    best, losses = best_iteration(booster, valid[0], valid[1], config.early_stopping_rounds)
    log(
        f"best iteration {best} of {booster.current_iteration()} (valid log-loss {losses[best - 1]:.5f}); "
        f"fit {timings['fit_s']:.1f} s"
    )
    return finish_training(
        booster, best, prepared.spec, references, config, valid, test, params, prepared.rows, timings, log
    )
