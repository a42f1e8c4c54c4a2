"""Discovery's shuffle: every row to the partition of its key, through Arrow IPC files.

Each extract piece is read, made canonical (`engine.batch.canonical`) and split by its key hash
into one uncompressed Arrow IPC file per partition (`split_piece`); each partition's task reads
its files back, memory-mapped (`read_bucket`). A task holds one piece or one partition, never the
input: memory is bounded by `partition_rows`, not by the extracts. On this project's 2-core VM
this moves 2M canonical rows in well under a second where Dask's peer-to-peer shuffle took 4-5 s
(its pandas -> Arrow -> pandas round trip and sharding); the tasks, their placement and the
retries stay Dask's. The scratch folder sits inside the output folder, so a real cluster needs the
same shared storage it needs for the output (and nothing else), and is removed at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.batch import canonical
from engine.batch.mapping import MappingSpec
from engine.batch.models import sample_mask
from engine.batch.sources import Piece


def bucket_dir(scratch: str, index: int) -> Path:
    return Path(scratch) / f"bucket-{index:05d}"


def split_piece(
    piece: Piece, side: str, spec: MappingSpec, scratch: str, partitions: int, sample_rate: float
) -> tuple[int, Any]:
    """Write a piece's canonical rows into its partitions' files; return (rows, the hash-sampled rows
    as an Arrow table, or None without a sample)."""
    import pyarrow as pa

    table = canonical.load_arrow(piece, side, spec)
    hashes = table.column(canonical.HASH).to_numpy()
    bucket = (hashes % np.uint64(partitions)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(partitions + 1))
    ordered = table.take(pa.array(order))
    for index in range(partitions):
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        if hi == lo:
            continue
        folder = bucket_dir(scratch, index)
        folder.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(folder / f"{side}-{piece.number:06d}.arrow"), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(ordered.slice(lo, hi - lo), max_chunksize=1 << 20)
    sample = None
    if sample_rate > 0:
        sample = table.filter(pa.array(sample_mask(hashes, sample_rate)))
    return table.num_rows, sample


def read_bucket(scratch: str, index: int, spec: MappingSpec) -> Any:
    """Every row of partition `index`, both sides, as one Arrow table (empty with the schema if none)."""
    import pyarrow as pa

    folder = bucket_dir(scratch, index)
    tables = []
    for path in sorted(folder.glob("*.arrow")) if folder.exists() else []:
        tables.append(pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all())
    if not tables:
        types = canonical.arrow_types(spec)
        return pa.table({name: pa.array([], type=t) for name, t in types.items()})
    return pa.concat_tables(tables)
