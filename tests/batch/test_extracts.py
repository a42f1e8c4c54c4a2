"""engine generate-extracts: two systems' views of the same trades, different schemas, labelled breaks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from engine.batch.errors import UsageError
from engine.batch.extracts import Hotspot, generate_extracts
from engine.batch.mapping import load_mapping

from .conftest import HOTSPOTS, engine, quiet


def test_two_schemas_one_truth(extracts: Path) -> None:
    a = pd.read_parquet(extracts / "a")
    b = pd.read_csv(extracts / "b" / "part-00000.csv", dtype=str)
    truth = pd.read_parquet(extracts / "truth")
    assert {"trade_ref", "book", "qty", "amount", "updated_at"} <= set(a.columns)
    assert {"TradeId", "BookCode", "Quantity", "AmountMinor", "LastModified", "SourceSystem"} <= set(
        b.columns
    )
    assert str(a["updated_at"].dtype).startswith("datetime64") and b["LastModified"].str.isdigit().all()
    assert b["State"].str.endswith(" ").all() and b["State"].str.strip().str.isupper().all()
    info = json.loads((extracts / "truth.json").read_text())
    assert info["rows"] == 12_000 and [h["value"] for h in info["hotspots"]] == [
        "RATES-NY",
        "CP0007",
        "2026-10-16",
    ]
    assert sum(info["labels"].values()) == len(truth)
    # records missing on one side are absent there; a duplicated key is a second row on one side
    missing = truth[truth["label"] == "missing"]
    keys_a = set(zip(a["book"], a["trade_ref"], strict=True))
    keys_b = set(zip(b["BookCode"], b["TradeId"], strict=True))
    for book, ref, side in zip(missing["book"], missing["trade_ref"], missing["broken_side"], strict=True):
        assert ((book, ref) in keys_a) == (side == "B") and ((book, ref) in keys_b) == (side == "A")
    assert len(a) + len(b) == 2 * 12_000 - len(missing) + (truth["label"] == "duplicate_key").sum()
    # hotspots carry more breaks than the rest
    broken = truth["label"] != "consistent"
    assert broken[truth["desk"] == "RATES-NY"].mean() > 2.5 * broken[truth["desk"] != "RATES-NY"].mean()
    load_mapping(extracts / "mapping.yaml")  # the mapping it writes is valid


def test_same_seed_same_files(tmp_path: Path) -> None:
    spots = [Hotspot.parse(h) for h in HOTSPOTS]
    for name in ("one", "two"):
        generate_extracts(tmp_path / name, 3_000, seed=9, hotspots=spots, chunk_rows=1_000, log=quiet)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 2
    for rel in files:
        if rel.suffix == ".csv":
            assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
        elif rel.suffix == ".parquet":
            assert pd.read_parquet(tmp_path / "one" / rel).equals(pd.read_parquet(tmp_path / "two" / rel))


def test_bad_hotspots_and_folders_are_usage_errors(tmp_path: Path) -> None:
    for text, message in (
        ("desk", "write DIMENSION=VALUE:FACTOR"),
        ("colour=red:2", "dimension must be one of desk"),
        ("desk=EQ-LDN:50", "factor must be in [1, 20]"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            Hotspot.parse(text)
    with pytest.raises(UsageError, match="no such desk"):
        generate_extracts(tmp_path / "x", 10, hotspots=[Hotspot.parse("desk=NOWHERE:2")], log=quiet)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    run = engine("generate-extracts", "--rows", "10", "--out", str(tmp_path / "full"))
    assert run.returncode == 2 and "exists and is not empty" in run.stderr
