"""A real PostgreSQL table as system A's extract: the same discovery as from the Parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from engine.batch.discover import Source, discover
from engine.batch.mapping import load_mapping
from engine.batch.options import Options
from engine.models.bundle import DEFAULT_BUNDLE

from .conftest import Discovery, quiet

pytestmark = pytest.mark.slow


def _load_table(url: str, frame: pd.DataFrame) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE trading_positions (trade_ref text, book text, desk text, counterparty_id text, "
            "instrument_id text, trade_date date, qty numeric, amount numeric(18, 2), status text, "
            "cpty_name text, cpty_address text, updated_at timestamptz)"
        )
        with conn.cursor().copy(
            "COPY trading_positions (trade_ref, book, desk, counterparty_id, instrument_id, trade_date, qty, "
            "amount, status, cpty_name, cpty_address, updated_at) FROM STDIN"
        ) as copy:
            for row in frame.itertuples(index=False):
                copy.write_row(row)


def test_a_postgresql_query_as_an_extract(
    postgres_url: str, cluster: Any, extracts: Path, discovery: Discovery, tmp_path: Path
) -> None:
    a = pd.read_parquet(extracts / "a")
    _load_table(postgres_url, a)
    spec = load_mapping(extracts / "mapping.yaml")
    query = "SELECT * FROM trading_positions WHERE amount IS NOT NULL"
    opts = Options(bundle=str(DEFAULT_BUNDLE), sql_parts=3, report=False, partition_rows=5_000)
    summary = discover(
        spec, Source(postgres_url, query), Source(str(extracts / "b")), tmp_path / "out", cluster, opts, quiet
    )
    assert summary["counts"] == discovery.summary["counts"]
    assert summary["field_mismatches"] == discovery.summary["field_mismatches"]
    assert summary["breaks"] == discovery.summary["breaks"]
    assert summary["sources"]["a"] == {"name": "trading", "location": postgres_url, "query": query}
    ours = pd.read_parquet(tmp_path / "out" / "flagged").drop(columns=[]).sort_values(["key", "occurrence"])
    theirs = pd.read_parquet(discovery.out / "flagged").sort_values(["key", "occurrence"])
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
