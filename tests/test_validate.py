"""The compiled validation rules against a plain per-trade reading of the same rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import InvalidInput
from engine.features.validate import MAX_CYCLE_DAYS, MAX_ID_LENGTH, RULES, problems, validate
from engine.scoring.messages import trades_to_columns
from tests.conftest import make_trade

EDGE_VALUES: dict[str, list[object]] = {
    "trade_id": ["", "T000001", "x" * 129, "x" * 128, "é" * 128, "é" * 129],
    "account_id": [""],
    "counterparty_id": ["", "c" * 129],
    "instrument_id": ["", "i" * 200],
    "currency": [""],
    "settlement_venue": [""],
    "asset_class": [0, -1, 8, 99, 7, 1],
    "side": [0, 4, -3, 3],
    "quantity": [0.0, -1.0, math.inf, -math.inf, math.nan, 1e-300, 1e300, 1e15, 1.0000001e15],
    "price": [0.0, -0.0, math.inf, math.nan, 5e-324, 1e12, 1.0000001e12, 1.79e306],
    "trade_date": ["", "2026-11-24", "1970-01-01"],
    "settlement_date": ["", "2026-11-19", "2026-11-20", "2100-01-01"],
    "settlement_cycle_days": [0, 30, 31, 2**32 - 1],
    "inventory_ratio": [0.0, -0.0, -1e-9, math.inf, 1e308, 1e9, 1.0000001e9],
    "counterparty_fail_rate": [0.0, 1.0, 1.0000001, -1e-12, math.inf],
    "instrument_adv": [0.0, -1.0, math.inf, 1e-300, 1e-6, 0.9999999e-6, 1e15, 1.0000001e15],
    "on_loan_recall_pending": [True, False],
}


def _broken(t: pb.Trade, earlier_ids: set[str]) -> list[tuple[str, str]]:
    """(field, reason) of every rule `t` breaks, in rule order, read field by field."""
    out: list[tuple[str, str]] = []
    given = t.HasField

    def rule(ok: bool, field: str, reason: str) -> None:
        if not ok:
            out.append((field, reason))

    long_ = f"is longer than {MAX_ID_LENGTH} characters"
    rule(t.trade_id != "", "trade_id", "is required")
    rule(len(t.trade_id) <= MAX_ID_LENGTH, "trade_id", long_)
    rule(
        t.trade_id == "" or t.trade_id not in earlier_ids,
        "trade_id",
        "repeats an earlier trade_id in this request",
    )
    rule(t.account_id != "", "account_id", "is required")
    rule(t.counterparty_id != "", "counterparty_id", "is required")
    rule(len(t.counterparty_id) <= MAX_ID_LENGTH, "counterparty_id", long_)
    rule(t.instrument_id != "", "instrument_id", "is required")
    rule(len(t.instrument_id) <= MAX_ID_LENGTH, "instrument_id", long_)
    rule(1 <= t.asset_class <= 7, "asset_class", "is unspecified or not a known AssetClass value")
    rule(1 <= t.side <= 3, "side", "is unspecified or not a known Side value")
    rule(0 < t.quantity <= 1e15, "quantity", "must be a number > 0 and at most 1e+15")
    rule(0 < t.price <= 1e12, "price", "must be a number > 0 and at most 1e+12")
    rule(t.currency != "", "currency", "is required")
    rule(t.settlement_venue != "", "settlement_venue", "is required")
    rule(t.trade_date != "", "trade_date", "is required (YYYY-MM-DD)")
    before = t.trade_date != "" and t.settlement_date != "" and t.settlement_date < t.trade_date
    rule(not before, "settlement_date", "is before trade_date")
    cycle_ok = not given("settlement_cycle_days") or t.settlement_cycle_days <= MAX_CYCLE_DAYS
    rule(cycle_ok, "settlement_cycle_days", f"must be 0..{MAX_CYCLE_DAYS} business days")
    has_settlement = t.settlement_date != "" or given("settlement_cycle_days")
    rule(has_settlement, "settlement_date", "give settlement_date or settlement_cycle_days")
    inv = t.inventory_ratio
    rule(
        not given("inventory_ratio") or 0 <= inv <= 1e9,
        "inventory_ratio",
        "must be a number in [0, 1e+09] when set",
    )
    rate = t.counterparty_fail_rate
    rule(
        not given("counterparty_fail_rate") or 0 <= rate <= 1,
        "counterparty_fail_rate",
        "must be within [0, 1] when set",
    )
    adv = t.instrument_adv
    rule(
        not given("instrument_adv") or 1e-6 <= adv <= 1e15,
        "instrument_adv",
        "must be a number in [1e-06, 1e+15] when set",
    )
    return out


def _corrupted(rng: np.random.Generator) -> list[pb.Trade]:
    names = list(EDGE_VALUES)
    n = int(rng.integers(1, 6))
    trades = [make_trade(i) for i in range(n)]
    for _ in range(int(rng.integers(0, 4))):
        field = names[int(rng.integers(len(names)))]
        value = EDGE_VALUES[field][int(rng.integers(len(EDGE_VALUES[field])))]
        setattr(trades[int(rng.integers(n))], field, value)
    if n > 1 and rng.random() < 0.1:
        trades[-1].trade_id = trades[0].trade_id
    return trades


def test_compiled_rules_agree_with_a_field_by_field_reading() -> None:
    order = list(RULES.values())
    rng = np.random.default_rng(20261121)
    passed = refused = 0
    for _ in range(1500):
        trades = _corrupted(rng)
        seen: set[str] = set()
        expected: list[tuple[int, int]] = []  # (trade index, rule position)
        counts: dict[tuple[str, str], int] = {}
        for i, t in enumerate(trades):
            for fr in _broken(t, seen):
                expected.append((i, order.index(fr)))
                counts[fr] = counts.get(fr, 0) + 1
            seen.add(t.trade_id)
        cols = trades_to_columns(trades)
        if not expected:
            validate(cols, 100)
            passed += 1
            continue
        refused += 1
        index, position = min(expected)
        with pytest.raises(InvalidInput) as info:
            validate(cols, 100)
        got = info.value
        assert (got.field, got.reason, got.index) == (*order[position], index), [str(t) for t in trades]
        assert got.count == counts[order[position]]
        mask, found = problems(cols)
        assert set(np.flatnonzero(mask).tolist()) == {i for i, _ in expected}
        assert {(e.field, e.reason) for e in found} == set(counts)
    assert passed > 100 and refused > 500


def test_request_size_limits() -> None:
    cols = trades_to_columns([make_trade(i) for i in range(3)])
    with pytest.raises(InvalidInput, match="exceed the limit of 2"):
        validate(cols, 2)
