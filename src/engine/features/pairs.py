"""Record pairs (system A's and system B's view of one record) -> break features, vectorised.

One definition for training and serving: `engine.training.pairs` builds its
matrix with `pair_features`, and the engine's `BreakScorer` does the same per
batch. Every step works on whole columns (numpy; rapidfuzz's `cpdist` for the
Jaro-Winkler similarities, in C); the only per-pair Python is reading the
request's fields into those columns (`PairColumns.from_messages`).

Features (float32, in `PAIR_FEATURES` order):

| name | value |
| --- | --- |
| missing_a / missing_b | 1 when the record is absent from that system |
| status_mismatch | 1 when both sides exist and their statuses differ (case and spaces ignored) |
| quantity_rel_delta | (b - a) / max(|a|, |b|): signed, in [-1, 1]; +-1 when only one side has a quantity |
| amount_rel_delta | the same for the amount |
| amount_z_a / amount_z_b | log1p(|amount|) as a z-score against the training history (fat fingers) |
| update_lag | sign(b - a) * log1p(|b - a| seconds) between the two last-update times |
| name_similarity / address_similarity | Jaro-Winkler similarity in [0, 1]; 1 when equal or both empty |

A feature that does not apply (a side missing, no quantity on either side) is 0
(similarities 1): the `missing_*` flags carry the absence, never a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from rapidfuzz.distance import JaroWinkler
from rapidfuzz.process import cpdist

from engine.errors import BundleError, InvalidInput

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

PAIR_FEATURES = (
    "missing_a",
    "missing_b",
    "status_mismatch",
    "quantity_rel_delta",
    "amount_rel_delta",
    "amount_z_a",
    "amount_z_b",
    "update_lag",
    "name_similarity",
    "address_similarity",
)
#: the stable reason code of each feature, as responses and events carry it
REASON_CODES = {name: name.upper() for name in PAIR_FEATURES}
#: fields compared, in the order `differences` lists them
FIELDS = ("record", "status", "quantity", "amount", "name", "address")
#: two numbers this close (relative) are equal: float noise between systems is not a break
REL_TOLERANCE = 1e-9
#: amounts this far apart in log terms (about 9x) are a fat finger, not a drift
FAT_FINGER_LOG_RATIO = math.log(9.0)
#: a side holding the record 2 or 3 times (a duplicate booking) shows that many times the totals
DUPLICATE_FOLDS = (2.0, 3.0)
#: how close the relative deltas must come to a k-fold booking's (float32 features, rounded amounts)
DUPLICATE_TOLERANCE = 1e-3
#: a feature this many spreads from the training history's center is a reason
REASON_MIN_STRENGTH = 3.0

# break classes, as the proto's BreakClass values
CLASS_NONE, CLASS_MISSING, CLASS_STATUS, CLASS_VALUE, CLASS_STATIC = 1, 2, 3, 4, 5
SIDE_NONE, SIDE_A, SIDE_B = 0, 1, 2


@dataclass(frozen=True, slots=True)
class PairStats:
    """What the features and reasons need from training: the amount baseline and each feature's spread."""

    log_amount_mean: float
    log_amount_std: float
    #: per feature: (center, scale) of the training history; a reason's strength is |x - center| / scale
    spread: Mapping[str, tuple[float, float]]

    def to_json(self) -> dict[str, Any]:
        return {
            "log_amount_mean": self.log_amount_mean,
            "log_amount_std": self.log_amount_std,
            "spread": {k: list(v) for k, v in self.spread.items()},
        }

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> PairStats:
        try:
            stats = PairStats(
                log_amount_mean=float(raw["log_amount_mean"]),
                log_amount_std=float(raw["log_amount_std"]),
                spread={str(k): (float(v[0]), float(v[1])) for k, v in raw["spread"].items()},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"pair statistics are malformed: {exc!r}") from exc
        if not (math.isfinite(stats.log_amount_mean) and stats.log_amount_std > 0):
            raise BundleError("pair statistics: log_amount_std must be > 0")
        if set(stats.spread) != set(PAIR_FEATURES) or any(s <= 0 for _, s in stats.spread.values()):
            raise BundleError("pair statistics: need a positive spread for every pair feature")
        return stats


@dataclass(frozen=True, slots=True)
class PairColumns:
    """A batch of pairs as columns; index 0 is side A, 1 is side B."""

    keys: list[str]
    present: B  # [n, 2]
    sources: tuple[list[str], list[str]]
    status: tuple[list[str], list[str]]  # normalised: stripped, lower case
    quantity: F64  # [n, 2], NaN when unset or the side is missing
    amount: F64  # [n, 2]
    name: tuple[list[str], list[str]]
    address: tuple[list[str], list[str]]
    updated_at: F64  # [n, 2] unix seconds, NaN when the side is missing

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def from_messages(pairs: Sequence[Any]) -> PairColumns:
        """Read and check `RecordPair` messages; InvalidInput names the field and the first bad pair.

        Each field is read for all pairs in one comprehension (the only per-pair
        Python) and checked on whole columns.
        """
        keys = [p.key for p in pairs]
        _refuse(np.fromiter((not k for k in keys), np.bool_, len(keys)), "key", "required")
        a, b = _read_side(pairs, "a"), _read_side(pairs, "b")
        present = np.stack([a.present, b.present], axis=1)
        _refuse(np.logical_not(present.any(axis=1)), "a", "at least one of a and b is required")
        for side, view in (("a", a), ("b", b)):
            empty = np.fromiter((not x for x in view.source), np.bool_, len(keys))
            _refuse(view.present & empty, f"{side}.source", "required")
            _refuse(view.present & ~view.has_updated_at, f"{side}.updated_at", "required")
            _refuse(view.bad_quantity, f"{side}.quantity", "must be a finite number")
            _refuse(view.bad_amount, f"{side}.amount", "must be a finite number")
        return PairColumns(
            keys=keys,
            present=present,
            sources=(a.source, b.source),
            status=(a.status, b.status),
            quantity=np.stack([a.quantity, b.quantity], axis=1),
            amount=np.stack([a.amount, b.amount], axis=1),
            name=(a.name, b.name),
            address=(a.address, b.address),
            updated_at=np.stack([a.updated_at, b.updated_at], axis=1),
        )


@dataclass(frozen=True, slots=True)
class _Side:
    """One side's fields for every pair of a request; absent views read as empty."""

    present: B
    source: list[str]
    status: list[str]
    name: list[str]
    address: list[str]
    has_updated_at: B
    updated_at: F64  # NaN where the view is absent or has no time
    quantity: F64  # NaN where unset (or the view is absent)
    amount: F64
    bad_quantity: B  # set, but NaN or infinite
    bad_amount: B


def _read_side(pairs: Sequence[Any], side: str) -> _Side:
    n = len(pairs)
    present = np.fromiter((p.HasField(side) for p in pairs), np.bool_, n)
    views = [getattr(p, side) for p in pairs]  # an absent view is an empty default message
    has_time = np.fromiter((v.HasField("updated_at") for v in views), np.bool_, n)
    stamps = [v.updated_at for v in views]
    updated = np.fromiter((t.seconds + t.nanos * 1e-9 for t in stamps), np.float64, n)
    updated[~(present & has_time)] = np.nan
    numbers = []
    for name in ("quantity", "amount"):
        given = np.fromiter((v.HasField(name) for v in views), np.bool_, n) & present
        values = np.fromiter((getattr(v, name) for v in views), np.float64, n)
        bad = given & ~np.isfinite(values)
        values[~given] = np.nan
        numbers.append((values, bad))
    (quantity, bad_quantity), (amount, bad_amount) = numbers
    return _Side(
        present=present,
        source=[v.source for v in views],
        status=[v.status.strip().lower() for v in views],
        name=[v.name for v in views],
        address=[v.address for v in views],
        has_updated_at=has_time,
        updated_at=updated,
        quantity=quantity,
        amount=amount,
        bad_quantity=bad_quantity,
        bad_amount=bad_amount,
    )


def _refuse(bad: B, field: str, reason: str) -> None:
    """InvalidInput naming the first pair where `bad` holds, and how many more there are."""
    if bad.any():
        first = int(np.argmax(bad))
        raise InvalidInput(field, reason, first, count=int(bad.sum()), records="pairs")


def _similarity(a: list[str], b: list[str]) -> F64:
    if not a:
        return np.zeros(0)
    return np.asarray(cpdist(a, b, scorer=JaroWinkler.normalized_similarity, workers=1), dtype=np.float64)


def _rel_delta(values: F64, both: B) -> F64:
    """(b - a) / max(|a|, |b|) where both sides exist; +-1 when only one has a value; else 0."""
    a, b = values[:, 0], values[:, 1]
    has_a, has_b = ~np.isnan(a), ~np.isnan(b)
    scale = np.fmax(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(scale > 0, (b - a) / np.where(scale > 0, scale, 1.0), 0.0)
    rel = np.where(has_a & has_b, rel, 0.0)
    rel = np.where(has_b & ~has_a, 1.0, rel)
    rel = np.where(has_a & ~has_b, -1.0, rel)
    rel[np.abs(rel) < REL_TOLERANCE] = 0.0
    return np.where(both, rel, 0.0)


@dataclass(frozen=True, slots=True)
class PairFeatures:
    matrix: F32  # [n, len(PAIR_FEATURES)]
    differs: B  # [n, len(FIELDS)]
    #: [n]: both sides carry a quantity (a relative delta of 0 is then "equal", not "none")
    quantities: B


def pair_features(cols: PairColumns, stats: PairStats) -> PairFeatures:
    """The model's input matrix and which fields differ, for a batch of pairs."""
    n = len(cols)
    both = cols.present[:, 0] & cols.present[:, 1]
    x = np.zeros((n, len(PAIR_FEATURES)), dtype=np.float64)
    x[:, 0] = ~cols.present[:, 0]
    x[:, 1] = ~cols.present[:, 1]
    status_a = np.asarray(cols.status[0], dtype=object)
    status_b = np.asarray(cols.status[1], dtype=object)
    status_differs = both & (status_a != status_b) if n else np.zeros(0, dtype=np.bool_)
    x[:, 2] = status_differs
    x[:, 3] = _rel_delta(cols.quantity, both)
    x[:, 4] = _rel_delta(cols.amount, both)
    with np.errstate(invalid="ignore"):
        z = (np.log1p(np.abs(cols.amount)) - stats.log_amount_mean) / stats.log_amount_std
    z = np.nan_to_num(z, nan=0.0)
    x[:, 5], x[:, 6] = z[:, 0], z[:, 1]
    lag = cols.updated_at[:, 1] - cols.updated_at[:, 0]
    x[:, 7] = np.where(both, np.sign(lag) * np.log1p(np.abs(np.nan_to_num(lag))), 0.0)
    names = _similarity(cols.name[0], cols.name[1])
    addresses = _similarity(cols.address[0], cols.address[1])
    x[:, 8] = np.where(both, names, 1.0)
    x[:, 9] = np.where(both, addresses, 1.0)
    differs = np.zeros((n, len(FIELDS)), dtype=np.bool_)
    differs[:, 0] = ~both
    differs[:, 1] = status_differs
    differs[:, 2] = x[:, 3] != 0
    differs[:, 3] = x[:, 4] != 0
    differs[:, 4] = x[:, 8] < 1.0
    differs[:, 5] = x[:, 9] < 1.0
    quantities: B = np.asarray(~np.isnan(cols.quantity).any(axis=1), dtype=np.bool_)
    return PairFeatures(np.ascontiguousarray(x, dtype=np.float32), differs, quantities)


def break_classes(differs: B) -> npt.NDArray[np.int32]:
    """The first matching class per pair: missing, then status, then value, then static data, else none."""
    out = np.full(differs.shape[0], CLASS_NONE, dtype=np.int32)
    for column, cls in ((5, CLASS_STATIC), (4, CLASS_STATIC), (3, CLASS_VALUE), (2, CLASS_VALUE)):
        out[differs[:, column]] = cls
    out[differs[:, 1]] = CLASS_STATUS
    out[differs[:, 0]] = CLASS_MISSING
    return out


def likely_right(
    features: F32, differs: B, quantities: B, log_amount_std: float
) -> tuple[npt.NDArray[np.int32], F64]:
    """Which side to believe, and how much, per pair (rules; the engine applies nothing).

    - one side missing: the side that has the record, confidence 0.5 (a late
      insert and an unpropagated delete look alike);
    - the amounts differ by an order of magnitude or more (a fat finger: x10,
      x100, /1000): the side whose amount is closer to the training history's
      (smaller |z|), confidence 0.7 rising with the gap between the two |z|;
    - the amount (and the quantity, where there is one) is exactly 2 or 3 times
      the other side's (a duplicate booking on that side): the smaller side,
      confidence 0.8;
    - otherwise the side updated last (replication lag: the newer copy is
      right), confidence 0.6 rising to 0.95 as the lag grows past minutes;
    - the same update time: no side, confidence 0.
    """
    n = features.shape[0]
    side = np.full(n, SIDE_NONE, dtype=np.int32)
    conf = np.zeros(n, dtype=np.float64)
    any_diff = differs.any(axis=1)
    z_a, z_b = features[:, 5].astype(np.float64), features[:, 6].astype(np.float64)
    z_gap = np.abs(z_b) - np.abs(z_a)  # > 0: B is the further from history
    lag = features[:, 7].astype(np.float64)  # sign(b - a) * log1p(|seconds|)
    newer = np.where(lag > 0, SIDE_B, SIDE_A)
    by_lag = any_diff & (lag != 0)
    side[by_lag] = newer[by_lag]
    conf[by_lag] = 0.6 + 0.35 * (1.0 - np.exp(-np.expm1(np.abs(lag[by_lag])) / 300.0))
    # |z_b - z_a| = |log1p|b|| - log1p(|a|)| / std: at least log(9) apart in log1p terms
    fat = any_diff & (np.abs(z_b - z_a) * log_amount_std >= FAT_FINGER_LOG_RATIO)
    side[fat] = np.where(z_gap[fat] > 0, SIDE_A, SIDE_B)
    conf[fat] = np.minimum(0.95, 0.7 + 0.05 * np.abs(z_gap[fat]))
    # (b - a) / max(|a|, |b|) of a k-fold booking is +-(1 - 1/k): 0.5 for two, 0.667 for three
    q_rel, a_rel = features[:, 3].astype(np.float64), features[:, 4].astype(np.float64)
    k_fold = np.zeros(n, dtype=np.bool_)
    for k in DUPLICATE_FOLDS:
        k_fold |= np.abs(np.abs(a_rel) - (1.0 - 1.0 / k)) < DUPLICATE_TOLERANCE
    same_ratio = ~quantities | (np.abs(q_rel - a_rel) < DUPLICATE_TOLERANCE)
    duplicate = any_diff & ~fat & k_fold & same_ratio
    side[duplicate] = np.where(a_rel[duplicate] > 0, SIDE_A, SIDE_B)
    conf[duplicate] = 0.8
    missing_b = features[:, 1] > 0
    missing_a = features[:, 0] > 0
    side[missing_b] = SIDE_A
    side[missing_a] = SIDE_B
    conf[missing_a | missing_b] = 0.5
    return side, conf


def top_reasons(features: F32, stats: PairStats, k: int = 3) -> tuple[npt.NDArray[np.intp], F64]:
    """Per pair, the `k` features furthest from the training history (index, strength), strongest first."""
    center = np.array([stats.spread[f][0] for f in PAIR_FEATURES])
    scale = np.array([stats.spread[f][1] for f in PAIR_FEATURES])
    strength = np.abs(features.astype(np.float64) - center) / scale
    order = np.argsort(-strength, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(strength, order, axis=1)


def feature_spread(matrix: F32) -> dict[str, tuple[float, float]]:
    """(median, scale) of each feature over a training matrix: the robust spread (MAD), else the
    standard deviation (a feature constant in most history, like a flag or a similarity of 1),
    never below 0.001."""
    x = matrix.astype(np.float64)
    center = np.median(x, axis=0)
    mad = np.median(np.abs(x - center), axis=0) * 1.4826
    std = x.std(axis=0)
    scale = np.maximum(np.where(mad > 0, mad, std), 1e-3)
    return {f: (float(c), float(s)) for f, c, s in zip(PAIR_FEATURES, center, scale, strict=True)}
