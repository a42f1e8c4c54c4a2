"""The mapping file of `engine discover`: how two systems' extracts correspond, in YAML.

```yaml
a:                                  # system A: its name (the `source` of its views) and its
  name: trading                     # last-update time column
  updated_at: updated_at
b:
  name: risk
  updated_at: {column: LastModified, unit: ms}     # epoch milliseconds
key:                                # the record key, composite: matched part by part, as text
  - {name: book, a: book, b: BookCode}
  - {name: trade_ref, a: trade_ref, b: TradeId}
fields:                             # compared fields (mismatch counts, the heat map)
  - {name: status, a: status, b: State, type: text, normalise: [trim, lower], role: status}
  - {name: quantity, a: qty, b: Quantity, type: number, role: quantity}
  - {name: amount, a: amount, b: {column: AmountMinor, scale: 0.01}, type: number,
     abs_tol: 0.005, role: amount}
  - {name: trade_date, a: trade_date, b: TradeDate, type: date}
dimensions:                         # what the hotspot report profiles by
  - {name: desk, a: desk}
  - {name: counterparty, a: counterparty_id, b: CptyId}
  - {name: business_date, field: trade_date}
business_date: business_date        # the dimension whose values are dates: break rate over time
```

- A column is its name, or `{column, scale, unit, format}`: `scale` multiplies numbers (minor
  to major units), `unit` reads numbers as epoch `s`/`ms`/`us`/`ns` for `date` and `timestamp`,
  `format` reads text dates with a strptime pattern (default ISO 8601).
- `type`: `text`, `number`, `date` (a calendar day: ISO text, a timestamp, epoch numbers) or
  `timestamp`. Values are converted to the type on both sides before comparing; a value that
  does not convert is an error naming the file, column and row, never a silent missing value.
- `abs_tol` / `rel_tol` (numbers): equal when |a - b| <= abs_tol + rel_tol * |b|, as
  datacompy's. `normalise` (text): `trim`, `lower`, `upper`, `collapse_whitespace`, in order.
- `role` feeds the field to the sync-break model, which knows five inputs: `status`, `quantity`,
  `amount` (numbers), `name`, `address` (text). A role left out is absent for the model (equal on
  both sides). Values equal within tolerance are equal for the model too.
- `dimensions`: a column of one side or both (A's value, else B's: a record missing on one side
  still has a dimension value), or `field:` a compared field's value.

`load_mapping` reads and validates the file: every problem is a `MappingError` naming the file
and the entry (`fields[2].type: ...`); nothing has a silent default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.batch.errors import MappingError

TYPES = ("text", "number", "date", "timestamp")
NORMALISERS = ("trim", "lower", "upper", "collapse_whitespace")
UNITS = ("s", "ms", "us", "ns")
#: the sync-break model's inputs (`engine.features.pairs.PairColumns`) and the type each takes
ROLES = {"status": "text", "quantity": "number", "amount": "number", "name": "text", "address": "text"}
SIDES = ("a", "b")


@dataclass(frozen=True, slots=True)
class Column:
    """One side's column for a key part, field, dimension or update time, and how to read it."""

    name: str
    scale: float | None = None
    unit: str | None = None
    format: str | None = None


@dataclass(frozen=True, slots=True)
class Side:
    name: str
    updated_at: Column


@dataclass(frozen=True, slots=True)
class KeyPart:
    name: str
    a: Column
    b: Column


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    a: Column
    b: Column
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    normalise: tuple[str, ...] = ()
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    #: per side, the column it comes from (None: that side has none); or a compared field's name
    a: Column | None = None
    b: Column | None = None
    field: str | None = None


@dataclass(frozen=True, slots=True)
class MappingSpec:
    path: str
    a: Side
    b: Side
    key: tuple[KeyPart, ...]
    fields: tuple[Field, ...]
    dimensions: tuple[Dimension, ...]
    business_date: str | None

    def side(self, which: str) -> Side:
        return self.a if which == "a" else self.b

    def role(self, role: str) -> Field | None:
        return next((f for f in self.fields if f.role == role), None)

    def columns(self, which: str) -> list[str]:
        """Every column of side `which` the mapping reads, in a stable order, once each."""
        cols: list[Column | None] = [self.side(which).updated_at]
        cols += [getattr(k, which) for k in self.key]
        cols += [getattr(f, which) for f in self.fields]
        cols += [getattr(d, which) for d in self.dimensions]
        return list(dict.fromkeys(c.name for c in cols if c is not None))


class _Reader:
    """Typed access to the parsed YAML that names the entry in every error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> MappingError:
        return MappingError(f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}")

    def mapping(
        self, raw: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(where, f"must be a mapping with keys {', '.join(allowed)}, got {_kind(raw)}")
        unknown = [k for k in raw if k not in allowed]
        if unknown:
            raise self.fail(
                where, f"unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(allowed)})"
            )
        missing = [k for k in required if k not in raw]
        if missing:
            raise self.fail(where, f"missing required key(s) {', '.join(missing)}")
        return raw

    def text(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(where, f"must be a non-empty text, got {_kind(raw)}")
        return raw

    def number(self, raw: Any, where: str, positive: bool = False) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise self.fail(where, f"must be a finite number, got {_kind(raw)}")
        if raw < 0 or (positive and raw == 0):
            raise self.fail(where, f"must be {'> 0' if positive else '>= 0'}, got {raw}")
        return float(raw)

    def choice(self, raw: Any, where: str, choices: tuple[str, ...]) -> str:
        if raw not in choices:
            raise self.fail(where, f"must be one of {', '.join(choices)}, got {raw!r}")
        return str(raw)

    def column(self, raw: Any, where: str) -> Column:
        if isinstance(raw, str):
            return Column(self.text(raw, where))
        spec = self.mapping(raw, where, ("column", "scale", "unit", "format"), ("column",))
        return Column(
            name=self.text(spec["column"], f"{where}.column"),
            scale=self.number(spec["scale"], f"{where}.scale", positive=True) if "scale" in spec else None,
            unit=self.choice(spec["unit"], f"{where}.unit", UNITS) if "unit" in spec else None,
            format=self.text(spec["format"], f"{where}.format") if "format" in spec else None,
        )

    def entries(self, raw: Any, where: str, required: bool) -> list[Any]:
        if raw is None and not required:
            return []
        if not isinstance(raw, list) or (required and not raw):
            raise self.fail(where, f"must be a{' non-empty' if required else ''} list, got {_kind(raw)}")
        return raw


def _kind(raw: Any) -> str:
    if raw is None:
        return "nothing"
    if isinstance(raw, str):
        return repr(raw)
    if isinstance(raw, bool | int | float):
        return f"{type(raw).__name__} {raw!r}"
    return type(raw).__name__


def _check_column_use(r: _Reader, col: Column, type_: str, where: str) -> None:
    if col.scale is not None and type_ != "number":
        raise r.fail(f"{where}.scale", f"applies to number fields, this one is {type_}")
    if col.unit is not None and type_ not in ("date", "timestamp"):
        raise r.fail(f"{where}.unit", f"applies to date and timestamp columns, this one is {type_}")
    if col.format is not None and type_ not in ("date", "timestamp"):
        raise r.fail(f"{where}.format", f"applies to date and timestamp columns, this one is {type_}")
    if col.unit is not None and col.format is not None:
        raise r.fail(where, "give unit (epoch numbers) or format (text), not both")


def _unique(r: _Reader, names: list[tuple[str, str]], what: str) -> None:
    seen: set[str] = set()
    for where, name in names:
        if name in seen:
            raise r.fail(where, f"{what} {name!r} appears twice")
        seen.add(name)


def parse_mapping(raw: Any, path: str) -> MappingSpec:
    """Validate a parsed mapping document; MappingError names `path` and the entry."""
    r = _Reader(path)
    top = r.mapping(
        raw, "", ("a", "b", "key", "fields", "dimensions", "business_date"), ("a", "b", "key", "fields")
    )
    sides: dict[str, Side] = {}
    for s in SIDES:
        spec = r.mapping(top[s], s, ("name", "updated_at"), ("name", "updated_at"))
        updated = r.column(spec["updated_at"], f"{s}.updated_at")
        _check_column_use(r, updated, "timestamp", f"{s}.updated_at")
        sides[s] = Side(r.text(spec["name"], f"{s}.name"), updated)
    if sides["a"].name == sides["b"].name:
        raise r.fail("b.name", f"the two systems need different names, both are {sides['a'].name!r}")

    key: list[KeyPart] = []
    for i, entry in enumerate(r.entries(top["key"], "key", required=True)):
        where = f"key[{i}]"
        spec = r.mapping(entry, where, ("name", "a", "b"), ("name", "a", "b"))
        part = KeyPart(
            r.text(spec["name"], f"{where}.name"), *(r.column(spec[s], f"{where}.{s}") for s in SIDES)
        )
        for s in SIDES:
            col = getattr(part, s)
            if col.scale is not None or col.unit is not None or col.format is not None:
                raise r.fail(f"{where}.{s}", "key parts are compared as text: no scale, unit or format")
        key.append(part)
    _unique(r, [(f"key[{i}].name", k.name) for i, k in enumerate(key)], "key part")

    fields: list[Field] = []
    for i, entry in enumerate(r.entries(top["fields"], "fields", required=True)):
        where = f"fields[{i}]"
        spec = r.mapping(
            entry,
            where,
            ("name", "a", "b", "type", "abs_tol", "rel_tol", "normalise", "role"),
            ("name", "a", "b", "type"),
        )
        type_ = r.choice(spec["type"], f"{where}.type", TYPES)
        cols = [r.column(spec[s], f"{where}.{s}") for s in SIDES]
        for s, col in zip(SIDES, cols, strict=True):
            _check_column_use(r, col, type_, f"{where}.{s}")
        tolerances = {}
        for tol in ("abs_tol", "rel_tol"):
            if tol in spec:
                if type_ != "number":
                    raise r.fail(f"{where}.{tol}", f"applies to number fields, this one is {type_}")
                tolerances[tol] = r.number(spec[tol], f"{where}.{tol}")
        normalise: tuple[str, ...] = ()
        if "normalise" in spec:
            if type_ != "text":
                raise r.fail(f"{where}.normalise", f"applies to text fields, this one is {type_}")
            steps = r.entries(spec["normalise"], f"{where}.normalise", required=True)
            normalise = tuple(
                r.choice(n, f"{where}.normalise[{j}]", NORMALISERS) for j, n in enumerate(steps)
            )
        role = None
        if "role" in spec:
            role = r.choice(spec["role"], f"{where}.role", tuple(ROLES))
            if ROLES[role] != type_:
                raise r.fail(
                    f"{where}.role", f"the model's {role} is a {ROLES[role]} field, this one is {type_}"
                )
        fields.append(
            Field(
                r.text(spec["name"], f"{where}.name"),
                type_,
                cols[0],
                cols[1],
                normalise=normalise,
                role=role,
                **tolerances,
            )
        )
    _unique(r, [(f"fields[{i}].name", f.name) for i, f in enumerate(fields)], "field")
    _unique(r, [(f"fields[{i}].role", f.role) for i, f in enumerate(fields) if f.role], "role")

    by_name = {f.name: f for f in fields}
    dims: list[Dimension] = []
    for i, entry in enumerate(r.entries(top.get("dimensions"), "dimensions", required=False)):
        where = f"dimensions[{i}]"
        spec = r.mapping(entry, where, ("name", "a", "b", "field"), ("name",))
        name = r.text(spec["name"], f"{where}.name")
        if "field" in spec:
            if "a" in spec or "b" in spec:
                raise r.fail(where, "give a field, or columns a / b, not both")
            field = r.text(spec["field"], f"{where}.field")
            if field not in by_name:
                raise r.fail(f"{where}.field", f"no field named {field!r} (fields: {', '.join(by_name)})")
            dims.append(Dimension(name, field=field))
            continue
        if "a" not in spec and "b" not in spec:
            raise r.fail(where, "needs a column of side a, of side b, or both (or a field)")
        cols_ = {s: r.column(spec[s], f"{where}.{s}") if s in spec else None for s in SIDES}
        for s, c in cols_.items():
            if c is not None and (c.scale or c.unit or c.format):
                raise r.fail(f"{where}.{s}", "dimensions are read as text: no scale, unit or format")
        dims.append(Dimension(name, cols_["a"], cols_["b"]))
    _unique(r, [(f"dimensions[{i}].name", d.name) for i, d in enumerate(dims)], "dimension")

    business = top.get("business_date")
    if business is not None:
        business = r.text(business, "business_date")
        dim = next((d for d in dims if d.name == business), None)
        if dim is None:
            raise r.fail("business_date", f"no dimension named {business!r}")
        if dim.field is None or by_name[dim.field].type not in ("date", "timestamp"):
            raise r.fail("business_date", f"dimension {business!r} must be a date or timestamp field's value")
    return MappingSpec(path, sides["a"], sides["b"], tuple(key), tuple(fields), tuple(dims), business)


def load_mapping(path: Path | str) -> MappingSpec:
    """Read and validate a mapping file (YAML); MappingError names the file and the entry."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise MappingError(f"{p}: cannot read the mapping file: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError(f"{p}: not valid YAML: {where}{problem}") from exc
    return parse_mapping(raw, str(p))


def mapping_to_json(spec: MappingSpec) -> Mapping[str, Any]:
    """The mapping as the summary records it (what the run compared)."""
    return {
        "path": spec.path,
        "a": spec.a.name,
        "b": spec.b.name,
        "key": [k.name for k in spec.key],
        "fields": {
            f.name: {"type": f.type, "abs_tol": f.abs_tol, "rel_tol": f.rel_tol, "role": f.role}
            for f in spec.fields
        },
        "dimensions": [d.name for d in spec.dimensions],
        "business_date": spec.business_date,
    }
