"""The quick whole-batch check agrees with the detailed rules on corrupted input."""

from __future__ import annotations

import math

import numpy as np

from engine.features.validate import _rules, looks_valid
from engine.scoring.codec import decode_trades
from tests.conftest import make_trade

EDGE_VALUES: dict[str, list[object]] = {
    "trade_id": ["", "T000001", "x" * 129, "x" * 128],
    "account_id": [""],
    "counterparty_id": ["", "c" * 129],
    "instrument_id": ["", "i" * 200],
    "currency": [""],
    "settlement_venue": [""],
    "asset_class": [0, -1, 8, 99, 7, 1],
    "side": [0, 4, -3, 3],
    "quantity": [0.0, -1.0, math.inf, -math.inf, math.nan, 1e-300, 1e300],
    "price": [0.0, -0.0, math.inf, math.nan, 5e-324],
    "trade_date": ["", "2026-11-24", "1970-01-01"],
    "settlement_date": ["", "2026-11-19", "2026-11-20", "2100-01-01"],
    "settlement_cycle_days": [0, 30, 31, 2**32 - 1],
    "inventory_ratio": [0.0, -0.0, -1e-9, math.inf, 1e308],
    "counterparty_fail_rate": [0.0, 1.0, 1.0000001, -1e-12, math.inf],
    "instrument_adv": [0.0, -1.0, math.inf, 1e-300],
}


def test_quick_check_never_passes_what_a_rule_refuses() -> None:
    rng = np.random.default_rng(20261121)
    names = list(EDGE_VALUES)
    passed = refused = 0
    for _ in range(1500):
        n = int(rng.integers(1, 5))
        trades = [make_trade(i) for i in range(n)]
        for _ in range(int(rng.integers(0, 3))):
            field = names[int(rng.integers(len(names)))]
            value = EDGE_VALUES[field][int(rng.integers(len(EDGE_VALUES[field])))]
            setattr(trades[int(rng.integers(n))], field, value)
        try:
            cols, _ = decode_trades(trades)
        except Exception:  # noqa: BLE001 - decode-time refusals (NaN optionals, bad dates) are fine
            continue
        fired = any(rule().any() for _, _, rule in _rules(cols))
        if looks_valid(cols):
            assert not fired, [str(t) for t in trades]
            passed += 1
        else:
            refused += 1
            assert fired, [str(t) for t in trades]  # no false alarms either: same verdict both ways
    assert passed > 100 and refused > 100
