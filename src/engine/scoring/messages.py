"""`TradeColumns` <-> protobuf `Trade` messages, for clients: the CLI, tests, the benchmark.

The server does not use this module: it decodes request bytes with the
compiled `engine.scoring.wire`. `trades_to_columns` is the plain, readable
reading of the same messages, which the tests use as the reference that the
wire decoder must agree with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import InvalidInput
from engine.features.columns import TradeColumns, parse_dates

#: the Trade fields with presence (proto3 `optional`): NaN in the columns when not set
_OPTIONAL = tuple(f.name for f in pb.Trade.DESCRIPTOR.fields if f.has_presence)
#: of them, the flags (1.0 / 0.0 in the columns)
_FLAGS = tuple(f.name for f in pb.Trade.DESCRIPTOR.fields if f.has_presence and f.type == f.TYPE_BOOL)


def trades_to_columns(trades: Sequence[pb.Trade]) -> TradeColumns:
    """Columns for `trades`; unset optional numbers are NaN, a number set to NaN raises InvalidInput."""
    trades = list(trades)

    def text(name: str) -> np.ndarray:
        return np.array([getattr(t, name) for t in trades], dtype=object)

    def optional(name: Any) -> np.ndarray:  # a Trade field name (HasField wants its literal type)
        values = np.array([float(getattr(t, name)) if t.HasField(name) else np.nan for t in trades])
        for i, t in enumerate(trades):
            if t.HasField(name) and np.isnan(values[i]):
                raise InvalidInput(name, "is NaN; leave the field unset when the value is unknown", i)
        return values

    return TradeColumns(
        trade_id=text("trade_id"),
        account_id=text("account_id"),
        counterparty_id=text("counterparty_id"),
        instrument_id=text("instrument_id"),
        asset_class=np.array([t.asset_class for t in trades], dtype=np.int32),
        side=np.array([t.side for t in trades], dtype=np.int32),
        quantity=np.array([t.quantity for t in trades], dtype=np.float64),
        price=np.array([t.price for t in trades], dtype=np.float64),
        currency=text("currency"),
        trade_date=parse_dates(np.array([t.trade_date for t in trades], dtype=np.str_), "trade_date"),
        settlement_date=parse_dates(
            np.array([t.settlement_date for t in trades], dtype=np.str_), "settlement_date"
        ),
        settlement_venue=text("settlement_venue"),
        **{name: optional(name) for name in _OPTIONAL},
    )


def columns_to_trades(cols: TradeColumns) -> list[pb.Trade]:
    """Protobuf trades for `cols` (clients: the CLI, tests, the benchmark)."""
    table = cols.to_table()
    n = len(cols)
    out: list[pb.Trade] = []
    optional = tuple(name for name in _OPTIONAL if name not in _FLAGS)
    for i in range(n):
        t = pb.Trade(
            trade_id=str(table["trade_id"][i]),
            account_id=str(table["account_id"][i]),
            counterparty_id=str(table["counterparty_id"][i]),
            instrument_id=str(table["instrument_id"][i]),
            asset_class=int(cols.asset_class[i]),  # type: ignore[arg-type]
            side=int(cols.side[i]),  # type: ignore[arg-type]
            quantity=float(cols.quantity[i]),
            price=float(cols.price[i]),
            currency=str(table["currency"][i]),
            trade_date=str(table["trade_date"][i]),
            settlement_date=str(table["settlement_date"][i]),
            settlement_venue=str(table["settlement_venue"][i]),
        )
        for name in optional:
            v = float(getattr(cols, name)[i])
            if not np.isnan(v):
                if name == "settlement_cycle_days":
                    t.settlement_cycle_days = int(v)
                else:
                    setattr(t, name, v)
        for name in _FLAGS:
            v = float(getattr(cols, name)[i])
            if not np.isnan(v):
                setattr(t, name, bool(v))
        out.append(t)
    return out
