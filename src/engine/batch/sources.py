"""Where a batch job's data comes from: files, folders of partitions, or a PostgreSQL query.

A source is split into *pieces*, each one Dask partition, each read by one task, so that
memory is bounded by the piece and not by the input:

- Parquet: row groups, gathered up to `block_rows` rows per piece (a file's row groups are
  never split; write files with row groups of a reasonable size);
- CSV: byte ranges of `block_bytes`, cut at line ends (every value is read as text and
  typed by the mapping, so "007" stays "007" until the mapping says it is a number);
- PostgreSQL (`postgresql://user@host:5432/db` plus a query): `parts` pieces, each the
  query's rows whose key hashes (PostgreSQL's `hashtext`) to that piece, ordered by the
  selected columns so that every run reads them in the same order.

A folder is read whole: its `*.parquet` or `*.csv` files (one kind, recursively, sorted by
path). Each piece knows where its rows come from, so an error names the file and the row
(`Piece.where`); CSV line numbers are counted only on that error path.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from engine.batch.errors import DataError, UsageError
from engine.batch.options import DEFAULT_BLOCK_BYTES, DEFAULT_BLOCK_ROWS, DEFAULT_SQL_PARTS

SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True, slots=True)
class Piece:
    """One partition of a source: a file's row groups or byte range, or one hash part of a query."""

    kind: str  # "parquet", "csv" or "sql"
    #: the file, or the database URL without its password
    path: str
    #: its position among the source's pieces (row order: pieces in order, rows in order)
    number: int
    #: parquet: the row groups, and the file row of the first one
    row_groups: tuple[int, ...] = ()
    first_row: int = 0
    #: parquet: rows in the piece (known from the footer; None for CSV and SQL)
    rows: int | None = None
    #: csv: [start, end) bytes; rows start at the first line beginning in the range
    byte_range: tuple[int, int] = (0, 0)
    #: sql: the full URL (with password), the query, the key columns hashed, part of parts
    url: str = ""
    query: str = ""
    key_columns: tuple[str, ...] = ()
    part: int = 0
    parts: int = 1

    def where(self, row: int | None = None) -> str:
        """The piece and, with `row` (0-based within the piece), the row: for the person fixing it."""
        if self.kind == "parquet":
            return self.path if row is None else f"{self.path}, row {self.first_row + row:,}"
        if self.kind == "csv":
            return self.path if row is None else f"{self.path}, line {self._csv_line(row):,}"
        head = f"{self.path} query part {self.part + 1}/{self.parts}"
        return head if row is None else f"{head}, row {row:,}"

    def _csv_line(self, row: int) -> int:
        """The 1-based file line of data row `row` of this piece (the header is line 1)."""
        start = self.byte_range[0]
        with open(self.path, "rb") as fh:
            before = 0
            remaining = start
            while remaining > 0:
                chunk = fh.read(min(remaining, 1 << 24))
                if not chunk:
                    break
                before += chunk.count(b"\n")
                remaining -= len(chunk)
        # a piece starting mid-line begins at the next line; a piece at 0 begins after the header
        return before + row + (2 if start == 0 else 1)


def redact(url: str) -> str:
    """A database URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _files(root: Path) -> list[Path]:
    if root.is_file():
        if root.suffix.lower() not in SUFFIXES:
            raise UsageError(f"{root}: unknown file type {root.suffix!r} (use .parquet or .csv, or a folder)")
        return [root]
    if not root.is_dir():
        raise UsageError(f"{root}: no such file or folder")
    found = {
        s: sorted(p for p in root.rglob(f"*{s}") if p.is_file() and not p.name.startswith("."))
        for s in SUFFIXES
    }
    kinds = [s for s, files in found.items() if files]
    if not kinds:
        raise UsageError(f"{root}: no .parquet or .csv files in this folder")
    if len(kinds) > 1:
        raise UsageError(f"{root}: holds both .parquet and .csv files; a source is one kind")
    return found[kinds[0]]


def _parquet_pieces(files: Sequence[Path], block_rows: int, start: int) -> list[Piece]:
    import pyarrow.parquet as pq

    pieces: list[Piece] = []
    for f in files:
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as exc:  # noqa: BLE001 - pyarrow's own error types: say which file
            raise DataError(f"{f}: not a readable Parquet file: {exc}") from exc
        group: list[int] = []
        rows = first = row = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if group and rows + n > block_rows:
                pieces.append(Piece("parquet", str(f), start + len(pieces), tuple(group), first, rows))
                group, rows, first = [], 0, row
            group.append(g)
            rows += n
            row += n
        if group or meta.num_row_groups == 0:
            pieces.append(Piece("parquet", str(f), start + len(pieces), tuple(group), first, rows))
    return pieces


def _csv_pieces(files: Sequence[Path], block_bytes: int, start: int) -> list[Piece]:
    pieces: list[Piece] = []
    for f in files:
        size = f.stat().st_size
        for lo in range(0, max(size, 1), block_bytes):
            pieces.append(
                Piece("csv", str(f), start + len(pieces), byte_range=(lo, min(size, lo + block_bytes)))
            )
    return pieces


def plan(
    location: str,
    *,
    query: str | None = None,
    key_columns: Sequence[str] = (),
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    sql_parts: int = DEFAULT_SQL_PARTS,
) -> list[Piece]:
    """The pieces of a source: a file, a folder of partitions, or a PostgreSQL URL with `query`."""
    if location.startswith(("postgresql://", "postgres://")):
        if not query:
            raise UsageError(f"{redact(location)}: a PostgreSQL source needs a query (--a-query / --b-query)")
        return [
            Piece(
                "sql",
                redact(location),
                i,
                url=location,
                query=query,
                key_columns=tuple(key_columns),
                part=i,
                parts=sql_parts,
            )
            for i in range(sql_parts)
        ]
    if query:
        raise UsageError(f"{location}: a query applies to a postgresql:// source, not to files")
    files = _files(Path(location))
    if files[0].suffix.lower() == ".parquet":
        return _parquet_pieces(files, block_rows, 0)
    return _csv_pieces(files, block_bytes, 0)


def columns_of(piece: Piece) -> list[str]:
    """The column names of a piece's source (the header, the Parquet schema, the query's columns)."""
    if piece.kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(piece.path).schema_arrow.names)
    if piece.kind == "csv":
        with open(piece.path, "rb") as fh:
            header = fh.readline()
        return _csv_header(header, piece.path)
    with _connect(piece) as conn:
        cur = conn.execute(f"SELECT * FROM ({piece.query}) AS q LIMIT 0".encode())
        return [d.name for d in cur.description or ()]


def _csv_header(line: bytes, path: str) -> list[str]:
    import csv

    try:
        return next(csv.reader([line.decode("utf-8").rstrip("\r\n")]))
    except (UnicodeDecodeError, StopIteration) as exc:
        raise DataError(f"{path}: line 1: not a CSV header: {exc}") from exc


def read(piece: Piece, columns: Sequence[str]) -> pd.DataFrame:
    """The piece's rows, `columns` only, as pandas (see `read_arrow`)."""
    return read_arrow(piece, columns).to_pandas()


def read_arrow(piece: Piece, columns: Sequence[str]) -> Any:
    """The piece's rows, `columns` only, as an Arrow table (Parquet and SQL typed as stored, CSV all
    text, empty = null); DataError naming the piece when it cannot be read."""
    try:
        if piece.kind == "parquet":
            return _read_parquet(piece, columns)
        if piece.kind == "csv":
            return _read_csv(piece, columns)
        return _read_sql(piece, columns)
    except (DataError, UsageError):
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure: name the piece
        raise DataError(f"{piece.where()}: cannot read: {type(exc).__name__}: {exc}") from exc


def _read_parquet(piece: Piece, columns: Sequence[str]) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(piece.path).read_row_groups(list(piece.row_groups), columns=list(columns))


def _read_csv(piece: Piece, columns: Sequence[str]) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    lo, hi = piece.byte_range
    with open(piece.path, "rb") as fh:
        header = fh.readline()
        names = _csv_header(header, piece.path)
        if lo > 0:
            fh.seek(lo - 1)
            if fh.read(1) != b"\n":
                fh.readline()  # the line that began before `lo` belongs to the previous piece
        else:
            fh.seek(len(header))
        begin = fh.tell()
        body = fh.read(max(0, hi - begin)) if begin < hi else b""
        if body and not body.endswith(b"\n"):
            body += fh.readline()
    if not body.strip():
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    options = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in names},
        include_columns=list(columns),
        strings_can_be_null=True,
        null_values=[""],
    )
    return pacsv.read_csv(
        io.BytesIO(header + body), read_options=pacsv.ReadOptions(use_threads=False), convert_options=options
    )


def _connect(piece: Piece) -> Any:
    import psycopg

    try:
        return psycopg.connect(piece.url, connect_timeout=10)
    except psycopg.Error as exc:
        raise DataError(f"{piece.path}: cannot connect: {str(exc).strip()}") from exc


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_sql(piece: Piece, columns: Sequence[str]) -> Any:
    import psycopg

    cols = ", ".join(_quote(c) for c in columns)
    key = ", ".join(f"{_quote(k)}::text" for k in piece.key_columns)
    # no parameters: the query's own % signs (LIKE 'x%') must stay as written; the part numbers are ints
    sql = (
        f"SELECT {cols} FROM ({piece.query}) AS q "
        f"WHERE mod(mod(hashtext(concat_ws(chr(31), {key}))::bigint, {int(piece.parts)}) "
        f"+ {int(piece.parts)}, {int(piece.parts)}) = {int(piece.part)} ORDER BY {cols}"
    )
    with _connect(piece) as conn:
        try:
            cur = conn.execute(sql.encode())
            rows = cur.fetchall()
        except psycopg.Error as exc:
            raise DataError(f"{piece.where()}: the query failed: {str(exc).strip()}") from exc
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for c in frame.columns:  # numeric -> Decimal objects: floats, as Parquet would hold them
        values = frame[c].dropna()
        if frame[c].dtype == object and len(values) and isinstance(values.iloc[0], Decimal):
            frame[c] = frame[c].astype("float64")
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)
