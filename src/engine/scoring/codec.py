"""Protobuf <-> columns. The only per-trade Python in the request path lives here.

Decoding reads one field at a time across all trades (`map(attrgetter)`, a C
loop, over a plain list of the messages: iterating the repeated field itself
creates a wrapper per message and costs ~6x more) into numpy columns. Optional
numbers are told apart from zero without a `HasField` call per trade: only
trades whose value reads as 0 can be unset, so only those are asked. Dates are
parsed once per distinct string (a request holds a handful) through a cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import InvalidInput
from engine.features.columns import Str, TradeColumns, parse_dates

_ids = attrgetter("trade_id")
_NAT = np.datetime64("NaT", "D").astype(np.int64)
#: "YYYY-MM-DD" -> days since 1970-01-01 (NaT for ""); bounded, cleared when full
_DATE_CACHE: dict[str, int] = {"": int(_NAT)}
_DATE_CACHE_SIZE = 8192


def _dates(trades: Sequence[pb.Trade], name: str) -> npt.NDArray[np.datetime64]:
    text = list(map(attrgetter(name), trades))
    days = list(map(_DATE_CACHE.get, text))
    if None in days:
        new = sorted({t for t, d in zip(text, days, strict=True) if d is None})
        parsed = parse_dates(np.array(new, dtype=np.str_), name, [text.index(t) for t in new])
        if len(_DATE_CACHE) + len(new) > _DATE_CACHE_SIZE:
            _DATE_CACHE.clear()
            _DATE_CACHE[""] = int(_NAT)
        _DATE_CACHE.update(zip(new, parsed.astype(np.int64).tolist(), strict=True))
        days = list(map(_DATE_CACHE.__getitem__, text))
    return np.array(days, dtype=np.int64).view("datetime64[D]")


def _text(trades: Sequence[pb.Trade], name: str) -> Str:
    return np.array(list(map(attrgetter(name), trades)), dtype=object)


def _number(trades: Sequence[pb.Trade], name: str) -> npt.NDArray[np.float64]:
    return np.array(list(map(attrgetter(name), trades)), dtype=np.float64)


def _optional(trades: Sequence[pb.Trade], name: str) -> npt.NDArray[np.float64]:
    """An optional number per trade; NaN where unset. A value *set* to NaN is refused.

    Only trades whose value reads as 0 (or NaN) can be unset, so only those are
    asked (`name in message`, the cheapest presence test upb offers).
    """
    raw = list(map(attrgetter(name), trades))
    values = np.array(raw, dtype=np.float64)
    unset = []
    for i in [i for i, v in enumerate(raw) if not v or v != v]:  # 0, False or NaN
        if name not in trades[i]:
            unset.append(i)
        elif raw[i] != raw[i]:
            raise InvalidInput(name, "is NaN; leave the field unset when the value is unknown", i)
    if unset:
        values[unset] = np.nan
    return values


def decode_trades(trades: Sequence[pb.Trade]) -> tuple[TradeColumns, list[str]]:
    """Columns for `trades`, and their ids as a list (for the response).

    Raises InvalidInput for malformed dates; everything else is checked by
    `engine.features.validate`.
    """
    trades = list(trades)
    ids = list(map(_ids, trades))
    cols = TradeColumns(
        trade_id=np.array(ids, dtype=object),
        account_id=_text(trades, "account_id"),
        counterparty_id=_text(trades, "counterparty_id"),
        instrument_id=_text(trades, "instrument_id"),
        asset_class=np.array(list(map(attrgetter("asset_class"), trades)), dtype=np.int32),
        side=np.array(list(map(attrgetter("side"), trades)), dtype=np.int32),
        quantity=_number(trades, "quantity"),
        price=_number(trades, "price"),
        currency=_text(trades, "currency"),
        trade_date=_dates(trades, "trade_date"),
        settlement_date=_dates(trades, "settlement_date"),
        settlement_cycle_days=_optional(trades, "settlement_cycle_days"),
        settlement_venue=_text(trades, "settlement_venue"),
        inventory_ratio=_optional(trades, "inventory_ratio"),
        on_loan_recall_pending=_optional(trades, "on_loan_recall_pending"),
        ssi_matched=_optional(trades, "ssi_matched"),
        counterparty_fail_rate=_optional(trades, "counterparty_fail_rate"),
        instrument_adv=_optional(trades, "instrument_adv"),
    )
    return cols, ids


def encode_scores(
    response: pb.ScoreResponse,
    trade_ids: Sequence[str],
    probabilities: npt.NDArray[np.floating],
    bands: npt.NDArray[np.int32],
) -> pb.ScoreResponse:
    """Append one TradeScore per trade to `response`, in order."""
    add = response.scores.add
    for i, p, b in zip(trade_ids, probabilities.tolist(), bands.tolist(), strict=True):
        add(trade_id=i, fail_probability=p, risk_band=b)
    return response


def columns_to_trades(cols: TradeColumns) -> list[pb.Trade]:
    """Protobuf trades for `cols` (clients: the CLI, tests, the benchmark)."""
    table = cols.to_table()
    n = len(cols)
    out: list[pb.Trade] = []
    optional = ("settlement_cycle_days", "inventory_ratio", "counterparty_fail_rate", "instrument_adv")
    flags = ("on_loan_recall_pending", "ssi_matched")
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
        for name in flags:
            v = float(getattr(cols, name)[i])
            if not np.isnan(v):
                setattr(t, name, bool(v))
        out.append(t)
    return out
