"""Vectorised validation of raw trades: the reason a trade is refused, by field and index.

Each rule is a mask over the rows; `validate` raises `InvalidInput` for the
lowest trade index that breaks any rule, naming the field, the reason, and how
many trades share that problem. Valid input passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from engine.errors import InvalidInput
from engine.features.columns import ASSET_CLASSES, SIDES, Str, TradeColumns

Mask = npt.NDArray[np.bool_]

MAX_CYCLE_DAYS = 30
MAX_ID_LENGTH = 128


def _lengths(a: Str) -> npt.NDArray[np.intp]:
    if a.dtype.kind == "O":
        return np.fromiter(map(len, a.tolist()), dtype=np.intp, count=a.shape[0])
    return np.strings.str_len(a)


def _empty(a: Str) -> Mask:
    out: Mask = a == ""
    return out


def _too_long(a: Str) -> Mask:
    return _lengths(a) > MAX_ID_LENGTH


def _bad_enum(codes: npt.NDArray[np.int32], table: dict[int, str]) -> Mask:
    return ~np.isin(codes, np.fromiter(table, dtype=np.int32))


def _set(x: npt.NDArray[np.float64]) -> Mask:
    return ~np.isnan(x)


def _duplicates(ids: npt.NDArray[np.str_]) -> Mask:
    if ids.shape[0] < 2:
        return np.zeros(ids.shape[0], dtype=bool)
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup_sorted = np.zeros(s.shape[0], dtype=bool)
    dup_sorted[1:] = s[1:] == s[:-1]  # every repeat after the first occurrence
    out = np.zeros(ids.shape[0], dtype=bool)
    out[order] = dup_sorted
    return out & ~_empty(ids)


def _rules(t: TradeColumns) -> list[tuple[str, str, Callable[[], Mask]]]:
    day_ok = ~np.isnat(t.trade_date)
    settle_set = ~np.isnat(t.settlement_date)
    cycle = t.settlement_cycle_days
    return [
        ("trade_id", "is required", lambda: _empty(t.trade_id)),
        ("trade_id", f"is longer than {MAX_ID_LENGTH} characters", lambda: _too_long(t.trade_id)),
        ("trade_id", "repeats an earlier trade_id in this request", lambda: _duplicates(t.trade_id)),
        ("account_id", "is required", lambda: _empty(t.account_id)),
        ("counterparty_id", "is required", lambda: _empty(t.counterparty_id)),
        (
            "counterparty_id",
            f"is longer than {MAX_ID_LENGTH} characters",
            lambda: _too_long(t.counterparty_id),
        ),
        ("instrument_id", "is required", lambda: _empty(t.instrument_id)),
        ("instrument_id", f"is longer than {MAX_ID_LENGTH} characters", lambda: _too_long(t.instrument_id)),
        (
            "asset_class",
            "is unspecified or not a known AssetClass value",
            lambda: _bad_enum(t.asset_class, ASSET_CLASSES),
        ),
        ("side", "is unspecified or not a known Side value", lambda: _bad_enum(t.side, SIDES)),
        ("quantity", "must be a finite number > 0", lambda: ~(np.isfinite(t.quantity) & (t.quantity > 0))),
        ("price", "must be a finite number > 0", lambda: ~(np.isfinite(t.price) & (t.price > 0))),
        ("currency", "is required", lambda: _empty(t.currency)),
        ("settlement_venue", "is required", lambda: _empty(t.settlement_venue)),
        ("trade_date", "is required (YYYY-MM-DD)", lambda: ~day_ok),
        (
            "settlement_date",
            "is before trade_date",
            lambda: (
                settle_set & day_ok & (t.settlement_date < np.where(day_ok, t.trade_date, t.settlement_date))
            ),
        ),
        (
            "settlement_cycle_days",
            f"must be 0..{MAX_CYCLE_DAYS} business days",
            lambda: _set(cycle) & ~((cycle >= 0) & (cycle <= MAX_CYCLE_DAYS)),
        ),
        (
            "settlement_date",
            "give settlement_date or settlement_cycle_days",
            lambda: ~settle_set & ~_set(cycle),
        ),
        (
            "inventory_ratio",
            "must be a finite number >= 0 when set",
            lambda: _set(t.inventory_ratio) & ~(np.isfinite(t.inventory_ratio) & (t.inventory_ratio >= 0)),
        ),
        (
            "on_loan_recall_pending",
            "must be true/false (1/0) when set",
            lambda: _set(t.on_loan_recall_pending) & ~np.isin(t.on_loan_recall_pending, (0.0, 1.0)),
        ),
        (
            "ssi_matched",
            "must be true/false (1/0) when set",
            lambda: _set(t.ssi_matched) & ~np.isin(t.ssi_matched, (0.0, 1.0)),
        ),
        (
            "counterparty_fail_rate",
            "must be within [0, 1] when set",
            lambda: (
                _set(t.counterparty_fail_rate)
                & ~((t.counterparty_fail_rate >= 0) & (t.counterparty_fail_rate <= 1))
            ),
        ),
        (
            "instrument_adv",
            "must be a finite number > 0 when set",
            lambda: _set(t.instrument_adv) & ~(np.isfinite(t.instrument_adv) & (t.instrument_adv > 0)),
        ),
    ]


_ASSET_RANGE = (min(ASSET_CLASSES), max(ASSET_CLASSES))
_SIDE_RANGE = (min(SIDES), max(SIDES))
for _table, (_lo, _hi) in ((ASSET_CLASSES, _ASSET_RANGE), (SIDES, _SIDE_RANGE)):
    if sorted(_table) != list(range(_lo, _hi + 1)):  # looks_valid checks enums as ranges
        raise RuntimeError("enum numbers must be contiguous for looks_valid")


def _chars(a: Str) -> int:
    """A bound on the longest string: a unicode array's width (no pass), else the real maximum."""
    if a.dtype.kind == "O":
        return max(map(len, a.tolist()), default=0)
    return a.dtype.itemsize // 4


def looks_valid(t: TradeColumns) -> bool:
    """True only when no rule of `_rules` can fire: few whole-column checks, no per-rule masks.

    The common case (valid input) pays for this alone; when it says False,
    `validate` runs the rules to find the field and index. tests/test_validate.py
    checks on random corruptions that this never says True where a rule fires.
    """
    n = len(t)
    texts = (t.trade_id, t.account_id, t.counterparty_id, t.instrument_id, t.currency, t.settlement_venue)
    if any((a == "").any() for a in texts):
        return False
    if max(_chars(t.trade_id), _chars(t.counterparty_id), _chars(t.instrument_id)) > MAX_ID_LENGTH:
        return False
    if n > 1 and np.unique(t.trade_id).shape[0] != n:
        return False
    for codes, (lo, hi) in ((t.asset_class, _ASSET_RANGE), (t.side, _SIDE_RANGE)):
        if codes.min() < lo or codes.max() > hi:
            return False
    for x in (t.quantity, t.price):
        if not ((x > 0) & (x < np.inf)).all():
            return False
    if np.isnat(t.trade_date).any():
        return False
    settle_set = ~np.isnat(t.settlement_date)
    cycle = t.settlement_cycle_days
    if (settle_set & (t.settlement_date < t.trade_date)).any():
        return False
    if ((cycle < 0) | (cycle > MAX_CYCLE_DAYS)).any() or (~settle_set & np.isnan(cycle)).any():
        return False
    bounds: tuple[tuple[npt.NDArray[np.float64], float, float], ...] = (
        (t.inventory_ratio, 0.0, np.inf),
        (t.counterparty_fail_rate, 0.0, 1.0),
        (t.instrument_adv, 0.0, np.inf),
    )
    for x, low, high in bounds:
        if ((x < low) | (x > high) | (x == np.inf)).any():
            return False
    return not (t.instrument_adv == 0.0).any()


def check_count(n: int, max_trades: int) -> None:
    """Raise InvalidInput unless 1 <= n <= max_trades (callers check before decoding, too)."""
    if n == 0:
        raise InvalidInput("trades", "at least one trade is required")
    if n > max_trades:
        raise InvalidInput("trades", f"{n} trades exceed the limit of {max_trades} per request")


def validate(trades: TradeColumns, max_trades: int) -> None:
    """Raise InvalidInput for the first problem (lowest trade index) in `trades`."""
    check_count(len(trades), max_trades)
    if looks_valid(trades):
        return
    first: InvalidInput | None = None
    for field, reason, rule in _rules(trades):
        bad = rule()
        if not bad.any():
            continue
        idx = int(np.argmax(bad))
        if first is None or idx < (first.index or 0):
            first = InvalidInput(field, reason, idx, int(bad.sum()))
            if idx == 0:
                break
    if first is not None:
        raise first


def problems(trades: TradeColumns) -> tuple[Mask, list[InvalidInput]]:
    """Every invalid row at once: the union mask, and one error per broken rule.

    For bulk input (training files) that wants to report or drop all bad rows
    instead of stopping at the first; each error names the rule's field, its
    lowest row index and how many rows break it, sorted by that index.
    """
    bad_any = np.zeros(len(trades), dtype=bool)
    found: list[InvalidInput] = []
    for field, reason, rule in _rules(trades):
        bad = rule()
        if bad.any():
            bad_any |= bad
            found.append(InvalidInput(field, reason, int(np.argmax(bad)), int(bad.sum())))
    found.sort(key=lambda e: e.index or 0)
    return bad_any, found
