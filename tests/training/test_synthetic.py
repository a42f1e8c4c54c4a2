"""The synthetic trade generator: rates, shapes, consistency, missingness, vectorisation."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from engine.features.columns import ASSET_CLASSES, TradeColumns, from_table
from engine.features.compute import FeaturePlan, default_spec
from engine.features.validate import problems
from engine.models.reference import KeyedTable, ReferenceTables
from engine.training.synthetic import SyntheticData, fx_table, generate_trades, solve_intercept

N = 200_000


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate_trades(N, seed=5)


def test_base_rate_is_realistic(data: SyntheticData) -> None:
    rate = float(data.labels.mean())
    assert 0.02 <= rate <= 0.06
    assert data.labels.dtype == np.int8
    assert set(np.unique(data.labels).tolist()) == {0, 1}


def test_base_rate_follows_the_target() -> None:
    low = generate_trades(50_000, seed=2, base_rate=0.02).labels.mean()
    high = generate_trades(50_000, seed=2, base_rate=0.06).labels.mean()
    assert 0.012 < low < 0.03
    assert 0.045 < high < 0.08


def test_shapes_and_dtypes(data: SyntheticData) -> None:
    t = data.trades
    assert len(t) == N
    for f in fields(TradeColumns):
        assert getattr(t, f.name).shape == (N,), f.name
    for name in (
        "trade_id",
        "account_id",
        "counterparty_id",
        "instrument_id",
        "currency",
        "settlement_venue",
    ):
        assert getattr(t, name).dtype.kind == "U", name
    assert t.asset_class.dtype == np.int32 and t.side.dtype == np.int32
    assert t.trade_date.dtype == np.dtype("datetime64[D]")
    assert t.settlement_date.dtype == np.dtype("datetime64[D]")
    for name in ("quantity", "price", "settlement_cycle_days", "inventory_ratio", "instrument_adv"):
        assert getattr(t, name).dtype == np.float64, name
    assert np.unique(t.trade_id).size == N


def test_every_trade_passes_validation(data: SyntheticData) -> None:
    bad, found = problems(data.trades)
    assert not bad.any(), found


def test_asset_class_mix_is_equity_heavy(data: SyntheticData) -> None:
    share = {ASSET_CLASSES[c]: float((data.trades.asset_class == c).mean()) for c in ASSET_CLASSES}
    assert set(share) == set(ASSET_CLASSES.values())
    assert share["EQUITY"] > 0.45
    assert all(v > 0.01 for v in share.values())
    # ETFs fail more than equities, government bonds less (DOMAIN.md)
    rate = {
        name: float(data.labels[data.trades.asset_class == c].mean()) for c, name in ASSET_CLASSES.items()
    }
    assert rate["ETF"] > rate["EQUITY"] > rate["GOVERNMENT_BOND"] * 0.9
    assert 0.015 < rate["GOVERNMENT_BOND"] < 0.05


def test_venues_and_currencies_are_consistent(data: SyntheticData) -> None:
    t = data.trades
    pairs = Counter(zip(t.settlement_venue.tolist(), t.currency.tolist(), strict=True))
    expected_currency = {
        "DTC": {"USD"},
        "FED": {"USD"},
        "CREST": {"GBP"},
        "SIX": {"CHF"},
        "JASDEC": {"JPY"},
        "BOJ": {"JPY"},
        "EUROCLEAR": {"EUR", "USD"},
        "CLEARSTREAM": {"EUR", "USD"},
    }
    for (venue, ccy), _count in pairs.items():
        assert ccy in expected_currency[venue], (venue, ccy)
    gov = t.asset_class == 3
    assert set(np.unique(t.settlement_venue[t.settlement_venue == "FED"]).tolist()) <= {"FED"}
    assert gov[t.settlement_venue == "FED"].all() and gov[t.settlement_venue == "BOJ"].all()
    # each instrument settles at one venue in one currency
    key = np.strings.add(np.strings.add(t.instrument_id, "|"), np.strings.add(t.settlement_venue, t.currency))
    assert np.unique(key).size == np.unique(t.instrument_id).size


def _cycle(t: TradeColumns) -> np.ndarray:
    spec = default_spec(t.settlement_venue, t.currency, ("settlement_cycle_days",))
    empty = KeyedTable.build([], {"fail_rate": [], "trades": []})
    refs = ReferenceTables(empty, KeyedTable.build([], {"adv": [], "fail_rate": []}), fx_table())
    return FeaturePlan(spec, refs).compute(t)[:, 0].astype(np.float64)


def test_settlement_cycles_follow_the_market(data: SyntheticData) -> None:
    t = data.trades
    given_date = ~np.isnat(t.settlement_date)
    given_cycle = ~np.isnan(t.settlement_cycle_days)
    assert (given_date | given_cycle).all()
    assert 0.3 < given_date.mean() < 0.9 and 0.1 < given_cycle.mean() < 0.7
    assert (given_date & given_cycle).mean() > 0.05  # both, consistently
    both = given_date & given_cycle
    cycle = _cycle(t)
    assert np.array_equal(cycle[both], t.settlement_cycle_days[both])
    us_equity = (t.settlement_venue == "DTC") & (t.asset_class == 1)
    before = us_equity & (t.trade_date < np.datetime64("2024-05-28"))
    after = us_equity & (t.trade_date >= np.datetime64("2024-05-28"))
    assert np.median(cycle[before]) == 2 and (cycle[before] == 2).mean() > 0.85
    assert np.median(cycle[after]) == 1 and (cycle[after] == 1).mean() > 0.85
    eu = (t.settlement_venue == "EUROCLEAR") & (t.asset_class == 1)
    assert (cycle[eu] == 2).mean() > 0.85
    assert (cycle == 0).any() and (cycle >= 5).any() and cycle.max() <= 30


def test_trade_dates_are_business_days_with_spikes(data: SyntheticData) -> None:
    t = data.trades
    assert np.is_busday(t.trade_date).all()
    days, counts = np.unique(t.trade_date, return_counts=True)
    assert 240 <= days.size <= 260
    assert counts.max() > 1.8 * np.median(counts)  # stress episodes


def test_missing_signals_are_nan_never_zero(data: SyntheticData) -> None:
    t = data.trades
    buy = t.side == 1
    assert np.isnan(t.inventory_ratio[buy]).all()  # nothing to deliver: not applicable, not 0
    sells = ~buy
    assert 0.05 < np.isnan(t.inventory_ratio[sells]).mean() < 0.4
    for name, low, high in (
        ("on_loan_recall_pending", 0.2, 0.6),
        ("ssi_matched", 0.1, 0.35),
        ("counterparty_fail_rate", 0.5, 0.9),
        ("instrument_adv", 0.4, 0.8),
    ):
        share = float(np.isnan(getattr(t, name)).mean())
        assert low < share < high, (name, share)
    assert set(np.unique(t.ssi_matched[~np.isnan(t.ssi_matched)]).tolist()) == {0.0, 1.0}
    assert (t.instrument_adv[~np.isnan(t.instrument_adv)] > 0).all()


def test_reference_tables_come_from_an_independent_history(data: SyntheticData) -> None:
    refs = data.references
    assert 300 <= len(refs.counterparties) <= 400
    assert 2000 <= len(refs.instruments) <= 3000
    rates = refs.counterparties.columns["fail_rate"]
    assert ((rates >= 0) & (rates <= 1)).all()
    assert 0.02 < np.average(rates, weights=refs.counterparties.columns["trades"]) < 0.06
    # some counterparties and instruments are new since the history: unknown to the tables
    _, cp_found = refs.counterparties.positions(data.trades.counterparty_id)
    _, inst_found = refs.instruments.positions(data.trades.instrument_id)
    assert 0.0 < 1 - cp_found.mean() < 0.15 and 0.0 < 1 - inst_found.mean() < 0.15
    # the history holds more trades than these rows' counterparty totals would imply on their own
    assert refs.counterparties.columns["trades"].sum() == 300_000
    assert sorted(refs.fx.keys.tolist()) == ["CHF", "EUR", "GBP", "JPY", "USD"]


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    a = generate_trades(2_000, seed=3)
    b = generate_trades(2_000, seed=3)
    c = generate_trades(2_000, seed=4)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.trades.quantity, b.trades.quantity)
    assert not np.array_equal(a.trades.quantity, c.trades.quantity)


def test_process_does_not_depend_on_n() -> None:
    """Universe, intercept and tables depend on the seed only, not on the number of rows."""
    small = generate_trades(1_000, seed=8)
    large = generate_trades(20_000, seed=8)
    assert np.array_equal(small.references.counterparties.keys, large.references.counterparties.keys)
    assert np.array_equal(
        small.references.instruments.columns["fail_rate"],
        large.references.instruments.columns["fail_rate"],
        equal_nan=True,
    )


def test_round_trips_through_a_table(data: SyntheticData) -> None:
    t = data.trades.take(slice(0, 5_000))
    back = from_table(t.to_table())
    for f in fields(TradeColumns):
        a, b = getattr(t, f.name), getattr(back, f.name)
        if a.dtype.kind == "M":
            assert np.array_equal(np.isnat(a), np.isnat(b)) and (a[~np.isnat(a)] == b[~np.isnat(b)]).all()
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f.name


def test_solve_intercept_hits_the_rate() -> None:
    logit = np.random.default_rng(0).normal(0.0, 2.0, 10_000)
    b = solve_intercept(logit, 0.04)
    assert abs(float((1 / (1 + np.exp(-(logit + b)))).mean()) - 0.04) < 1e-9
    with pytest.raises(ValueError):
        solve_intercept(logit, 1.5)


def _python_calls(n: int) -> int:
    """Python-level function calls (and C calls made from Python) while generating `n` rows."""
    count = 0

    def profiler(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profiler)
    try:
        generate_trades(n, seed=1, history_rows=1_000)
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.slow
def test_million_rows_are_generated_without_per_row_python() -> None:
    """Vectorised: a million rows cost the same number of Python calls as a thousand.

    (No assertion on wall time: speed is measured, not tested.)
    """
    _python_calls(100)  # warm-up: first calls import lazily loaded numpy modules
    small = _python_calls(1_000)
    large = _python_calls(1_000_000)
    assert large <= small + 50, (small, large)
