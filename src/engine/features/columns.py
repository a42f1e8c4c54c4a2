"""Raw trades as columns: the one shape that serving, training and the CLI share.

A `TradeColumns` holds one numpy array per field of `tradescore.v1.Trade`.
Missing optional signals are NaN (never 0); enums are their proto numbers.
It is built from protobuf messages (`engine.scoring.messages`), from a table
(CSV / Parquet / the synthetic generator, `from_table` here), and consumed by
`engine.features.validate` and `engine.features.compute`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import InvalidInput

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
#: text columns: fixed-width unicode (tables, training) or object arrays of str (the
#: request decoder: ~5x cheaper to build from protobuf strings, and free to turn back
#: into the lists that dict look-ups take)
Str = npt.NDArray[Any]
Day = npt.NDArray[np.datetime64]

#: proto enum number -> short name ("EQUITY"), and the reverse; enum names in
#: tables may be given short ("EQUITY") or in full ("ASSET_CLASS_EQUITY").
ASSET_CLASSES: dict[int, str] = {
    v.number: v.name.removeprefix("ASSET_CLASS_") for v in pb.AssetClass.DESCRIPTOR.values if v.number != 0
}
SIDES: dict[int, str] = {
    v.number: v.name.removeprefix("SIDE_") for v in pb.Side.DESCRIPTOR.values if v.number != 0
}
RISK_BANDS: dict[int, str] = {
    v.number: v.name.removeprefix("RISK_BAND_") for v in pb.RiskBand.DESCRIPTOR.values if v.number != 0
}

#: the columns a table must have to be read as trades (optional signals may be absent)
REQUIRED_TABLE_COLUMNS = (
    "trade_id",
    "account_id",
    "counterparty_id",
    "instrument_id",
    "asset_class",
    "side",
    "quantity",
    "price",
    "currency",
    "trade_date",
    "settlement_venue",
)
#: columns always read as text, whatever they look like (a CUSIP keeps its leading zero)
TEXT_COLUMNS = (
    "trade_id",
    "account_id",
    "counterparty_id",
    "instrument_id",
    "asset_class",
    "side",
    "currency",
    "settlement_venue",
)
BOOL_COLUMNS = tuple(f.name for f in pb.Trade.DESCRIPTOR.fields if f.type == f.TYPE_BOOL)
DATE_COLUMNS = ("trade_date", "settlement_date")


@dataclass(frozen=True, slots=True)
class TradeColumns:
    """Trades as columns; every array has the same length."""

    trade_id: Str
    account_id: Str
    counterparty_id: Str
    instrument_id: Str
    asset_class: I32
    side: I32
    quantity: F64
    price: F64
    currency: Str
    trade_date: Day  # datetime64[D]; NaT when unparseable (validation refuses it)
    settlement_date: Day  # datetime64[D]; NaT when not given
    settlement_cycle_days: F64  # NaN when not given
    settlement_venue: Str
    inventory_ratio: F64
    on_loan_recall_pending: F64  # 1.0 / 0.0 / NaN
    ssi_matched: F64  # 1.0 / 0.0 / NaN
    counterparty_fail_rate: F64
    instrument_adv: F64

    def __len__(self) -> int:
        return int(self.quantity.shape[0])

    def take(self, index: npt.NDArray[np.intp] | slice) -> TradeColumns:
        """The rows at `index`, as a new TradeColumns."""
        return TradeColumns(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: Sequence[TradeColumns]) -> TradeColumns:
        return TradeColumns(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(TradeColumns)}
        )

    def to_table(self) -> dict[str, np.ndarray]:
        """Columns as a plain mapping (enums by short name, dates as ISO strings)."""
        out: dict[str, np.ndarray] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "asset_class":
                value = _names(value, ASSET_CLASSES)
            elif f.name == "side":
                value = _names(value, SIDES)
            elif value.dtype.kind == "M":
                value = np.datetime_as_string(value, unit="D")
                value = np.where(value == "NaT", "", value)
            out[f.name] = value
        return out


def _check_columns() -> None:
    """TradeColumns has one column per Trade field, in field order; ImportError names the drift."""
    want = [f.name for f in sorted(pb.Trade.DESCRIPTOR.fields, key=lambda f: f.number)]
    have = [f.name for f in fields(TradeColumns)]
    if have != want:
        raise ImportError(
            f"engine.features.columns.TradeColumns has columns {have}; tradescore.v1.Trade has fields {want}"
        )


_check_columns()


def _names(codes: I32, table: dict[int, str]) -> Str:
    lookup = np.array([""] + [table.get(i, "") for i in range(1, max(table) + 1)])
    safe = np.where((codes > 0) & (codes <= max(table)), codes, 0)
    return lookup[safe]


def enum_codes(values: np.ndarray, table: dict[int, str], prefix: str) -> I32:
    """Map enum names (short or prefixed) or numbers to proto numbers; unknown -> -1.

    Unknown names are kept as -1 so that validation reports them with their
    row index instead of failing here.
    """
    if values.dtype.kind in "iu":
        return values.astype(np.int32)
    if values.dtype.kind == "f":
        out = np.where(np.isfinite(values), values, -1)
        return out.astype(np.int32)
    if values.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    # a handful of distinct spellings: normalise those, not every row's copy of them
    distinct, inverse = np.unique(values.astype(np.str_), return_inverse=True)
    text = np.char.upper(np.char.strip(distinct))
    text = np.char.replace(text, prefix, "") if prefix else text
    codes = np.full(text.shape[0], -1, dtype=np.int32)
    for number, name in table.items():
        codes[text == name] = number
    mapped: I32 = codes[inverse.reshape(-1)]
    return mapped


def parse_dates(values: np.ndarray, field: str, rows: Sequence[int] | None = None) -> Day:
    """ISO "YYYY-MM-DD" strings (or datetimes) -> datetime64[D]; empty -> NaT.

    A non-empty value that is not a calendar date raises InvalidInput naming
    `field` and the first bad row (`rows[i]` is the row of `values[i]` when the
    values are a subset): a malformed date is never read as "not given".
    """
    if values.dtype.kind == "M":
        return values.astype("datetime64[D]")
    text = values.astype(np.str_)
    given = np.strings.str_len(text) > 0
    out = np.full(text.shape[0], np.datetime64("NaT"), dtype="datetime64[D]")
    bad = given & (np.strings.str_len(text) != 10)
    ok = given & ~bad
    try:
        out[ok] = text[ok].astype("datetime64[D]")
    except ValueError:
        for i in np.flatnonzero(ok):
            try:
                out[i] = np.datetime64(str(text[i]), "D")
            except ValueError:
                bad[i] = True
    # numpy also reads text that is not YYYY-MM-DD as a date ("2024-04" + NUL + "05" is April 1st):
    # only the date's own spelling counts
    bad |= given & ~bad & (out.astype("U10") != text)
    if bad.any():
        idx = np.flatnonzero(bad)
        where = [rows[int(i)] for i in idx] if rows is not None else idx.tolist()
        first = int(np.argmin(where))
        raise InvalidInput(
            field,
            f"must be a calendar date YYYY-MM-DD, got {str(text[idx[first]])[:40]!r}",
            where[first],
            len(where),
        )
    return out


def _float_column(table: Mapping[str, Any], name: str, n: int) -> F64:
    if name not in table:
        return np.full(n, np.nan)
    raw = np.asarray(table[name])
    if raw.dtype.kind == "b":
        return raw.astype(np.float64)
    if raw.dtype.kind in "OUS":
        text = np.char.lower(np.char.strip(raw.astype(np.str_)))
        out = np.full(n, np.nan)
        out[np.isin(text, ("true", "1", "yes", "y", "t"))] = 1.0
        out[np.isin(text, ("false", "0", "no", "n", "f"))] = 0.0
        numeric = ~np.isin(text, ("", "nan", "none", "null", "true", "false", "yes", "no"))
        numeric &= ~np.isin(text, ("y", "n", "t", "f"))
        if numeric.any():
            try:
                out[numeric] = text[numeric].astype(np.float64)
            except ValueError:
                _raise_not_numbers(text, numeric, name)
        return out
    return raw.astype(np.float64)


def _raise_not_numbers(text: Str, candidates: npt.NDArray[np.bool_], field: str) -> None:
    """Raise InvalidInput for the first value in `text[candidates]` that is not a number.

    Only runs once a vectorised parse has failed, so its per-value loop costs
    nothing on good input.
    """
    bad = np.zeros(text.shape[0], dtype=bool)
    for i in np.flatnonzero(candidates):
        try:
            float(text[i])
        except ValueError:
            bad[i] = True
    idx = np.flatnonzero(bad)
    raise InvalidInput(field, f"must be a number, got {str(text[idx[0]])[:40]!r}", int(idx[0]), len(idx))


def from_table(table: Mapping[str, Any]) -> TradeColumns:
    """Build columns from a mapping of column name -> array-like (a CSV/Parquet table).

    Raises KeyError naming the missing column when a required one is absent.
    Enum columns take names ("EQUITY" or "ASSET_CLASS_EQUITY") or numbers; dates
    take "YYYY-MM-DD"; boolean signals take true/false/1/0 or empty for unknown.
    """
    missing = [c for c in REQUIRED_TABLE_COLUMNS if c not in table]
    if missing:
        raise KeyError(f"missing required column(s): {', '.join(missing)}")
    n = len(np.asarray(table["trade_id"]))
    has_date = "settlement_date" in table
    has_cycle = "settlement_cycle_days" in table
    if not (has_date or has_cycle):
        raise KeyError("missing column: settlement_date or settlement_cycle_days")

    def text(name: str) -> Str:
        arr = np.asarray(table[name])
        if arr.dtype.kind == "O":
            arr = np.array(["" if v is None else str(v) for v in arr], dtype=np.str_)
        return arr.astype(np.str_)

    return TradeColumns(
        trade_id=text("trade_id"),
        account_id=text("account_id"),
        counterparty_id=text("counterparty_id"),
        instrument_id=text("instrument_id"),
        asset_class=enum_codes(np.asarray(table["asset_class"]), ASSET_CLASSES, "ASSET_CLASS_"),
        side=enum_codes(np.asarray(table["side"]), SIDES, "SIDE_"),
        quantity=_float_column(table, "quantity", n),
        price=_float_column(table, "price", n),
        currency=text("currency"),
        trade_date=parse_dates(np.asarray(table["trade_date"]), "trade_date"),
        settlement_date=(
            parse_dates(np.asarray(table["settlement_date"]), "settlement_date")
            if has_date
            else np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
        ),
        settlement_cycle_days=_float_column(table, "settlement_cycle_days", n),
        settlement_venue=text("settlement_venue"),
        inventory_ratio=_float_column(table, "inventory_ratio", n),
        on_loan_recall_pending=_float_column(table, "on_loan_recall_pending", n),
        ssi_matched=_float_column(table, "ssi_matched", n),
        counterparty_fail_rate=_float_column(table, "counterparty_fail_rate", n),
        instrument_adv=_float_column(table, "instrument_adv", n),
    )
