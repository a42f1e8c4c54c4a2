"""The mapping file: what it accepts, and errors that name the file and the entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.batch.errors import MappingError
from engine.batch.extracts import MAPPING_YAML
from engine.batch.mapping import load_mapping, parse_mapping


def _mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    return path


def test_the_generators_mapping_reads_as_documented(tmp_path: Path) -> None:
    spec = load_mapping(_mapping(tmp_path, MAPPING_YAML))
    assert (spec.a.name, spec.b.name) == ("trading", "risk")
    assert [k.name for k in spec.key] == ["book", "trade_ref"]
    amount = next(f for f in spec.fields if f.name == "amount")
    assert (amount.b.name, amount.b.scale, amount.abs_tol, amount.role) == (
        "AmountMinor",
        0.01,
        0.005,
        "amount",
    )
    assert spec.b.updated_at.unit == "ms"
    assert spec.role("status") is not None and spec.role("status").normalise == ("trim", "lower")  # type: ignore[union-attr]
    assert spec.business_date == "business_date"
    assert spec.columns("b")[0] == "LastModified" and "Isin" in spec.columns("b")


def _broken(change: str, value: object) -> dict[str, object]:
    raw: dict[str, object] = yaml.safe_load(MAPPING_YAML)
    where, _, key = change.rpartition(".")
    target: Any = raw
    for part in where.split("."):
        if part:
            target = target[int(part)] if part.isdigit() else target[part]
    if value is None:
        del target[key]
    else:
        target[key] = value
    return raw


@pytest.mark.parametrize(
    ("change", "value", "message"),
    [
        ("fields.1.type", "int", "fields[1].type: must be one of text, number, date, timestamp, got 'int'"),
        ("fields.0.abs_tol", 0.1, "fields[0].abs_tol: applies to number fields, this one is text"),
        ("fields.1.role", "name", "fields[1].role: the model's name is a text field, this one is number"),
        ("fields.1.normalise", ["trim"], "fields[1].normalise: applies to text fields"),
        ("fields.0.normalise", ["squash"], "fields[0].normalise[0]: must be one of trim, lower, upper"),
        ("fields.2.abs_tol", -1, "fields[2].abs_tol: must be >= 0, got -1"),
        ("fields.2.colour", "red", "fields[2]: unknown key(s) colour"),
        ("fields.3.role", "status", "fields[3].role: role 'status' appears twice"),
        ("key.0.b", None, "key[0]: missing required key(s) b"),
        ("b.name", "trading", "b.name: the two systems need different names"),
        (
            "b.updated_at",
            {"column": "LastModified", "unit": "days"},
            "b.updated_at.unit: must be one of s, ms",
        ),
        ("dimensions.4.field", "nowhere", "dimensions[4].field: no field named 'nowhere'"),
        (
            "business_date",
            "desk",
            "business_date: dimension 'desk' must be a date or timestamp field's value",
        ),
        ("key", [], "key: must be a non-empty list"),
    ],
)
def test_invalid_entries_are_named(change: str, value: object, message: str) -> None:
    with pytest.raises(MappingError) as err:
        parse_mapping(_broken(change, value), "m.yaml")
    assert str(err.value).startswith("m.yaml: ") and message in str(err.value)


def test_yaml_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    path = _mapping(tmp_path, "a:\n  name: trading\n  updated_at: [oops\nb: x\n")
    with pytest.raises(MappingError, match=r"mapping.yaml: not valid YAML: line \d+, column \d+"):
        load_mapping(path)
    with pytest.raises(MappingError, match="cannot read the mapping file"):
        load_mapping(tmp_path / "absent.yaml")
    with pytest.raises(MappingError, match="must be a mapping with keys a, b, key"):
        load_mapping(_mapping(tmp_path, "- just a list\n"))
