"""One shuffle partition of discovery: both sides' rows of the same keys -> record pairs -> flags.

After the shuffle on the key hash, a partition holds every row of its keys from both
extracts. Here, in pandas and numpy on whole columns:

1. `join_pairs`: a full outer join on the key. Rows of one key on one side are numbered in
   extract order (the 2nd booking of a key is occurrence 1), and occurrence n of A pairs with
   occurrence n of B, as datacompy pairs duplicates; an extra occurrence is missing on the
   other side. Fields are compared with the mapping's tolerances.
2. `pair_columns`: the pairs as `engine.features.pairs.PairColumns`, the very input `ScorePairs`
   builds from a request, so `pair_features`, `break_classes`, `likely_right` and `top_reasons`
   run unchanged: one feature code path for online and batch.
3. `score_partition`: the pair model, then the flagged pairs (written as one Parquet file per
   partition, sorted by key) and the partition's counts (`PartStats`, added up by the client).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from engine.batch.canonical import ORDER, SIDE, TS, dimension_columns, field_columns, key_columns
from engine.batch.hotspots import NO_VALUE
from engine.batch.mapping import Field, MappingSpec
from engine.batch.models import PairModelRef
from engine.features.pairs import (
    CLASS_MISSING,
    CLASS_NONE,
    CLASS_STATIC,
    CLASS_STATUS,
    CLASS_VALUE,
    PAIR_FEATURES,
    REASON_CODES,
    REASON_MIN_STRENGTH,
    SIDE_A,
    SIDE_B,
    PairColumns,
    break_classes,
    likely_right,
    pair_features,
    top_reasons,
)

B = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
OCC = "_occ"
#: break classes by their BreakClass number, as the proto and the metrics name them
CLASS_NAMES = {
    CLASS_NONE: "NONE",
    CLASS_MISSING: "MISSING",
    CLASS_STATUS: "STATUS",
    CLASS_VALUE: "VALUE",
    CLASS_STATIC: "STATIC_DATA",
}
CLASS_ORDER = ("MISSING", "STATUS", "VALUE", "STATIC_DATA", "NONE")
SIDE_NAMES = {0: "NONE", SIDE_A: "A", SIDE_B: "B"}
REASONS_PER_BREAK = 3
SCORE_BINS = 50


@dataclass(frozen=True, slots=True)
class Joined:
    """The pairs of one partition: the joined frame, which side has each, and what differs."""

    frame: pd.DataFrame  # key columns, OCC, then every canonical column with suffix _a / _b
    present: B  # [n, 2]
    #: [n, fields]: both sides have the record and the field differs beyond tolerance
    mismatch: B
    #: [n, fields]: the field is equal within tolerance (or missing on both)
    equal: B


def _suffixed(name: str, side: int) -> str:
    return f"{name}_{'ab'[side]}"


def _equal(f: Field, a: pd.Series, b: pd.Series) -> B:
    both_missing = (a.isna() & b.isna()).to_numpy()
    if f.type == "text":
        same = (a == b).fillna(False).to_numpy(dtype=np.bool_)
    else:
        x, y = a.to_numpy(dtype=np.float64), b.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            if f.type == "number":
                same = np.abs(x - y) <= f.abs_tol + f.rel_tol * np.abs(y)
            else:
                same = x == y
    return np.asarray(same | both_missing, dtype=np.bool_)


def _key_codes(part: Any, keys: list[str]) -> npt.NDArray[np.int64]:
    """One integer per row, equal for equal keys and ordered as the keys sort (part by part, as text)."""
    codes: npt.NDArray[np.int64] = np.zeros(part.num_rows, dtype=np.int64)
    for k in keys:
        c, uniques = pd.factorize(part.column(k).to_pandas(), sort=True)
        codes = codes * len(uniques) + c
        if len(uniques) and codes.max(initial=0) > 2**40:  # keep room for the next part
            codes = np.unique(codes, return_inverse=True)[1].astype(np.int64)
    return codes


def _pairing(
    codes: npt.NDArray[np.int64], side: npt.NDArray[np.int8], order: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rows of A and of B (-1: none) of each pair, and its occurrence, pairs in key order.

    Rows of one key on one side are numbered in extract order; occurrence n of A pairs with
    occurrence n of B. Sorting integers only: no string comparison, no hash table."""
    n = codes.shape[0]
    by_side = np.lexsort((order, side, codes))
    k, s = codes[by_side], side[by_side]
    pos = np.arange(n)
    first = np.ones(n, dtype=np.bool_)
    first[1:] = (k[1:] != k[:-1]) | (s[1:] != s[:-1])
    occ = np.empty(n, dtype=np.int64)
    occ[by_side] = pos - np.maximum.accumulate(np.where(first, pos, 0))
    by_pair = np.lexsort((side, occ, codes))
    k2, o2, s2 = codes[by_pair], occ[by_pair], side[by_pair]
    new = np.ones(n, dtype=np.bool_)
    new[1:] = (k2[1:] != k2[:-1]) | (o2[1:] != o2[:-1])
    pair = np.cumsum(new) - 1
    m = int(pair[-1]) + 1 if n else 0
    rows = (np.full(m, -1, dtype=np.int64), np.full(m, -1, dtype=np.int64))
    for sd in (0, 1):
        mine = s2 == sd
        rows[sd][pair[mine]] = by_pair[mine]
    return rows[0], rows[1], o2[new]


def join_pairs(part: Any, spec: MappingSpec) -> Joined:
    """Full outer join of a partition's A and B rows (an Arrow table or a pandas frame of canonical
    rows) on key + occurrence, sorted by key."""
    import pyarrow as pa

    keys = key_columns(spec)
    if isinstance(part, pd.DataFrame):
        part = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
    a_row, b_row, occ = _pairing(
        _key_codes(part, keys),
        part.column(SIDE).to_numpy().astype(np.int8),
        part.column(ORDER).to_numpy().astype(np.int64),
    )
    table = part.drop_columns([SIDE])
    taken = [table.take(pa.array(rows, mask=rows < 0)) for rows in (a_row, b_row)]
    present = np.stack([a_row >= 0, b_row >= 0], axis=1)
    columns: dict[str, object] = {}
    for k in keys:  # the key: A's, else B's (the same text where both have it)
        columns[k] = pa.compute.coalesce(taken[0].column(k), taken[1].column(k))
    columns[OCC] = occ
    for sd in (0, 1):
        for name in table.column_names:
            if name not in keys:
                columns[_suffixed(name, sd)] = taken[sd].column(name)
    frame = pd.DataFrame(
        {name: v.to_pandas() if hasattr(v, "to_pandas") else v for name, v in columns.items()}
    )
    both = present[:, 0] & present[:, 1]
    fields = field_columns(spec)
    equal = np.ones((len(frame), len(fields)), dtype=np.bool_)
    for j, (name, f) in enumerate(zip(fields, spec.fields, strict=True)):
        equal[:, j] = _equal(f, frame[f"{name}_a"], frame[f"{name}_b"])
    mismatch = both[:, None] & ~equal
    return Joined(frame, present, mismatch, equal)


def _texts(values: pd.Series, status: bool = False) -> list[str]:
    """Text values as Python strings ("" for missing); a status stripped and in lower case, as
    `PairColumns` holds it (done on the Arrow column, not string by string)."""
    text = values.fillna("").astype("str")
    if status:
        text = text.str.strip().str.lower()
    out: list[str] = text.tolist()
    return out


def pair_columns(joined: Joined, spec: MappingSpec) -> PairColumns:
    """The pairs as `PairColumns`: the model's five inputs from the fields with those roles.

    A role the mapping leaves out is absent on both sides (empty text, no number): equal.
    A number equal within the field's tolerance is the same number for the model.
    """
    frame, present = joined.frame, joined.present
    n = len(frame)
    names = {f.role: (f"f{j}", j) for j, f in enumerate(spec.fields) if f.role is not None}
    texts: dict[str, tuple[list[str], list[str]]] = {}
    for role in ("status", "name", "address"):
        if role in names:
            col, _ = names[role]
            pair = (_texts(frame[f"{col}_a"], role == "status"), _texts(frame[f"{col}_b"], role == "status"))
        else:
            pair = ([""] * n, [""] * n)
        texts[role] = pair
    numbers: dict[str, F64] = {}
    for role in ("quantity", "amount"):
        if role in names:
            col, j = names[role]
            values = np.stack(
                [frame[f"{col}_a"].to_numpy(dtype=np.float64), frame[f"{col}_b"].to_numpy(dtype=np.float64)],
                axis=1,
            )
            snap = joined.equal[:, j] & present[:, 0] & present[:, 1] & ~np.isnan(values).any(axis=1)
            values[snap, 1] = values[snap, 0]
        else:
            values = np.full((n, 2), np.nan)
        values[~present] = np.nan
        numbers[role] = values
    updated = np.stack(
        [frame[f"{TS}_a"].to_numpy(dtype=np.float64), frame[f"{TS}_b"].to_numpy(dtype=np.float64)], axis=1
    )
    key_text = frame[key_columns(spec)[0]].astype("str")
    for k in key_columns(spec)[1:]:
        key_text = key_text + "|" + frame[k].astype("str")
    sources = tuple(np.where(present[:, i], spec.side(s).name, "").tolist() for i, s in enumerate("ab"))
    return PairColumns(
        keys=key_text.tolist(),
        present=present,
        sources=(sources[0], sources[1]),
        status=texts["status"],
        quantity=numbers["quantity"],
        amount=numbers["amount"],
        name=texts["name"],
        address=texts["address"],
        updated_at=updated,
    )


Factorized = tuple[npt.NDArray[np.intp], npt.NDArray[np.object_]]


def dimension_values(joined: Joined, spec: MappingSpec) -> dict[str, Factorized]:
    """Each dimension's value per pair, factorized (codes, sorted values): side A's value, else
    side B's; dates as YYYY-MM-DD; NO_VALUE where neither side has one."""
    frame, out = joined.frame, {}
    column_dims = iter(dimension_columns(spec))
    for d in spec.dimensions:
        if d.field is None:
            col = next(column_dims)
            value = frame[f"{col}_a"].fillna(frame[f"{col}_b"]).fillna(NO_VALUE)
            codes, uniques = pd.factorize(value, sort=True)
            out[d.name] = (codes, np.asarray(uniques, dtype=object))
            continue
        j = [f.name for f in spec.fields].index(d.field)
        raw = frame[f"f{j}_a"].fillna(frame[f"f{j}_b"])
        codes, uniques = pd.factorize(raw, sort=True, use_na_sentinel=False)
        text = _display(pd.Series(uniques), spec.fields[j].type).fillna(NO_VALUE)
        out[d.name] = (codes, text.to_numpy(dtype=object))
    return out


def _display(values: pd.Series, type_: str) -> pd.Series:
    """Field values as text: dates YYYY-MM-DD, timestamps ISO 8601 (UTC), numbers as Python prints them."""
    if type_ in ("date", "timestamp"):
        seconds = values.to_numpy(dtype=np.float64)
        known = ~np.isnan(seconds)
        if type_ == "date":
            days = np.floor(np.where(known, seconds, 0.0) / 86_400.0).astype(np.int64)
            text = np.datetime_as_string(days.astype("datetime64[D]"), unit="D").astype(object)
        else:
            whole = np.floor(np.where(known, seconds, 0.0)).astype(np.int64)
            text = np.datetime_as_string(whole.astype("datetime64[s]"), unit="s").astype(object)
        text[~known] = None
        return pd.Series(text, index=values.index, dtype="str")
    if type_ == "number":
        return values.astype("float64").map(repr).where(values.notna()).astype("str")
    return values.astype("str")


# -- counts -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PartStats:
    """What one partition contributes to the summary and the report (added up with `merge`)."""

    rows_a: int = 0
    rows_b: int = 0
    pairs: int = 0
    matched: int = 0
    matched_equal: int = 0
    only_a: int = 0
    only_b: int = 0
    duplicates_a: int = 0
    duplicates_b: int = 0
    flagged: int = 0
    field_mismatches: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: [field, 3 + len(DELTA_BUCKETS)] for number, date and timestamp fields, over their mismatches:
    #: count, sum of |a - b|, max |a - b|, then counts by |a - b| / min(|a|, |b|) (numbers; times by
    #: the difference in seconds) in DELTA_BUCKETS
    field_deltas: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    #: [class, 2]: pairs of each CLASS_ORDER class (by what differs), all and flagged
    classes: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros((len(CLASS_ORDER), 2), dtype=np.int64)
    )
    #: [class, bins]: break scores of every pair, by class
    scores: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros((len(CLASS_ORDER), SCORE_BINS), dtype=np.int64)
    )
    #: per dimension: pairs, flagged, differing and per-field mismatches, by value
    dimensions: dict[str, pd.DataFrame] = field(default_factory=dict)
    seconds: float = 0.0

    def merge(self, other: PartStats) -> None:
        for name in (
            "rows_a",
            "rows_b",
            "pairs",
            "matched",
            "matched_equal",
            "only_a",
            "only_b",
            "duplicates_a",
            "duplicates_b",
            "flagged",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.field_mismatches = (
            other.field_mismatches
            if self.field_mismatches.size == 0
            else (self.field_mismatches + other.field_mismatches)
        )
        if self.field_deltas.size == 0:
            self.field_deltas = other.field_deltas.copy()
        elif other.field_deltas.size:
            maximum = np.maximum(self.field_deltas[:, 2], other.field_deltas[:, 2])
            self.field_deltas = self.field_deltas + other.field_deltas
            self.field_deltas[:, 2] = maximum
        self.classes = self.classes + other.classes
        self.scores = self.scores + other.scores
        for name, table in other.dimensions.items():
            mine = self.dimensions.get(name)
            self.dimensions[name] = table if mine is None else mine.add(table, fill_value=0).astype("int64")
        self.seconds += other.seconds


#: upper bounds of the relative difference buckets of number fields (the last is open)
DELTA_BUCKETS = (0.001, 0.01, 0.1, 1.0)
#: and of the difference in seconds of date and timestamp fields: a minute, an hour, a day, a week
TIME_BUCKETS = (60.0, 3_600.0, 86_400.0, 604_800.0)


def _deltas(joined: Joined, spec: MappingSpec) -> npt.NDArray[np.float64]:
    """By how much the mismatched values of each number, date and timestamp field differ."""
    out = np.zeros((len(spec.fields), 3 + len(DELTA_BUCKETS) + 1))
    for j, f in enumerate(spec.fields):
        rows = joined.mismatch[:, j]
        if f.type == "text" or not rows.any():
            continue
        a = joined.frame[f"f{j}_a"].to_numpy(dtype=np.float64)[rows]
        b = joined.frame[f"f{j}_b"].to_numpy(dtype=np.float64)[rows]
        both = ~(np.isnan(a) | np.isnan(b))  # one side empty: a mismatch with no size
        d = np.abs(a[both] - b[both])
        if f.type == "number":
            scale = np.fmin(np.abs(a[both]), np.abs(b[both]))
            size = np.divide(d, scale, out=np.zeros_like(d), where=scale > 0)
            edges = DELTA_BUCKETS
        else:
            size, edges = d, TIME_BUCKETS
        out[j, 0] = d.size
        out[j, 1] = d.sum()
        out[j, 2] = d.max(initial=0.0)
        out[j, 3:] = np.bincount(np.searchsorted(edges, size, side="left"), minlength=len(edges) + 1)
    return out


def _counts(
    joined: Joined,
    dims: dict[str, Factorized],
    spec: MappingSpec,
    flagged: B,
    classes: npt.NDArray[np.int32],
    scores: npt.NDArray[np.float32],
) -> PartStats:
    present, frame = joined.present, joined.frame
    both = present[:, 0] & present[:, 1]
    occ = frame[OCC].to_numpy()
    stats = PartStats(
        rows_a=int(present[:, 0].sum()),
        rows_b=int(present[:, 1].sum()),
        pairs=len(frame),
        matched=int(both.sum()),
        matched_equal=int((both & ~joined.mismatch.any(axis=1)).sum()),
        only_a=int((present[:, 0] & ~present[:, 1]).sum()),
        only_b=int((present[:, 1] & ~present[:, 0]).sum()),
        duplicates_a=int((present[:, 0] & (occ > 0)).sum()),
        duplicates_b=int((present[:, 1] & (occ > 0)).sum()),
        flagged=int(flagged.sum()),
        field_mismatches=joined.mismatch.sum(axis=0).astype(np.int64),
        field_deltas=_deltas(joined, spec),
    )
    bins = np.minimum((np.asarray(scores, dtype=np.float64) * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    for c, name in enumerate(CLASS_ORDER):
        code = next(k for k, v in CLASS_NAMES.items() if v == name)
        mine = classes == code
        stats.classes[c] = (int(mine.sum()), int((mine & flagged).sum()))
        stats.scores[c] = np.bincount(bins[mine], minlength=SCORE_BINS)
    differing = ~both | joined.mismatch.any(axis=1)
    counted = {"pairs": np.ones(len(frame)), "flagged": flagged, "differing": differing, "missing": ~both}
    for j, f in enumerate(spec.fields):
        counted[f"mismatch:{f.name}"] = joined.mismatch[:, j]
    for name, (codes, uniques) in dims.items():
        table = {
            c: np.bincount(codes, weights=v, minlength=len(uniques)).astype(np.int64)
            for c, v in counted.items()
        }
        stats.dimensions[name] = pd.DataFrame(
            table, index=pd.Index(np.asarray(uniques, dtype=object), name=name)
        )
    return stats


# -- the flagged pairs ---------------------------------------------------------------------------


def _list_column(
    mask: B, columns: Sequence[tuple[str, npt.NDArray[np.object_] | npt.NDArray[np.float64]]]
) -> object:
    """A Parquet list<struct> column: per row, the entries where `mask` holds ([rows, k] each)."""
    import pyarrow as pa

    rows, cols = np.nonzero(mask)
    offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    children = [pa.array(values[rows, cols]) for _, values in columns]
    struct = pa.StructArray.from_arrays(children, names=[name for name, _ in columns])
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), struct)


def _value_text(frame: pd.DataFrame, j: int, f: Field, side: int) -> npt.NDArray[np.object_]:
    shown = _display(frame[_suffixed(f"f{j}", side)], f.type)
    text: npt.NDArray[np.object_] = shown.fillna("").to_numpy(dtype=object)
    return text


def score_partition(
    scratch: str, index: int, spec: MappingSpec, model_ref: PairModelRef, out_dir: str
) -> PartStats:
    """Join, featurise, score one partition (its rows from `scratch`); write its flagged pairs; return
    its counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.batch.buckets import read_bucket

    started = time.perf_counter()
    model = model_ref.load()
    joined = join_pairs(read_bucket(scratch, index, spec), spec)
    cols = pair_columns(joined, spec)
    features = pair_features(cols, model.stats)
    scores = model.predict(features.matrix) if len(cols) else np.zeros(0, dtype=np.float32)
    flagged = scores >= model.threshold
    classes = break_classes(features.differs)
    dims = dimension_values(joined, spec)
    stats = _counts(joined, dims, spec, flagged, classes, scores)

    # the believed side and the reasons, row by row as ScorePairs computes them, for the flagged pairs
    rows = np.flatnonzero(flagged)
    matrix = features.matrix[rows]
    side, confidence = likely_right(
        matrix, features.differs[rows], features.quantities[rows], model.stats.log_amount_std
    )
    idx, strength = top_reasons(matrix, model.stats, REASONS_PER_BREAK)
    frame = joined.frame.iloc[rows].reset_index(drop=True)
    columns: dict[str, object] = {}
    for k, part_ in zip(key_columns(spec), spec.key, strict=True):
        columns[part_.name] = pa.array(frame[k].astype("str").tolist(), type=pa.string())
    columns["key"] = pa.array([cols.keys[i] for i in rows.tolist()], type=pa.string())
    columns["occurrence"] = pa.array(frame[OCC].to_numpy(dtype=np.int64))
    columns["in_a"] = pa.array(joined.present[rows, 0])
    columns["in_b"] = pa.array(joined.present[rows, 1])
    columns["break_class"] = pa.array([CLASS_NAMES[int(c)] for c in classes[rows].tolist()], type=pa.string())
    columns["break_score"] = pa.array(scores[rows], type=pa.float32())
    columns["likely_right"] = pa.array([SIDE_NAMES[int(s)] for s in side.tolist()], type=pa.string())
    source_names = np.array(["", spec.a.name, spec.b.name], dtype=object)
    columns["likely_right_source"] = pa.array(source_names[side].tolist(), type=pa.string())
    columns["confidence"] = pa.array(confidence, type=pa.float64())
    # the differing fields of the mapping, and for each the believed side's value
    mismatch = joined.mismatch[rows]
    missing = ~(joined.present[rows, 0] & joined.present[rows, 1])
    names = np.array([f.name for f in spec.fields] + ["record"], dtype=object)
    differ = np.concatenate([mismatch, missing[:, None]], axis=1)
    name_grid = np.broadcast_to(names, differ.shape)
    columns["differences"] = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(differ.sum(axis=1))]).astype(np.int32)),
        pa.array(name_grid[differ].tolist(), type=pa.string()),
    )
    values = np.empty(differ.shape, dtype=object)
    for j, f in enumerate(spec.fields):
        a_text, b_text = _value_text(frame, j, f, 0), _value_text(frame, j, f, 1)
        values[:, j] = np.where(side == SIDE_A, a_text, b_text)
    values[:, -1] = "present"
    corrects = differ & (side != 0)[:, None]
    columns["corrections"] = _list_column(
        corrects,
        [
            ("field", np.asarray(name_grid, dtype=object)),
            ("value", values),
            ("source", np.broadcast_to(source_names[side][:, None], differ.shape)),
        ],
    )
    codes = np.array([REASON_CODES[f] for f in PAIR_FEATURES], dtype=object)
    reason_values = np.take_along_axis(matrix.astype(np.float64), idx, axis=1)
    columns["reasons"] = _list_column(
        strength >= REASON_MIN_STRENGTH,
        [("code", codes[idx]), ("value", reason_values), ("strength", strength)],
    )
    for name, (dim_codes, uniques) in dims.items():
        columns[name] = pa.array(uniques[dim_codes[rows]].tolist(), type=pa.string())
    table = pa.table(columns)
    path = Path(out_dir) / f"part-{index:05d}.parquet"
    pq.write_table(table, path, compression="zstd")
    stats.seconds = time.perf_counter() - started
    return stats
