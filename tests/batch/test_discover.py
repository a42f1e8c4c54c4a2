"""engine discover against independent truth: datacompy's counts, the generator's labels and hotspots."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engine.batch.discover import FLAGGED_DIR
from engine.batch.hotspots import wilson

from .conftest import HOTSPOTS, Discovery, engine, run_discovery

pytestmark = pytest.mark.slow

FIELDS = ["status", "quantity", "amount", "counterparty_name", "counterparty_address", "trade_date"]


def _oracle_frames(extracts: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both extracts renamed and converted to common columns by hand (what the mapping file says), with
    pandas alone: datacompy then joins and compares them."""
    a = pd.read_parquet(extracts / "a")
    b = pd.concat(
        pd.read_csv(f, dtype=str, keep_default_na=False)
        for f in sorted(glob.glob(str(extracts / "b" / "*.csv")))
    )

    def spaces(s: pd.Series) -> pd.Series:
        return s.str.strip().str.replace(r"\s+", " ", regex=True)

    left = pd.DataFrame({
        "book": a["book"], "trade_ref": a["trade_ref"], "status": a["status"].str.strip().str.lower(),
        "quantity": a["qty"].astype(float), "amount": a["amount"].astype(float),
        "counterparty_name": spaces(a["cpty_name"]), "counterparty_address": spaces(a["cpty_address"]),
        "trade_date": pd.to_datetime(a["trade_date"]).dt.strftime("%Y-%m-%d"),
    })  # fmt: skip
    right = pd.DataFrame({
        "book": b["BookCode"], "trade_ref": b["TradeId"], "status": b["State"].str.strip().str.lower(),
        "quantity": b["Quantity"].astype(float), "amount": b["AmountMinor"].astype(float) * 0.01,
        "counterparty_name": spaces(b["CptyName"]), "counterparty_address": spaces(b["CptyAddress"]),
        "trade_date": pd.to_datetime(b["TradeDate"]).dt.strftime("%Y-%m-%d"),
    })  # fmt: skip
    return left, right


def _datacompy_counts(compare: Any) -> dict[str, Any]:
    return {
        "matched": len(compare.intersect_rows),
        "missing_in_b": len(compare.df1_unq_rows),
        "missing_in_a": len(compare.df2_unq_rows),
        "all_equal": compare.count_matching_rows(),
        "columns": {
            s["column"]: int(s["unequal_cnt"]) for s in compare.column_stats if s["column"] in FIELDS
        },
    }


def test_counts_match_datacompy_pandas_and_polars(extracts: Path, discovery: Discovery) -> None:
    import datacompy
    import polars as pl

    left, right = _oracle_frames(extracts)
    keys, tol = ["book", "trade_ref"], {"amount": 0.005}
    by_pandas = _datacompy_counts(datacompy.PandasCompare(left, right, join_columns=keys, abs_tol=tol))
    by_polars = _datacompy_counts(
        datacompy.PolarsCompare(pl.from_pandas(left), pl.from_pandas(right), join_columns=keys, abs_tol=tol)
    )
    assert by_pandas == by_polars  # the two backends agree with each other
    counts = discovery.summary["counts"]
    ours = {
        "matched": counts["matched"],
        "missing_in_b": counts["missing_in_b"],
        "missing_in_a": counts["missing_in_a"],
        "all_equal": counts["matched_all_fields_equal"],
        "columns": discovery.summary["field_mismatches"],
    }
    assert ours == by_pandas
    # the generator planted breaks of every kind: the comparison is not trivially all-equal
    assert counts["missing_in_a"] > 0 and counts["missing_in_b"] > 0
    assert counts["duplicate_key_rows_a"] + counts["duplicate_key_rows_b"] > 0
    assert all(ours["columns"][f] > 0 for f in FIELDS if f != "trade_date")
    # by how much: every compared mismatch in one size bucket; fat fingers (x10 .. x1000) above 100 %
    left_ix, right_ix = left.set_index(keys), right.set_index(keys)
    shared = left_ix.index.intersection(right_ix.index).drop_duplicates(keep=False)
    a, b = left_ix.loc[shared, "amount"], right_ix.loc[shared, "amount"]
    differ = (a - b).abs() > 0.005
    amount = discovery.summary["field_differences"]["amount"]
    assert sum(amount["by_size"].values()) == amount["compared"] == int(differ.sum())
    assert amount["max_abs_difference"] == pytest.approx(float((a - b).abs().max()), rel=1e-9)
    assert (
        amount["by_size"]["> 100%"] > 0 and "counterparty_name" not in discovery.summary["field_differences"]
    )


def test_planted_hotspots_rank_in_the_top_three(discovery: Discovery) -> None:
    ranked = discovery.summary["hotspots"]
    for spot in HOTSPOTS:
        dimension, rest = spot.split("=")
        value = rest.rsplit(":", 1)[0]
        top = [h["value"] for h in ranked[dimension][:3]]
        assert value in top, f"{spot}: top three of {dimension} are {top}"
        row = next(h for h in ranked[dimension] if h["value"] == value)
        low, high = wilson(np.array([row["flagged"]], dtype=float), np.array([row["pairs"]], dtype=float))
        assert row["ci_low"] == pytest.approx(low[0], abs=1e-6) and row["ci_high"] == pytest.approx(
            high[0], abs=1e-6
        )
        assert (
            row["ci_low"] > discovery.summary["breaks"]["flagged_rate"]
        )  # significantly above the base rate


def _flagged(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / FLAGGED_DIR)


def test_flagged_pairs_carry_class_side_corrections_and_reasons(extracts: Path, discovery: Discovery) -> None:
    flagged = _flagged(discovery.out)
    assert len(flagged) == discovery.summary["breaks"]["flagged"]
    for part in sorted((discovery.out / FLAGGED_DIR).glob("part-*.parquet")):
        keys = pq.read_table(part, columns=["key", "occurrence"]).to_pandas()
        assert keys.equals(keys.sort_values(["key", "occurrence"], kind="stable").reset_index(drop=True))
    assert set(flagged["break_class"]) <= {"MISSING", "STATUS", "VALUE", "STATIC_DATA", "NONE"}
    assert (flagged["break_score"] >= discovery.summary["model"]["threshold"]).all()
    status = flagged[flagged["break_class"] == "STATUS"]
    assert len(status) > 0
    row = status.iloc[0]
    fields = [c["field"] for c in row["corrections"]]
    assert "status" in fields and row["likely_right"] in ("A", "B")
    source = {"A": "trading", "B": "risk"}[row["likely_right"]]
    assert all(c["source"] == source for c in row["corrections"])
    assert any(r["code"] == "STATUS_MISMATCH" for r in row["reasons"])
    missing = flagged[flagged["break_class"] == "MISSING"]
    assert (missing["in_a"] != missing["in_b"]).all() and (missing["confidence"] == 0.5).all()
    # recall per planted class, against the generator's labels
    truth = pd.read_parquet(extracts / "truth")
    truth["key"] = truth["book"] + "|" + truth["trade_ref"]
    found = set(zip(flagged["key"], flagged["occurrence"], strict=True))
    truth["found"] = [(k, o) in found for k, o in zip(truth["key"], truth["occurrence"], strict=True)]
    recall = truth[truth["label"] != "consistent"].groupby("label")["found"].mean()
    assert recall["missing"] == 1.0 and recall["duplicate_key"] == 1.0 and recall["status_drift"] == 1.0
    assert recall["fat_finger"] > 0.9 and recall["duplicate"] > 0.9
    # nothing was changed in the inputs
    assert json.loads((extracts / "truth.json").read_text())["rows"] == 12_000


def test_same_flagged_pairs_on_dask_scheduler_and_worker_processes(
    extracts: Path, discovery: Discovery, dask_processes: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = engine(
        "discover", "--mapping", str(extracts / "mapping.yaml"), "--a", str(extracts / "a"), "--b",
        str(extracts / "b"), "--out", str(out), "--scheduler", dask_processes.address,
        "--partition-rows", "3000", "--block-mb", "1", "--no-report",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert str(out / "summary.json") in run.stdout
    assert "partitions" in run.stderr  # progress
    assert "B 2 piece(s)" in run.stderr  # the CSV read in byte ranges: rows cut at line ends, none lost
    theirs, ours = _flagged(out), _flagged(discovery.out)
    order = ["key", "occurrence"]
    theirs = theirs.sort_values(order).reset_index(drop=True)
    ours = ours.sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(theirs, ours)  # another cluster, other partitions: the same flags
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == discovery.summary["counts"]
    assert summary["hotspots"] == discovery.summary["hotspots"]


def test_isolation_forest_fitted_on_the_data(cluster: Any, extracts: Path, tmp_path: Path) -> None:
    found = run_discovery(cluster, extracts, tmp_path / "out", model="isolation-forest", contamination=0.05)
    model = found.summary["model"]
    assert model["kind"] == "isolation_forest" and model["fitted"]["sample_rate"] == 1.0
    share = found.summary["breaks"]["flagged"] / found.summary["counts"]["pairs"]
    assert 0.03 < share < 0.07  # about the contamination asked for
    assert found.summary["breaks"]["by_class"]["MISSING"] > 0
