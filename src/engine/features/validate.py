"""Validation of raw trades: the reason a trade is refused, by field and index.

The rules themselves are compiled (`engine.features.kernels.check_rows`, one
pass over the rows); this module names them. `validate` raises `InvalidInput`
for the lowest trade index that breaks any rule (ties go to the rule listed
first), naming the field, the reason, and how many trades share that problem.
Valid input passes through untouched.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.errors import InvalidInput
from engine.features import kernels as kn
from engine.features.columns import ASSET_CLASSES, SIDES, TradeColumns
from engine.features.rows import TradeRows, rows_from_columns

Mask = npt.NDArray[np.bool_]

MAX_CYCLE_DAYS = 30
MAX_ID_LENGTH = 128

#: rule number (kernels.R_*) -> (field, reason)
RULES: dict[int, tuple[str, str]] = {
    kn.R_TRADE_ID_EMPTY: ("trade_id", "is required"),
    kn.R_TRADE_ID_LONG: ("trade_id", f"is longer than {MAX_ID_LENGTH} characters"),
    kn.R_TRADE_ID_REPEATED: ("trade_id", "repeats an earlier trade_id in this request"),
    kn.R_ACCOUNT_EMPTY: ("account_id", "is required"),
    kn.R_CP_EMPTY: ("counterparty_id", "is required"),
    kn.R_CP_LONG: ("counterparty_id", f"is longer than {MAX_ID_LENGTH} characters"),
    kn.R_INSTRUMENT_EMPTY: ("instrument_id", "is required"),
    kn.R_INSTRUMENT_LONG: ("instrument_id", f"is longer than {MAX_ID_LENGTH} characters"),
    kn.R_ASSET_CLASS: ("asset_class", "is unspecified or not a known AssetClass value"),
    kn.R_SIDE: ("side", "is unspecified or not a known Side value"),
    kn.R_QUANTITY: ("quantity", f"must be a number > 0 and at most {kn.MAX_QUANTITY:.0e}"),
    kn.R_PRICE: ("price", f"must be a number > 0 and at most {kn.MAX_PRICE:.0e}"),
    kn.R_CURRENCY_EMPTY: ("currency", "is required"),
    kn.R_VENUE_EMPTY: ("settlement_venue", "is required"),
    kn.R_TRADE_DATE: ("trade_date", "is required (YYYY-MM-DD)"),
    kn.R_SETTLE_BEFORE_TRADE: ("settlement_date", "is before trade_date"),
    kn.R_CYCLE_RANGE: ("settlement_cycle_days", f"must be 0..{MAX_CYCLE_DAYS} business days"),
    kn.R_NO_SETTLEMENT: ("settlement_date", "give settlement_date or settlement_cycle_days"),
    kn.R_INVENTORY: ("inventory_ratio", f"must be a number in [0, {kn.MAX_INVENTORY_RATIO:.0e}] when set"),
    kn.R_ON_LOAN: ("on_loan_recall_pending", "must be true/false (1/0) when set"),
    kn.R_SSI: ("ssi_matched", "must be true/false (1/0) when set"),
    kn.R_CP_FAIL_RATE: ("counterparty_fail_rate", "must be within [0, 1] when set"),
    kn.R_ADV: ("instrument_adv", f"must be a number in [{kn.MIN_ADV:.0e}, {kn.MAX_ADV:.0e}] when set"),
}
if sorted(RULES) != list(range(kn.N_RULES)):
    raise RuntimeError("RULES must name every kernel rule exactly once")
for _table in (ASSET_CLASSES, SIDES):
    if sorted(_table) != list(range(min(_table), max(_table) + 1)):  # the kernel checks enums as ranges
        raise RuntimeError("enum numbers must be contiguous")

LIMITS = np.zeros(kn.N_LIMITS, dtype=np.int64)
LIMITS[kn.L_ASSET_MIN], LIMITS[kn.L_ASSET_MAX] = min(ASSET_CLASSES), max(ASSET_CLASSES)
LIMITS[kn.L_SIDE_MIN], LIMITS[kn.L_SIDE_MAX] = min(SIDES), max(SIDES)
LIMITS[kn.L_MAX_ID_LENGTH] = MAX_ID_LENGTH
LIMITS[kn.L_MAX_CYCLE_DAYS] = MAX_CYCLE_DAYS
_NO_MASK = np.zeros(0, dtype=bool)


def check_count(n: int, max_trades: int) -> None:
    """Raise InvalidInput unless 1 <= n <= max_trades (callers check before decoding, too)."""
    if n == 0:
        raise InvalidInput("trades", "at least one trade is required")
    if n > max_trades:
        raise InvalidInput("trades", f"{n} trades exceed the limit of {max_trades} per request")


def _error(rule: int, first: npt.NDArray[np.int64], count: npt.NDArray[np.int64]) -> InvalidInput:
    field, reason = RULES[rule]
    return InvalidInput(field, reason, int(first[rule]), int(count[rule]))


def validate_rows(rows: TradeRows, max_trades: int) -> None:
    """Raise InvalidInput for the first problem (lowest trade index) in `rows`."""
    check_count(len(rows), max_trades)
    raise_first_problem(*kn.check_rows(rows.x, rows.k, LIMITS, _NO_MASK))


def raise_first_problem(first: npt.NDArray[np.int64], count: npt.NDArray[np.int64]) -> None:
    """Raise InvalidInput for the broken rule with the lowest trade index (`kn.check_rows` output)."""
    broken = np.flatnonzero(first >= 0)
    if broken.size:
        rule = int(broken[np.argmin(first[broken])])  # argmin keeps the earliest rule on ties
        raise _error(rule, first, count)


def validate(trades: TradeColumns, max_trades: int) -> None:
    """Raise InvalidInput for the first problem (lowest trade index) in `trades`."""
    check_count(len(trades), max_trades)
    validate_rows(rows_from_columns(trades, {}), max_trades)


def problems(trades: TradeColumns) -> tuple[Mask, list[InvalidInput]]:
    """Every invalid row at once: the union mask, and one error per broken rule.

    For bulk input (training files) that wants to report or drop all bad rows
    instead of stopping at the first; each error names the rule's field, its
    lowest row index and how many rows break it, sorted by that index.
    """
    rows = rows_from_columns(trades, {})
    bad = np.zeros(len(rows), dtype=bool)
    first, count = kn.check_rows(rows.x, rows.k, LIMITS, bad)
    found = [_error(int(rule), first, count) for rule in np.flatnonzero(first >= 0)]
    found.sort(key=lambda e: e.index or 0)
    return bad, found
