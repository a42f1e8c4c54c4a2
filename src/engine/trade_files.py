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

from engine.features.columns import BOOL_COLUMNS, DATE_COLUMNS, TEXT_COLUMNS

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
    import pyarrow as pa

    out: Table = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            # nulls as "", converted in C: the same array as the loop below, ~5x faster
            out[name] = col.fill_null("").to_numpy(zero_copy_only=False).astype(np.str_)
            continue
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype.kind == "O":
            arr = np.array(["" if v is None else str(v) for v in arr.tolist()], dtype=np.str_)
        elif arr.dtype.kind == "b" and col.null_count:
            arr = np.array(["" if v is None else str(v).lower() for v in col.to_pylist()], dtype=np.str_)
        out[name] = arr
    return out


def arrow_columns(table: Any) -> Table:
    """Columns of an Arrow table as `read_table` gives them (text nulls as ""): for readers of other
    sources (engine.batch reads files piece by piece)."""
    return _arrow_to_numpy(table)


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
        # ids, enums and codes stay text (a CUSIP "037833100" must keep its zero); numbers,
        # booleans and dates are typed by pyarrow, empty cells of those becoming nulls
        import pyarrow as pa

        options = pacsv.ConvertOptions(
            strings_can_be_null=False, column_types={name: pa.string() for name in TEXT_COLUMNS}
        )
        try:
            table = pacsv.read_csv(p, convert_options=options)
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


def _arrow_table(table: Mapping[str, np.ndarray]) -> Any:
    """A pyarrow table with real nulls (NaN / empty date -> null) and typed columns."""
    import pyarrow as pa

    arrays = {}
    for name, values in table.items():
        if name in BOOL_COLUMNS:
            arrays[name] = pa.array(values == 1.0, mask=np.isnan(values), type=pa.bool_())
        elif name == "settlement_cycle_days":
            arrays[name] = pa.array(
                np.nan_to_num(values).astype(np.int32), mask=np.isnan(values), type=pa.int32()
            )
        elif name in DATE_COLUMNS:
            days = values.astype("datetime64[D]") if values.dtype.kind == "M" else None
            if days is None:
                empty = values == ""
                days = np.where(empty, "NaT", values).astype("datetime64[D]")
            arrays[name] = pa.array(days, mask=np.isnat(days), type=pa.date32())
        elif values.dtype.kind == "f":
            arrays[name] = pa.array(values, mask=np.isnan(values), type=pa.float64())
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def _json_strings(values: np.ndarray) -> np.ndarray:
    text = values.astype(np.str_)
    text = np.strings.replace(np.strings.replace(text, "\\", "\\\\"), '"', '\\"')
    return np.strings.add(np.strings.add('"', text), '"')


def _json_numbers(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iub":
        return values.astype(np.int64).astype(np.str_)
    shortest = values.astype(np.float64).astype(np.str_)  # shortest repr that round-trips
    return np.where(np.isfinite(values), shortest, "null")


def _jsonl_lines(table: Mapping[str, np.ndarray]) -> str:
    """JSON lines for one chunk of rows: values formatted column-wise by numpy, then joined."""
    parts: list[list[str]] = []
    names = list(table)
    for j, name in enumerate(names):
        values = table[name]
        if name in BOOL_COLUMNS:
            text = np.where(np.isnan(values), "null", np.where(values == 1.0, "true", "false"))
        elif name in DATE_COLUMNS:
            v = values.astype(np.str_)
            text = np.where(v == "", "null", _json_strings(v))
        elif values.dtype.kind in "fiub":
            text = _json_numbers(values)
        else:
            text = _json_strings(values)
        key = ("{" if j == 0 else ", ") + f'"{name}": '
        if j == len(names) - 1:
            text = np.strings.add(text, "}\n")
        parts.append(np.strings.add(key, text).tolist())
    return "".join(map("".join, zip(*parts, strict=True)))


def _write_jsonl(path: Path, table: Mapping[str, np.ndarray], chunk: int = 100_000) -> None:
    """JSON lines in chunks of rows (bounded memory)."""
    n = len(next(iter(table.values())))
    with path.open("w") as fh:
        for start in range(0, n, chunk):
            fh.write(_jsonl_lines({k: v[start : start + chunk] for k, v in table.items()}))


def write_table(table: Mapping[str, np.ndarray], path: Path | str) -> None:
    """Write trade columns as .csv, .parquet or .jsonl (by suffix), vectorised.

    Missing values are empty CSV cells / Parquet nulls / JSON nulls, booleans
    true/false, dates "YYYY-MM-DD". Parquet needs pyarrow; CSV uses it when
    installed and the standard library otherwise.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        _write_jsonl(p, table)
        return
    if suffix == ".json":  # one array of objects: fine for samples, not for millions of rows
        p.write_text("[" + ",\n".join(_jsonl_lines(table).splitlines()) + "]\n")
        return
    if suffix not in (".csv", ".parquet"):
        raise TableError(f"{p}: unknown file type {p.suffix!r} (use .csv, .parquet, .json or .jsonl)")
    try:
        arrow = _arrow_table(table)
    except ImportError:
        if suffix == ".parquet":
            raise TableError(
                "writing Parquet needs pyarrow: pip install 'tradescore-engine[train]'"
            ) from None
        _write_csv_stdlib(p, table)
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(arrow, p, compression="zstd")
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(arrow, p, write_options=pacsv.WriteOptions(quoting_style="needed"))


def _write_csv_stdlib(p: Path, table: Mapping[str, np.ndarray]) -> None:
    names = list(table)
    columns = [np.asarray(table[n]).tolist() for n in names]
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for row in zip(*columns, strict=True):
            w.writerow(["" if isinstance(v, float) and v != v else v for v in row])
