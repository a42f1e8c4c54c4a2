"""Trades as two row-major numeric matrices: what the compiled rules and features read.

`TradeRows` is the one input of `engine.features.kernels` (validation rules and
the feature catalog), whichever way the trades arrived:

- from a table or the synthetic generator (`TradeColumns`, training and the
  CLI): `rows_from_columns` here, with reference/vocabulary look-ups through dicts;
- from the wire (`engine.scoring.wire`): a compiled protobuf decoder fills the
  same matrices straight from the request bytes, with no Python object per trade.

`x` holds the numbers (float64, NaN = missing; dates as days since 1970-01-01),
`k` the integers: enum numbers, the trade's row in each reference table and its
vocabulary codes (-1 = unknown), and what validation needs to know about the
text fields (length in characters, whether the trade id repeats an earlier one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import repeat

import numpy as np
import numpy.typing as npt

from engine.features.columns import Str, TradeColumns

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# -- x: float64 columns ---------------------------------------------------------------
X_QUANTITY = 0
X_PRICE = 1
X_CYCLE_DAYS = 2  # settlement_cycle_days (NaN: not given)
X_INVENTORY = 3
X_ON_LOAN = 4  # 1 / 0 / NaN
X_SSI = 5  # 1 / 0 / NaN
X_CP_FAIL_RATE = 6  # as given in the request (NaN: not given)
X_ADV = 7  # as given in the request (NaN: not given)
X_TRADE_DAY = 8  # days since 1970-01-01 (NaN: not given)
X_SETTLE_DAY = 9
NX = 10

# -- k: int64 columns ------------------------------------------------------------------
K_ASSET = 0  # AssetClass number
K_SIDE = 1  # Side number
K_CP_ROW = 2  # row in the counterparties table, -1: unknown
K_INSTRUMENT_ROW = 3  # row in the instruments table, -1: unknown
K_FX_ROW = 4  # row in the fx table, -1: unknown
K_VENUE_CODE = 5  # code in the venue vocabulary, -1: not in it (OTHER)
K_CURRENCY_CODE = 6  # code in the currency vocabulary, -1: not in it (OTHER)
K_LEN_TRADE_ID = 7  # lengths in characters (code points)
K_LEN_ACCOUNT = 8
K_LEN_CP = 9
K_LEN_INSTRUMENT = 10
K_LEN_CURRENCY = 11
K_LEN_VENUE = 12
K_DUP_TRADE_ID = 13  # 1 when the trade id repeats an earlier one in the same request
NK = 14

# -- where each field of a tradescore.v1.Trade lands: one map for every reader of trades (the
# compiled wire decoder builds its tables from these and the descriptor; rows_from_columns
# reads TradeColumns by them). Every Trade field is in X_FIELDS, K_FIELDS or LENGTH_FIELDS.
#: numbers, flags (1 / 0 / NaN) and dates (days) -> x column
X_FIELDS: dict[str, int] = {
    "quantity": X_QUANTITY,
    "price": X_PRICE,
    "settlement_cycle_days": X_CYCLE_DAYS,
    "inventory_ratio": X_INVENTORY,
    "on_loan_recall_pending": X_ON_LOAN,
    "ssi_matched": X_SSI,
    "counterparty_fail_rate": X_CP_FAIL_RATE,
    "instrument_adv": X_ADV,
    "trade_date": X_TRADE_DAY,
    "settlement_date": X_SETTLE_DAY,
}
#: enums -> k column of their number
K_FIELDS: dict[str, int] = {"asset_class": K_ASSET, "side": K_SIDE}
#: text fields -> k column of their length in characters
LENGTH_FIELDS: dict[str, int] = {
    "trade_id": K_LEN_TRADE_ID,
    "account_id": K_LEN_ACCOUNT,
    "counterparty_id": K_LEN_CP,
    "instrument_id": K_LEN_INSTRUMENT,
    "currency": K_LEN_CURRENCY,
    "settlement_venue": K_LEN_VENUE,
}
#: k column of a look-up (reference row, vocabulary code) -> the text field it resolves
LOOKUP_FIELDS: dict[int, str] = {
    K_CP_ROW: "counterparty_id",
    K_INSTRUMENT_ROW: "instrument_id",
    K_FX_ROW: "currency",
    K_VENUE_CODE: "settlement_venue",
    K_CURRENCY_CODE: "currency",
}
#: the one derived column: K_DUP_TRADE_ID (whether the trade id repeats an earlier one)
_DUP_OF = "trade_id"


def _check_fields() -> None:
    """Every TradeColumns field (one per Trade field) lands somewhere; ImportError names the drift."""
    mapped = X_FIELDS.keys() | K_FIELDS.keys() | LENGTH_FIELDS.keys()
    names = {f.name for f in fields(TradeColumns)}
    unknown = (mapped | set(LOOKUP_FIELDS.values())) - names
    if names - mapped or unknown:
        raise ImportError(
            "engine.features.rows: Trade fields mapped nowhere "
            f"{sorted(names - mapped)}, mapped names that are no Trade field {sorted(unknown)}"
        )


_check_fields()


@dataclass(frozen=True, slots=True)
class TradeRows:
    x: F64  # [n, NX]
    k: I64  # [n, NK]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @staticmethod
    def empty(n: int) -> TradeRows:
        return TradeRows(np.empty((n, NX), dtype=np.float64), np.empty((n, NK), dtype=np.int64))


def _lengths(a: Str) -> I64:
    if a.dtype.kind == "O":
        return np.fromiter(map(len, a.tolist()), dtype=np.int64, count=a.shape[0])
    return np.strings.str_len(a).astype(np.int64)


def _repeats(ids: Str) -> npt.NDArray[np.bool_]:
    """True for every id equal to an earlier one (the first occurrence stays False)."""
    n = ids.shape[0]
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup_sorted = np.zeros(n, dtype=bool)
    dup_sorted[1:] = s[1:] == s[:-1]
    out[order] = dup_sorted
    return out


def _days(d: npt.NDArray[np.datetime64]) -> F64:
    days = d.astype("datetime64[D]")
    return np.where(np.isnat(days), np.nan, days.astype(np.int64).astype(np.float64))


def lookup(index: Mapping[str, int], values: Str) -> I64:
    """Position of each value in `index` (-1 where absent): one C-level `map(dict.get)`."""
    n = values.shape[0]
    return np.fromiter(map(index.get, values.tolist(), repeat(-1)), dtype=np.int64, count=n)


def rows_from_columns(cols: TradeColumns, lookups: Mapping[int, tuple[Mapping[str, int], Str]]) -> TradeRows:
    """`TradeRows` for table trades; `lookups` maps a K_* column to (index, trade column) to resolve.

    Columns not in `lookups` among the resolved ones (K_CP_ROW .. K_CURRENCY_CODE)
    are -1 (unknown). Validation needs none; features need a plan's look-ups
    (`engine.features.compute.FeaturePlan.rows`).
    """
    n = len(cols)
    rows = TradeRows.empty(n)
    x, k = rows.x, rows.k
    for name, column in X_FIELDS.items():
        value = getattr(cols, name)
        x[:, column] = _days(value) if value.dtype.kind == "M" else value
    for name, column in K_FIELDS.items():
        k[:, column] = getattr(cols, name)
    k[:, K_CP_ROW : K_CURRENCY_CODE + 1] = -1
    for column, (index, values) in lookups.items():
        k[:, column] = lookup(index, values)
    for name, column in LENGTH_FIELDS.items():
        k[:, column] = _lengths(getattr(cols, name))
    k[:, K_DUP_TRADE_ID] = _repeats(getattr(cols, _DUP_OF))
    return rows
