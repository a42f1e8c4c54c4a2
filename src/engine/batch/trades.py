"""A piece of a trades dataset as `TradeColumns`: the engine's table conversion, columns and
validation rules, with errors naming the piece's file and row. `score-batch` and the distributed
training read their partitions with it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.batch import sources
from engine.batch.errors import DataError, UsageError
from engine.features.columns import TradeColumns


@dataclass(frozen=True, slots=True)
class TradePiece:
    trades: TradeColumns
    #: the piece's columns as read (labels and anything else beside the trade's fields)
    table: dict[str, Any]
    #: rows of `table` kept in `trades` (all of them unless invalid ones were dropped)
    kept: np.ndarray
    #: invalid rows left out, by "field: reason"
    dropped: Counter[str]
    #: rows read
    rows: int


def read_trades(piece: sources.Piece, drop_invalid: bool) -> TradePiece:
    """Read, convert and validate a piece; the first invalid trade is a DataError naming the file and
    line or row, field and reason, unless `drop_invalid` (then left out and counted)."""
    from engine.errors import InvalidInput
    from engine.features.columns import from_table
    from engine.features.validate import problems
    from engine.trade_files import arrow_columns

    table = arrow_columns(sources.read_arrow(piece, sources.columns_of(piece)))
    try:
        trades = from_table(table)
    except KeyError as exc:
        raise UsageError(f"{piece.where()}: {exc.args[0]}") from None
    except InvalidInput as exc:
        raise DataError(f"{piece.where(exc.index)}: {exc.field}: {exc.reason}") from None
    rows = len(trades)
    kept = np.arange(rows)
    dropped: Counter[str] = Counter()
    bad, found = problems(trades)
    if found:
        if not drop_invalid:
            first = found[0]
            raise DataError(
                f"{piece.where(first.index)}: {first.field}: {first.reason}; {int(bad.sum())} invalid "
                "row(s) in this partition (fix them, or pass --drop-invalid to leave them out and count them)"
            )
        dropped.update({f"{e.field}: {e.reason}": e.count for e in found})
        kept = np.flatnonzero(~bad)
        trades = trades.take(kept)
    return TradePiece(trades, table, kept, dropped, rows)
