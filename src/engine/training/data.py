"""Labelled trade files in and out: read a user's CSV / Parquet / JSON lines, write synthetic trades.

A training file has the columns of `TradeColumns.to_table()` (the required ones
of `engine.features.columns.REQUIRED_TABLE_COLUMNS`, any optional signals, and
`settlement_date` and/or `settlement_cycle_days`) plus a label column, `failed`
by default: 1/0, true/false, yes/no.

Reading goes through the engine's one table reader (`engine.trade_files.read_table`)
and one column builder (`engine.features.columns.from_table`), then applies the
serving path's validation rules (`engine.features.validate`). A bad row is
refused with its index and the file line, never silently dropped; with
`drop_invalid=True` the invalid rows are dropped and counted per reason.

Reference tables for a user's own data (`tables_from_history`) are computed
from an earlier slice of the data than the rows trained on, so that the
counterparty and instrument fail rates the model sees never include the
outcome of the trade being scored (no target leakage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.errors import InvalidInput
from engine.features.columns import TradeColumns, from_table
from engine.features.validate import problems
from engine.models.reference import KeyedTable, ReferenceTables
from engine.training.errors import DataError

F64 = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int8]
Printer = Callable[[str], None]

LABEL_COLUMN = "failed"
SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson", ".json")
_TRUE = ("1", "1.0", "true", "t", "yes", "y")
_FALSE = ("0", "0.0", "false", "f", "no", "n")


@dataclass(frozen=True, slots=True)
class LabelledTrades:
    """Trades read from a file with their labels (None when the file has no label column)."""

    trades: TradeColumns
    labels: Labels | None
    source: str
    #: rows dropped by `drop_invalid`, by "field: reason"
    dropped: dict[str, int] = field(default_factory=dict)


def _where(path: Path, index: int | None, csv_lines: bool) -> str:
    if index is None:
        return str(path)
    line = f", line {index + 2}" if csv_lines else ""
    return f"{path}: row {index}{line}"


def parse_labels(values: npt.ArrayLike, column: str = LABEL_COLUMN) -> Labels:
    """0/1 labels from bools, 0/1 numbers or true/false/yes/no text; anything else raises DataError."""
    raw = np.asarray(values)
    if raw.dtype.kind == "b":
        return raw.astype(np.int8)
    if raw.dtype.kind in "iuf":
        ok = np.isin(raw, (0, 1))
        out = np.where(ok, raw, 0).astype(np.int8)
    else:
        text = np.char.lower(np.char.strip(raw.astype(np.str_)))
        is_true = np.isin(text, _TRUE)
        ok = is_true | np.isin(text, _FALSE)
        out = is_true.astype(np.int8)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise DataError(
            f"row {bad[0]}: {column} must be 0/1 or true/false, got {str(raw[bad[0]])[:40]!r}"
            + (f" (and {bad.size - 1} more row(s))" if bad.size > 1 else "")
        )
    return out


def read_trades(
    path: Path | str,
    *,
    label_column: str = LABEL_COLUMN,
    require_labels: bool = True,
    drop_invalid: bool = False,
    log: Printer | None = None,
) -> LabelledTrades:
    """Read, parse and validate a trade file; raises DataError naming the column and row."""
    from engine.trade_files import TableError, read_table

    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise DataError(f"{p}: unknown file type {p.suffix!r} (use {', '.join(SUFFIXES)})")
    csv_lines = p.suffix.lower() == ".csv"
    try:
        table = read_table(p)
    except TableError as exc:
        raise DataError(str(exc)) from exc
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on broken files
        raise DataError(f"{p}: cannot read: {exc}") from exc
    try:
        trades = from_table(table)
    except KeyError as exc:
        raise DataError(f"{p}: {exc.args[0]}") from exc
    except InvalidInput as exc:
        raise DataError(f"{_where(p, exc.index, csv_lines)}: {_what(exc)}") from exc
    labels: Labels | None = None
    if label_column in table:
        try:
            labels = parse_labels(table[label_column], label_column)
        except DataError as exc:
            raise DataError(f"{p}: {exc}") from exc
    elif require_labels:
        raise DataError(f"{p}: missing label column {label_column!r} (1 = failed to settle, 0 = settled)")
    if len(trades) == 0:
        raise DataError(f"{p}: no rows")

    bad, found = problems(trades)
    dropped: dict[str, int] = {}
    if found:
        if not drop_invalid:
            first = found[0]
            hint = f"; {int(bad.sum())} invalid row(s) in all" + (
                f", breaking {len(found)} rules" if len(found) > 1 else ""
            )
            raise DataError(
                f"{_where(p, first.index, csv_lines)}: {_what(first)}{hint} "
                "(fix them, or pass --drop-invalid to drop and count them)"
            )
        dropped = {f"{e.field}: {e.reason}": e.count for e in found}
        keep = np.flatnonzero(~bad)
        if keep.size == 0:
            raise DataError(f"{p}: every row is invalid: {dropped}")
        trades = trades.take(keep)
        labels = labels[keep] if labels is not None else None
        if log is not None:
            log(f"dropped {int(bad.sum())} invalid row(s) of {bad.size}:")
            for reason, count in dropped.items():
                log(f"  {count:>9,}  {reason}")
    return LabelledTrades(trades, labels, str(p.resolve()), dropped)


def _what(exc: InvalidInput) -> str:
    more = f" (and {exc.count - 1} more row(s) with this problem)" if exc.count > 1 else ""
    return f"{exc.field}: {exc.reason}{more}"


# --------------------------------------------------------------------------- writing


def trades_table(trades: TradeColumns, labels: Labels | None) -> dict[str, np.ndarray]:
    """The columns of `TradeColumns.to_table()` plus `failed` (when labels are given)."""
    out = trades.to_table()
    if labels is not None:
        out[LABEL_COLUMN] = np.asarray(labels, dtype=np.int8)
    return out


def write_trades(path: Path | str, trades: TradeColumns, labels: Labels | None = None) -> Path:
    """Write trades (+ `failed`) as .csv, .parquet or .jsonl, by the file suffix.

    Missing values are empty CSV cells / Parquet nulls / JSON nulls, booleans
    are true/false, dates ISO "YYYY-MM-DD", enums by short name ("EQUITY").
    """
    from engine.trade_files import TableError, write_table

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_table(trades_table(trades, labels), p)
    except TableError as exc:
        raise DataError(str(exc)) from exc
    return p


# --------------------------------------------------------------------------- reference tables


def _group_median(groups: npt.NDArray[np.intp], values: F64, n_groups: int) -> F64:
    """Median of `values` per group (NaN values ignored; NaN for empty groups), vectorised."""
    ok = np.isfinite(values)
    g, v = groups[ok], values[ok]
    out = np.full(n_groups, np.nan)
    if g.size == 0:
        return out
    order = np.lexsort((v, g))
    g, v = g[order], v[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = 0.5 * (v[lo] + v[hi])
    return out


def tables_from_history(trades: TradeColumns, labels: Labels, fx: KeyedTable) -> ReferenceTables:
    """Reference tables from a labelled history (which must not overlap the rows trained on).

    counterparties: fail_rate = fails / trades and trades, per counterparty_id;
    instruments: adv = median `instrument_adv` the history's trades carried (NaN
    when none did), fail_rate = fails / trades; fx: as given.
    """
    y = labels.astype(np.float64)
    cp_ids, cp_idx = np.unique(trades.counterparty_id, return_inverse=True)
    cp_n = np.bincount(cp_idx, minlength=cp_ids.size).astype(np.float64)
    cp_f = np.bincount(cp_idx, weights=y, minlength=cp_ids.size)
    in_ids, in_idx = np.unique(trades.instrument_id, return_inverse=True)
    in_n = np.bincount(in_idx, minlength=in_ids.size).astype(np.float64)
    in_f = np.bincount(in_idx, weights=y, minlength=in_ids.size)
    adv = _group_median(in_idx, trades.instrument_adv, in_ids.size)
    return ReferenceTables(
        counterparties=KeyedTable.build(cp_ids, {"fail_rate": cp_f / cp_n, "trades": cp_n}),
        instruments=KeyedTable.build(in_ids, {"adv": adv, "fail_rate": in_f / in_n}),
        fx=fx,
    )


def split_history(trades: TradeColumns, fraction: float) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows of the earliest trade dates (about `fraction` of all rows) and the rest.

    Whole trade dates go to one side, so no day's outcomes leak into the
    tables used to score that same day.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"history fraction must be inside (0, 1), got {fraction}")
    days = trades.trade_date.astype(np.int64)
    cutoff = np.sort(days)[min(int(fraction * days.size), days.size - 1)]
    history = np.flatnonzero(days < cutoff)
    rest = np.flatnonzero(days >= cutoff)
    if history.size == 0 or rest.size == 0:
        raise DataError(
            "cannot split the data by trade date into a history for the reference tables and rows to "
            "train on (too few distinct trade dates); pass --reference-from BUNDLE_DIR instead"
        )
    return history, rest
