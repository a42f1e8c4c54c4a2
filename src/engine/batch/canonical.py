"""One side's piece of an extract, read through the mapping into the canonical frame.

Both extracts become frames of the same columns, whatever each system calls and types them:

| column | holds |
| --- | --- |
| `k0`, `k1`, ... | the key parts, as text |
| `f0`, `f1`, ... | the compared fields, typed: text (normalised), number (float64, scaled), date and |
| | timestamp (float64 unix seconds; a date is its midnight, UTC) |
| `d0`, `d1`, ... | the dimensions read from a column, as text (one taken from a field has none) |
| `_ts` | the record's last update (float64 unix seconds) |
| `_side` | 0 for system A, 1 for system B |
| `_order` | the row's place in its extract: piece number << 32 + row (file order; duplicates pair in it) |
| `_hash` | a stable 64-bit hash of the key (`key_hash`: FNV-1a of the parts, mixed), the same on |
| | every machine: the shuffle and the IsolationForest sample use it |

Missing values are nulls (text) or NaN (numbers, times). A value the mapping's type cannot
hold is a `DataError` naming the file, the row, the column, the field and the key; a column
the mapping names that the extract lacks is a `UsageError` (`check_columns`, on the client,
before any task runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import pandas as pd

from engine.batch import sources
from engine.batch.errors import DataError, UsageError
from engine.batch.mapping import Column, Field, MappingSpec
from engine.batch.sources import Piece

F64 = npt.NDArray[np.float64]
SIDE, ORDER, HASH, TS = "_side", "_order", "_hash", "_ts"
_UNIT_SECONDS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
DAY = 86_400.0


def key_columns(spec: MappingSpec) -> list[str]:
    return [f"k{i}" for i in range(len(spec.key))]


def field_columns(spec: MappingSpec) -> list[str]:
    return [f"f{i}" for i in range(len(spec.fields))]


def dimension_columns(spec: MappingSpec) -> list[str]:
    return [f"d{i}" for i, d in enumerate(spec.dimensions) if d.field is None]


def meta(spec: MappingSpec) -> pd.DataFrame:
    """The canonical frame with no rows: its columns and dtypes (Dask's `meta`)."""
    cols: dict[str, pd.Series] = {}
    for k in key_columns(spec):
        cols[k] = pd.Series([], dtype="str")
    for name, f in zip(field_columns(spec), spec.fields, strict=True):
        cols[name] = pd.Series([], dtype="str" if f.type == "text" else "float64")
    for d in dimension_columns(spec):
        cols[d] = pd.Series([], dtype="str")
    cols[TS] = pd.Series([], dtype="float64")
    cols[SIDE] = pd.Series([], dtype="int8")
    cols[ORDER] = pd.Series([], dtype="int64")
    cols[HASH] = pd.Series([], dtype="uint64")
    return pd.DataFrame(cols)


def _uses(spec: MappingSpec, side: str) -> list[tuple[str, str]]:
    """(column, what the mapping reads it for) for every column of `side`."""
    s = spec.side(side)
    out = [(s.updated_at.name, f"{side}.updated_at")]
    out += [(getattr(k, side).name, f"key part {k.name}") for k in spec.key]
    out += [(getattr(f, side).name, f"field {f.name}") for f in spec.fields]
    out += [
        (getattr(d, side).name, f"dimension {d.name}")
        for d in spec.dimensions
        if getattr(d, side) is not None
    ]
    return out


def check_columns(piece: Piece, side: str, spec: MappingSpec) -> None:
    """UsageError naming the source and each column the mapping reads that it lacks."""
    have = set(sources.columns_of(piece))
    missing = [(c, why) for c, why in _uses(spec, side) if c not in have]
    if missing:
        listed = "; ".join(f"{c!r} ({why})" for c, why in missing)
        raise UsageError(
            f"extract {side.upper()} ({piece.where()}): no column {listed} as {spec.path} says; "
            f"its columns are: {', '.join(sorted(have))}"
        )


class _Context:
    """What an error message needs: the side, the piece, the key of each row."""

    def __init__(self, side: str, piece: Piece, keys: pd.DataFrame | None) -> None:
        self.side = side
        self.piece = piece
        self.keys = keys

    def fail(
        self, rows: npt.NDArray[np.bool_], column: str, what: str, problem: str, values: pd.Series
    ) -> DataError:
        bad = np.flatnonzero(rows)
        first = int(bad[0])
        key = ""
        if self.keys is not None:
            key = " (key " + ", ".join(f"{v}" for v in self.keys.iloc[first].tolist()) + ")"
        more = f"; {bad.size - 1:,} more row(s) in this partition" if bad.size > 1 else ""
        return DataError(
            f"extract {self.side.upper()} ({self.piece.where(first)}){key}: column {column!r} ({what}): "
            f"{problem}, got {str(values.iloc[first])[:60]!r}{more}"
        )


def _text(values: pd.Series) -> pd.Series:
    """Any column as text: integers without a decimal point, integral floats likewise."""
    kind = values.dtype.kind
    if kind == "b":
        return values.map({True: "true", False: "false"}).astype("str")
    if kind in "iu":
        return values.astype("str")
    if kind == "f":
        out = values.astype("str")
        integral = values.notna() & (values == np.round(values)) & (values.abs() < 2**53)
        out[integral] = values[integral].astype("int64").astype("str")
        return out
    if kind == "M":
        return (
            pd.Series(np.datetime_as_string(values.to_numpy(), unit="auto"), index=values.index)
            .where(values.notna())
            .astype("str")
        )
    return values.astype("str")


def _normalised(values: pd.Series, steps: Sequence[str]) -> pd.Series:
    for step in steps:
        if step == "trim":
            values = values.str.strip()
        elif step == "lower":
            values = values.str.lower()
        elif step == "upper":
            values = values.str.upper()
        elif step == "collapse_whitespace":
            values = values.str.replace(r"\s+", " ", regex=True)
    return values


def _number(values: pd.Series, col: Column, what: str, ctx: _Context) -> F64:
    kind = values.dtype.kind
    if kind in "bM" or (kind == "O" and values.map(lambda v: isinstance(v, bool)).any()):
        holds = "booleans" if kind != "M" else "timestamps"
        raise ctx.fail(
            values.notna().to_numpy(), col.name, what, f"holds {holds}, the mapping wants numbers", values
        )
    if kind in "iuf":
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = values.astype("str").str.strip()
        parsed = pd.to_numeric(text, errors="coerce")
        out = np.asarray(parsed, dtype=np.float64)
        bad = (text.notna() & (text != "")).to_numpy() & np.isnan(out)
        if bad.any():
            raise ctx.fail(bad, col.name, what, "not a number", values)
    if col.scale is not None:
        out = out * col.scale
    bad = np.isinf(out)
    if bad.any():
        raise ctx.fail(bad, col.name, what, "not a finite number", values)
    return np.asarray(out, dtype=np.float64)


def _seconds(values: pd.Series, col: Column, what: str, ctx: _Context, day: bool) -> F64:
    """Unix seconds (float64, NaN missing) from timestamps, epoch numbers or text; a day floors."""
    kind = values.dtype.kind
    if kind == "b":
        raise ctx.fail(
            values.notna().to_numpy(), col.name, what, "holds booleans, the mapping wants times", values
        )
    if kind in "iuf":
        if col.unit is None:
            raise UsageError(
                f"extract {ctx.side.upper()} ({ctx.piece.where()}): column {col.name!r} ({what}) holds "
                f"numbers: give its epoch unit in {what.split(' ')[-1]}'s column entry "
                "({column: ..., unit: s|ms|us|ns})"
            )
        out = values.to_numpy(dtype=np.float64, na_value=np.nan) / _UNIT_SECONDS[col.unit]
    elif kind == "M":
        stamps = values.dt.tz_convert("UTC").dt.tz_localize(None) if values.dt.tz is not None else values
        ns = stamps.astype("datetime64[ns]").to_numpy()
        out = np.where(np.isnat(ns), np.nan, ns.astype("int64") / 1e9)
    else:
        if col.unit is not None:
            return _seconds(pd.Series(_number(values, Column(col.name), what, ctx)), col, what, ctx, day)
        present = values.notna().to_numpy().copy()
        sample = values[values.notna()]
        if len(sample) and not isinstance(sample.iloc[0], str):
            parsed = pd.to_datetime(values, errors="coerce", utc=True)  # date / datetime objects (SQL)
        else:
            text = values.astype("str").str.strip()
            parsed = pd.to_datetime(text, format=col.format or "ISO8601", errors="coerce", utc=True)
            present &= (text != "").to_numpy()
        ns = parsed.dt.tz_localize(None).astype("datetime64[ns]").to_numpy()
        bad = present & np.isnat(ns)
        if bad.any():
            want = f"a time as {col.format}" if col.format else "an ISO 8601 date or time"
            raise ctx.fail(bad, col.name, what, f"not {want}", values)
        out = np.where(np.isnat(ns), np.nan, ns.astype("int64") / 1e9)
    out = np.asarray(out, dtype=np.float64)
    return np.floor(out / DAY) * DAY if day else out


def _field(values: pd.Series, f: Field, col: Column, ctx: _Context) -> pd.Series | F64:
    what = f"field {f.name}"
    if f.type == "text":
        return _normalised(_text(values), f.normalise)
    if f.type == "number":
        return _number(values, col, what, ctx)
    return _seconds(values, col, what, ctx, day=f.type == "date")


# -- the fast path: Arrow compute on whole columns; anything unusual (and every error) goes to the
# -- pandas functions above, which handle every input type and name the bad row


def _arrow_text(column: Any) -> Any:
    """A column as an Arrow string array, or None when it is not text or integers (pandas path)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.string())
    return None


def _arrow_normalised(arr: Any, steps: Sequence[str]) -> Any:
    import numpy as np
    import pyarrow.compute as pc

    for step in steps:
        if step == "trim":
            arr = pc.utf8_trim_whitespace(arr)
        elif step == "lower":
            arr = pc.utf8_lower(arr)
        elif step == "upper":
            arr = pc.utf8_upper(arr)
        elif step == "collapse_whitespace":
            # the regex only where a run of spaces or another whitespace character occurs (rare)
            odd = pc.match_substring(arr, "  ")
            for other in ("\t", "\n", "\r", "\f", "\v"):  # plain scans: a regex scan costs 10x more
                odd = pc.or_(odd, pc.match_substring(arr, other))
            rows = np.flatnonzero(odd.fill_null(False).to_numpy(zero_copy_only=False))
            if rows.size:
                fixed = pc.replace_substring_regex(arr.take(rows), "\\s+", " ")
                arr = pc.replace_with_mask(arr, odd.fill_null(False), fixed)
    return arr


def _arrow_number(column: Any, scale: float | None) -> F64 | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        if not pa.types.is_string(arr.type):
            return None
        try:
            arr = pc.cast(pc.utf8_trim_whitespace(arr), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
    out = np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if scale is not None:
        out = out * scale
    return None if np.isinf(out).any() else out


def _arrow_seconds(column: Any, col: Column, day: bool) -> F64 | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if col.unit is not None or col.format is not None:
        return None
    if pa.types.is_string(arr.type):
        present = pc.and_(pc.is_valid(arr), pc.not_equal(pc.utf8_length(arr), 0))
        try:
            arr = pc.cast(arr, pa.timestamp("us"))
        except pa.ArrowInvalid:
            try:
                arr = pc.cast(column, pa.timestamp("us", tz="UTC"))
            except pa.ArrowInvalid:
                return None
        if not pc.all(pc.or_(pc.invert(present), pc.is_valid(arr))).as_py():
            return None
    elif pa.types.is_date(arr.type):
        arr = pc.cast(pc.cast(arr, pa.date32()), pa.timestamp("s"))
    elif not pa.types.is_timestamp(arr.type):
        return None
    micros = pc.cast(pc.cast(arr, pa.timestamp("us", tz=getattr(arr.type, "tz", None))), pa.int64())
    out = np.asarray(pc.cast(micros, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64) / 1e6
    return np.floor(out / DAY) * DAY if day else out


def _series(column: Any) -> pd.Series:
    return column.to_pandas().reset_index(drop=True)


def load(piece: Piece, side: str, spec: MappingSpec) -> pd.DataFrame:
    """Read one piece of side `side` ("a" or "b") into the canonical frame, as pandas."""
    frame: pd.DataFrame = load_arrow(piece, side, spec).to_pandas()
    return frame


def load_arrow(piece: Piece, side: str, spec: MappingSpec) -> Any:
    """Read one piece of side `side` ("a" or "b") into the canonical frame, as an Arrow table."""
    import pyarrow as pa

    raw = sources.read_arrow(piece, spec.columns(side))
    n = raw.num_rows
    out: dict[str, Any] = {}
    keys: list[Any] = []
    for part in spec.key:
        col = raw.column(getattr(part, side).name)
        text = _arrow_text(col)
        keys.append(text if text is not None else pa.array(_text(_series(col)).tolist(), pa.string()))
    key_frame = pd.DataFrame({f"k{i}": k.to_pandas() for i, k in enumerate(keys)})
    ctx = _Context(side, piece, key_frame)
    for k, part, arr in zip(key_columns(spec), spec.key, keys, strict=True):
        import pyarrow.compute as pc

        empty = pc.or_(pc.is_null(arr), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0))
        missing = empty.fill_null(True).to_numpy(zero_copy_only=False)
        if missing.any():
            raise ctx.fail(
                missing, getattr(part, side).name, f"key part {part.name}", "empty key", key_frame[k]
            )
        out[k] = arr
    for name, f in zip(field_columns(spec), spec.fields, strict=True):
        col = getattr(f, side)
        column = raw.column(col.name)
        value: Any = None
        if f.type == "text":
            text = _arrow_text(column)
            value = _arrow_normalised(text, f.normalise) if text is not None else None
        elif f.type == "number":
            value = _arrow_number(column, col.scale)
        else:
            value = _arrow_seconds(column, col, day=f.type == "date")
        out[name] = value if value is not None else _field(_series(column), f, col, ctx)
    for name, d in zip(dimension_columns(spec), (d for d in spec.dimensions if d.field is None), strict=True):
        col_ = getattr(d, side)
        if col_ is None:
            out[name] = pa.nulls(n, pa.string())
            continue
        column = raw.column(col_.name)
        text = _arrow_text(column)
        out[name] = text if text is not None else _text(_series(column))
    updated = spec.side(side).updated_at
    column = raw.column(updated.name)
    ts = _arrow_seconds(column, updated, day=False)
    if ts is None:
        ts = _seconds(_series(column), updated, f"{side}.updated_at", ctx, day=False)
    if np.isnan(ts).any():
        raise ctx.fail(
            np.isnan(ts), updated.name, f"{side}.updated_at", "no last-update time", _series(column)
        )
    out[TS] = ts
    out[SIDE] = np.full(n, 0 if side == "a" else 1, dtype=np.int8)
    out[ORDER] = (np.int64(piece.number) << np.int64(32)) + np.arange(n, dtype=np.int64)
    out[HASH] = key_hash(keys)
    types = arrow_types(spec)
    columns = {}
    for name, value in out.items():
        if isinstance(value, pa.Array | pa.ChunkedArray):
            columns[name] = value.cast(types[name])
        elif isinstance(value, pd.Series):
            columns[name] = pa.array(value.to_numpy(dtype=object), type=types[name], from_pandas=True)
        else:
            columns[name] = pa.array(value, type=types[name])
    return pa.table(columns)


def arrow_types(spec: MappingSpec) -> dict[str, Any]:
    import pyarrow as pa

    types: dict[str, Any] = {k: pa.string() for k in key_columns(spec)}
    for name, f in zip(field_columns(spec), spec.fields, strict=True):
        types[name] = pa.string() if f.type == "text" else pa.float64()
    types.update({d: pa.string() for d in dimension_columns(spec)})
    types.update({TS: pa.float64(), SIDE: pa.int8(), ORDER: pa.int64(), HASH: pa.uint64()})
    return types


@numba.njit(cache=True, nogil=True)
def _fnv_update(
    hashes: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64], data: npt.NDArray[np.uint8]
) -> None:
    prime = np.uint64(1099511628211)
    for i in range(hashes.shape[0]):
        h = hashes[i]
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * prime
        hashes[i] = (h ^ np.uint64(0x1F)) * prime  # a unit separator between key parts


@numba.njit(cache=True, nogil=True)
def _finish(hashes: npt.NDArray[np.uint64]) -> None:
    for i in range(hashes.shape[0]):  # splitmix64's finaliser: every input bit moves the top bits too
        z = hashes[i]
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        hashes[i] = z ^ (z >> np.uint64(31))


def key_hash(parts: Sequence[Any]) -> npt.NDArray[np.uint64]:
    """A stable 64-bit hash per row of the key parts (Arrow string arrays): FNV-1a over their UTF-8
    bytes, parts separated, then mixed; the same on every machine and in every process."""
    import pyarrow as pa

    n = len(parts[0]) if parts else 0
    hashes = np.full(n, np.uint64(14695981039346656037), dtype=np.uint64)
    for part in parts:
        arr = part.combine_chunks() if isinstance(part, pa.ChunkedArray) else part
        arr = arr.cast(pa.large_string())
        buffers = arr.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        _fnv_update(hashes, np.ascontiguousarray(offsets), data)
    _finish(hashes)
    return hashes
