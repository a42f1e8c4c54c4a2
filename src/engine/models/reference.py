"""Reference tables shipped in a model bundle, used to enrich requests.

- counterparties.csv: counterparty_id, fail_rate, trades — settlement history
  per counterparty (fail_rate fills `Trade.counterparty_fail_rate` when unset);
- instruments.csv: instrument_id, adv, fail_rate — liquidity and fail history
  per instrument (adv fills `Trade.instrument_adv` when unset);
- fx.csv: currency, usd_per_unit — to put notionals on one scale.

Look-ups go through a dict built once per table (`map(dict.get)` runs in C and
beats `np.searchsorted` over unicode arrays, which recasts the table whenever
the widths differ); an id that is not in a table yields NaN, which the model reads as "missing", never as 0.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.errors import BundleError

F64 = npt.NDArray[np.float64]
Str = npt.NDArray[np.str_]


@dataclass(frozen=True, slots=True)
class KeyedTable:
    """Rows keyed by a sorted string id, with float columns."""

    keys: Str
    columns: Mapping[str, F64]
    #: key -> row, built once (the look-ups of table input and of the request decoder start here)
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {k: i for i, k in enumerate(self.keys.tolist())})

    @staticmethod
    def build(keys: npt.ArrayLike, columns: Mapping[str, npt.ArrayLike]) -> KeyedTable:
        k = np.asarray(keys).astype(np.str_)
        order = np.argsort(k, kind="stable")
        k = k[order]
        if k.size and (k[1:] == k[:-1]).any():
            raise BundleError("reference table has duplicate keys")
        cols = {name: np.asarray(v, dtype=np.float64)[order] for name, v in columns.items()}
        for name, v in cols.items():
            if v.shape != k.shape:
                raise BundleError(f"reference column {name!r} has {v.shape[0]} rows, keys {k.shape[0]}")
        return KeyedTable(k, cols)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def positions(self, ids: Str) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Row of each id in this table and whether it was found."""
        n = ids.shape[0]
        pos = np.fromiter(map(self.index.get, ids.tolist(), repeat(-1)), dtype=np.intp, count=n)
        found = pos >= 0
        return np.where(found, pos, 0), found

    def write_csv(self, path: Path, key_name: str) -> None:
        names = list(self.columns)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([key_name, *names])
            cols = [self.columns[n] for n in names]
            for i, key in enumerate(self.keys.tolist()):
                w.writerow([key, *(repr(float(c[i])) for c in cols)])

    @staticmethod
    def read_csv(path: Path, key_name: str, columns: tuple[str, ...]) -> KeyedTable:
        try:
            with path.open(newline="") as fh:
                rows = list(csv.reader(fh))
        except OSError as exc:
            raise BundleError(f"cannot read reference table {path.name}: {exc}") from exc
        if not rows or rows[0][: len(columns) + 1] != [key_name, *columns]:
            raise BundleError(f"{path.name}: header must start with {[key_name, *columns]}")
        body = rows[1:]
        try:
            data = {
                name: np.array([float(r[j + 1]) for r in body], dtype=np.float64)
                for j, name in enumerate(columns)
            }
        except (ValueError, IndexError) as exc:
            raise BundleError(f"{path.name}: malformed row: {exc}") from exc
        return KeyedTable.build([r[0] for r in body], data)


@dataclass(frozen=True, slots=True)
class ReferenceTables:
    counterparties: KeyedTable  # fail_rate, trades
    instruments: KeyedTable  # adv, fail_rate
    fx: KeyedTable  # usd_per_unit

    FILES = {
        "counterparties": ("reference/counterparties.csv", "counterparty_id", ("fail_rate", "trades")),
        "instruments": ("reference/instruments.csv", "instrument_id", ("adv", "fail_rate")),
        "fx": ("reference/fx.csv", "currency", ("usd_per_unit",)),
    }

    def write(self, root: Path) -> list[str]:
        """Write the tables under `root`; returns their bundle-relative paths."""
        out = []
        for attr, (rel, key, _) in self.FILES.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            getattr(self, attr).write_csv(path, key)
            out.append(rel)
        return out

    @staticmethod
    def read(root: Path) -> ReferenceTables:
        tables = {
            attr: KeyedTable.read_csv(root / rel, key, cols)
            for attr, (rel, key, cols) in ReferenceTables.FILES.items()
        }
        return ReferenceTables(**tables)
