"""The batch commands' defaults and choices, in a module without heavy imports.

`engine.cli` builds its parsers at every start (also for `engine serve`), so the batch
commands' `--help` texts read their defaults from here, not from the modules that import
Dask, pandas or pyarrow (the `[batch]` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.spec import BAND_NAMES

#: Parquet: row groups gathered into pieces of up to this many rows
DEFAULT_BLOCK_ROWS = 500_000
#: CSV: pieces of this many bytes, cut at line ends
DEFAULT_BLOCK_BYTES = 64 << 20
#: PostgreSQL: a query is read in this many parts, by a hash of the key
DEFAULT_SQL_PARTS = 8

#: discover
DEFAULT_PARTITION_ROWS = 500_000
DEFAULT_SAMPLE_PAIRS = 200_000
DEFAULT_CONTAMINATION = 0.03
DEFAULT_DISCOVER_SEED = 20261202
MODEL_CHOICES = ("bundle", "isolation-forest")

#: score-batch --reasons: none, or for the trades in this band or above
REASON_CHOICES = ("none", *BAND_NAMES)

#: generate-extracts
DIMENSIONS = ("desk", "counterparty", "instrument", "source_system", "business_date")
DEFAULT_HOTSPOTS = ("desk=RATES-NY:4", "counterparty=CP0007:5", "business_date=2026-10-16:4")
DEFAULT_EXTRACTS_SEED = 20261202


@dataclass(frozen=True, slots=True)
class Options:
    """How `engine discover` runs (its command-line options)."""

    model: str = "bundle"
    bundle: str = ""
    contamination: float = DEFAULT_CONTAMINATION
    sample_pairs: int = DEFAULT_SAMPLE_PAIRS
    seed: int = DEFAULT_DISCOVER_SEED
    partition_rows: int = DEFAULT_PARTITION_ROWS
    block_rows: int = DEFAULT_BLOCK_ROWS
    block_bytes: int = DEFAULT_BLOCK_BYTES
    sql_parts: int = DEFAULT_SQL_PARTS
    report: bool = True
