"""Columns, validation and the feature catalog, without a server."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.errors import BundleError, InvalidInput
from engine.features.columns import from_table, parse_dates
from engine.features.compute import CATALOG, OTHER, FeaturePlan, default_spec
from engine.features.validate import validate
from engine.models.bundle import DEFAULT_BUNDLE, ModelBundle
from engine.models.spec import FeatureDef, FeatureSpec, RiskBands
from engine.scoring.messages import columns_to_trades, trades_to_columns
from engine.trade_files import read_table, write_table
from tests.conftest import make_trade


def test_dates_parse_in_one_step_and_bad_ones_name_their_row() -> None:
    out = parse_dates(np.array(["2026-11-20", "", "2024-02-29"]), "trade_date")
    assert str(out[0]) == "2026-11-20" and np.isnat(out[1]) and str(out[2]) == "2024-02-29"
    with pytest.raises(InvalidInput, match=r"trades\[2\]\.trade_date.*'2026-13-01'"):
        parse_dates(np.array(["2026-11-20", "2026-11-21", "2026-13-01"]), "trade_date")


def test_validation_reports_lowest_index_and_count() -> None:
    cols = trades_to_columns(
        [make_trade(0), make_trade(1, price=-1.0), make_trade(2, quantity=-1.0), make_trade(3, price=0.0)]
    )
    with pytest.raises(InvalidInput) as info:
        validate(cols, 100)
    assert (info.value.field, info.value.index) == ("price", 1)
    assert info.value.count == 2
    assert "and 1 more" in str(info.value)


def test_columns_round_trip_through_proto() -> None:
    trades = [make_trade(i) for i in range(5)] + [
        make_trade(
            9,
            settlement_date=None,
            settlement_cycle_days=2,
            inventory_ratio=None,
            on_loan_recall_pending=True,
        )
    ]
    cols = trades_to_columns(trades)
    ids = cols.trade_id.tolist()
    again = trades_to_columns(columns_to_trades(cols))
    for name in ("quantity", "price", "inventory_ratio", "on_loan_recall_pending", "settlement_cycle_days"):
        np.testing.assert_array_equal(getattr(cols, name), getattr(again, name))
    assert ids == [t.trade_id for t in trades]
    assert np.isnan(cols.on_loan_recall_pending[0]) and cols.on_loan_recall_pending[5] == 1.0


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_tables_round_trip(tmp_path: Path, suffix: str) -> None:
    zeros = make_trade(5, trade_id="000123", instrument_id="037833100", counterparty_id="0042")
    cols = trades_to_columns([make_trade(i) for i in range(4)] + [make_trade(4, inventory_ratio=None), zeros])
    path = tmp_path / f"trades{suffix}"
    write_table(cols.to_table(), path)
    back = from_table(read_table(path))
    np.testing.assert_array_equal(back.quantity, cols.quantity)
    np.testing.assert_array_equal(back.asset_class, cols.asset_class)
    np.testing.assert_array_equal(back.trade_date, cols.trade_date)
    assert np.isnan(back.inventory_ratio[4]) and back.inventory_ratio[0] == cols.inventory_ratio[0]
    assert list(back.trade_id) == list(cols.trade_id)
    assert (back.instrument_id[5], back.counterparty_id[5]) == ("037833100", "0042")  # ids stay text


def test_table_without_a_required_column_is_refused() -> None:
    with pytest.raises(KeyError, match="price"):
        from_table(
            {"trade_id": np.array(["a"]), "quantity": np.array([1.0])}
            | {
                k: np.array(["x"])
                for k in (
                    "account_id",
                    "counterparty_id",
                    "instrument_id",
                    "asset_class",
                    "side",
                    "currency",
                    "trade_date",
                    "settlement_venue",
                )
            }
        )


def test_feature_plan_uses_bundle_vocabulary_and_other() -> None:
    bundle = ModelBundle.load(DEFAULT_BUNDLE)
    plan = FeaturePlan(bundle.manifest.features, bundle.references)
    cols = trades_to_columns([make_trade(0, settlement_venue="NOWHERE-CSD", currency="XXX")])
    x = plan.compute(cols)
    names = bundle.manifest.features.names
    venue = bundle.manifest.features.get("settlement_venue")
    assert x[0, names.index("settlement_venue")] == venue.categories.index(OTHER)
    if "log_notional_usd" in names:
        assert math.isnan(x[0, names.index("log_notional_usd")])  # no FX rate: missing, not 0
    assert x.dtype == np.float32 and x.shape == (1, len(names))


def test_feature_plan_refuses_unknown_or_mistyped_features() -> None:
    refs = ModelBundle.load(DEFAULT_BUNDLE).references
    with pytest.raises(BundleError, match="not one the engine can compute"):
        FeaturePlan(FeatureSpec((FeatureDef("moon_phase"),)), refs)
    with pytest.raises(BundleError, match="must be categorical"):
        FeaturePlan(FeatureSpec((FeatureDef("side"),)), refs)
    spec = default_spec(["DTC"], ["USD"])
    assert spec.names == tuple(CATALOG)
    assert spec.get("currency").categories == ("USD", OTHER)


def test_risk_bands() -> None:
    bands = RiskBands((0.05, 0.15, 0.4))
    assert bands.assign(np.array([0.0, 0.049, 0.05, 0.2, 0.4, 1.0])).tolist() == [1, 1, 2, 3, 4, 4]
    with pytest.raises(BundleError):
        RiskBands((0.2, 0.1, 0.4))
