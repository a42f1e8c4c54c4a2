"""Reading and writing trade tables: CSV, JSON (array of objects), JSON lines, Parquet.

CSV and Parquet go through pyarrow when it is installed (the `[train]` extra;
fast on millions of rows); CSV and JSON also work with the standard library
alone, so `engine score --file` needs nothing beyond the core install.
Columns come back as numpy arrays keyed by name, ready for
`engine.features.columns.from_table`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

Table = dict[str, np.ndarray]


class TableError(ValueError):
    """A table file cannot be read as trades."""


def _columns_from_records(records: list[Mapping[str, Any]], source: Path) -> Table:
    if not records:
        raise TableError(f"{source}: no rows")
    names: list[str] = []
    for rec in records:
        if not isinstance(rec, Mapping):
            raise TableError(f"{source}: every row must be an object, got {type(rec).__name__}")
        for key in rec:
            if key not in names:
                names.append(key)
    out: Table = {}
    for name in names:
        values = [rec.get(name) for rec in records]
        if all(isinstance(v, bool) or v is None for v in values):
            out[name] = np.array(["" if v is None else str(v).lower() for v in values], dtype=np.str_)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) or v is None for v in values):
            out[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        else:
            out[name] = np.array(["" if v is None else str(v) for v in values], dtype=np.str_)
    return out


def _read_csv_stdlib(path: Path) -> Table:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TableError(f"{path}: empty file") from None
        rows = list(reader)
    width = len(header)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise TableError(f"{path}: row {i} has {len(row)} fields, header has {width}")
    if not rows:
        raise TableError(f"{path}: no rows")
    cols = list(zip(*rows, strict=True))
    return {name: np.array(col, dtype=np.str_) for name, col in zip(header, cols, strict=True)}


def _arrow_to_numpy(table: Any) -> Table:
    out: Table = {}
    for name in table.column_names:
        col = table.column(name)
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype.kind == "O":
            arr = np.array(["" if v is None else str(v) for v in arr.tolist()], dtype=np.str_)
        elif arr.dtype.kind == "b" and col.null_count:
            arr = np.array(["" if v is None else str(v).lower() for v in col.to_pylist()], dtype=np.str_)
        out[name] = arr
    return out


def read_table(path: Path | str) -> Table:
    """Columns of a .csv, .parquet, .json or .jsonl file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.is_file():
        raise TableError(f"{p}: no such file")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise TableError("reading Parquet needs pyarrow: pip install 'tradescore-engine[train]'") from exc
        return _arrow_to_numpy(pq.read_table(p))
    if suffix == ".csv":
        try:
            import pyarrow.csv as pacsv
        except ImportError:
            return _read_csv_stdlib(p)
        # every column as text first: enums, ids and dates must not be guessed into other types
        try:
            table = pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
        except Exception as exc:  # pyarrow raises ArrowInvalid with the line number
            raise TableError(f"{p}: {exc}") from exc
        return _arrow_to_numpy(table)
    if suffix == ".json":
        try:
            records = json.loads(p.read_text())
        except ValueError as exc:
            raise TableError(f"{p}: not JSON: {exc}") from exc
        if not isinstance(records, list):
            raise TableError(f"{p}: expected a JSON array of trade objects")
        return _columns_from_records(records, p)
    if suffix in (".jsonl", ".ndjson"):
        records = []
        for i, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise TableError(f"{p}: line {i + 1} is not JSON: {exc}") from exc
        return _columns_from_records(records, p)
    raise TableError(f"{p}: unknown file type {suffix!r} (use .csv, .parquet, .json or .jsonl)")


def write_table(table: Mapping[str, np.ndarray], path: Path | str) -> None:
    """Write columns as .csv, .parquet or .jsonl (Parquet needs pyarrow)."""
    p = Path(path)
    suffix = p.suffix.lower()
    names = list(table)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({n: np.asarray(table[n]) for n in names}), p)
        return
    columns = [np.asarray(table[n]).tolist() for n in names]
    rows = zip(*columns, strict=True)
    if suffix == ".csv":
        with p.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(names)
            for row in rows:
                w.writerow(["" if isinstance(v, float) and v != v else v for v in row])
        return
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = [
            {n: v for n, v in zip(names, row, strict=True) if not (isinstance(v, float) and v != v)}
            for row in rows
        ]
        with p.open("w") as fh:
            if suffix == ".json":
                json.dump(records, fh)
            else:
                for rec in records:
                    fh.write(json.dumps(rec) + "\n")
        return
    raise TableError(f"{p}: unknown file type {suffix!r} (use .csv, .parquet, .json or .jsonl)")
