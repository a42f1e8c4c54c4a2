"""`engine discover`: two extracts -> record pairs -> flagged breaks, a summary and a hotspot report.

The Dask graph, the same on a local cluster and on a real one, in two steps:

```
read:   extract A piece ─ canonical.load_arrow ─ split by key hash ─┐  OUT/.scratch/bucket-NNNNN/*.arrow
        extract B piece ─ canonical.load_arrow ─ split by key hash ─┘  (engine.batch.buckets)
pairs:  bucket i ─ join.score_partition ─┬─ OUT/flagged/part-NNNNN.parquet
                                         └─ PartStats (counts) ─▶ client: add up ─ hotspots
                                                                   ─ summary.json + report.html
```

Memory is bounded by the piece and the partition: pieces of `block_rows`, partitions of about
`partition_rows` rows of each side; the shuffle goes through files (`engine.batch.buckets`).
Nothing is written into the inputs; the scratch files are removed at the end.

With `--model isolation-forest`, the read step also returns the rows of a hash sample of keys
(the same keys on both sides); they are joined and featurised on the client and a forest is
fitted on them (`engine.batch.models.fit_on_sample`) before the pairs step.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from engine.batch import canonical, sources
from engine.batch.buckets import read_bucket, split_piece
from engine.batch.cluster import run_tasks
from engine.batch.errors import UsageError
from engine.batch.hotspots import rank, top
from engine.batch.join import CLASS_ORDER, PartStats, join_pairs, pair_columns, score_partition
from engine.batch.mapping import MappingSpec, mapping_to_json
from engine.batch.models import PairModelRef, bundle_model, fit_on_sample
from engine.batch.options import MODEL_CHOICES, Options

Printer = Callable[[str], None]
FLAGGED_DIR = "flagged"
#: the shuffle's files, inside the output folder while a discovery runs
SCRATCH = ".scratch"
SUMMARY = "summary.json"
REPORT = "report.html"
HOTSPOTS_IN_SUMMARY = 10


@dataclass(frozen=True, slots=True)
class Source:
    """One extract as the command line gives it: a path or PostgreSQL URL, and a query for the latter."""

    location: str
    query: str | None = None


def prepare_out(out: Path) -> Path:
    """The output folder, emptied of a previous discovery's files; refuses one holding anything else."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out}: exists and is not a folder")
        ours = {FLAGGED_DIR, SUMMARY, REPORT}
        other = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith("."))
        if other:
            raise UsageError(
                f"--out {out}: holds other files ({', '.join(other[:5])}); give an empty or new folder, "
                "or a previous discovery's output"
            )
        shutil.rmtree(out / FLAGGED_DIR, ignore_errors=True)
        for name in (SUMMARY, REPORT):
            (out / name).unlink(missing_ok=True)
    (out / FLAGGED_DIR).mkdir(parents=True, exist_ok=True)
    return out


def _pieces(spec: MappingSpec, side: str, src: Source, opts: Options) -> list[sources.Piece]:
    keys = [getattr(k, side).name for k in spec.key]
    pieces = sources.plan(
        src.location,
        query=src.query,
        key_columns=keys,
        block_rows=opts.block_rows,
        block_bytes=opts.block_bytes,
        sql_parts=opts.sql_parts,
    )
    canonical.check_columns(pieces[0], side, spec)
    return pieces


def _estimated_rows(pieces: list[sources.Piece]) -> int:
    total = 0
    for p in pieces:
        if p.rows is not None:
            total += p.rows
        elif p.kind == "csv":
            total += max(1, (p.byte_range[1] - p.byte_range[0]) // 100)  # ~100 bytes a row: a guess
        else:
            total += 0
    return total


def _fit(
    samples: list[Any], spec: MappingSpec, rate: float, opts: Options, log: Printer
) -> tuple[PairModelRef, dict[str, Any]]:
    """The IsolationForest of `--model isolation-forest`, on the hash-sampled rows of both extracts."""
    import pyarrow as pa

    t0 = time.perf_counter()
    table = pa.concat_tables(samples) if samples else read_bucket("", -1, spec)
    joined = join_pairs(table, spec)
    ref, info = fit_on_sample(pair_columns(joined, spec), contamination=opts.contamination, seed=opts.seed)
    log(
        f"discover: IsolationForest fitted on {len(joined.frame):,} sampled pairs in "
        f"{time.perf_counter() - t0:.1f} s; threshold {ref.threshold:.4f} flags the top "
        f"{opts.contamination:.1%} of them"
    )
    return ref, {**info, "sample_rate": rate}


def plan_sources(spec: MappingSpec, a: Source, b: Source, opts: Options) -> dict[str, list[sources.Piece]]:
    """Both extracts' pieces, their columns checked against the mapping (UsageError naming the source and
    every column it lacks), before any cluster is started."""
    return {"a": _pieces(spec, "a", a, opts), "b": _pieces(spec, "b", b, opts)}


def discover(
    spec: MappingSpec,
    a: Source,
    b: Source,
    out: Path,
    client: Any,
    opts: Options,
    log: Printer,
    pieces: dict[str, list[sources.Piece]] | None = None,
) -> dict[str, Any]:
    """Run a discovery on `client`'s cluster; write flagged Parquet, summary.json and report.html."""
    started = time.perf_counter()
    if opts.report:  # import the plotting library while the cluster works (a second of imports)
        threading.Thread(target=_import_plotting, name="import-matplotlib", daemon=True).start()
    pieces = pieces or plan_sources(spec, a, b, opts)
    rows = {s: _estimated_rows(p) for s, p in pieces.items()}
    out = prepare_out(out)
    unknown = any(p.rows is None for ps in pieces.values() for p in ps)
    partitions = max(1, math.ceil(max(rows.values()) / opts.partition_rows))
    if unknown:
        partitions = max(partitions, len(pieces["a"]), len(pieces["b"]))
    # at least one partition per worker thread: a small pair still uses the whole cluster
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
    partitions = max(partitions, threads)
    log(
        f"discover: A {len(pieces['a'])} piece(s) ({sources.redact(a.location)}), "
        f"B {len(pieces['b'])} piece(s) ({sources.redact(b.location)}); "
        f"{partitions} shuffle partition(s)"
    )
    from dask.delayed import delayed

    scratch = str((out / SCRATCH).resolve())
    shutil.rmtree(scratch, ignore_errors=True)
    rate = 0.0
    if opts.model == "isolation-forest":
        rate = min(1.0, opts.sample_pairs / max(1, max(rows.values())))
    elif opts.model != "bundle":
        raise UsageError(f"--model must be one of {', '.join(MODEL_CHOICES)}")
    try:
        ref = bundle_model(opts.bundle) if opts.model == "bundle" else None
        split = delayed(split_piece, pure=True)
        splits = [split(p, side, spec, scratch, partitions, rate) for side in "ab" for p in pieces[side]]
        read = {"rows": 0}
        samples: list[Any] = []

        def split_progress(result: tuple[int, Any]) -> str:
            read["rows"] += result[0]
            if result[1] is not None:
                samples.append(result[1])
            return f"{read['rows']:,} rows read"

        run_tasks(client, splits, "discover: read", log, split_progress)
        fitted: dict[str, Any] = {}
        if ref is None:
            ref, fitted = _fit(samples, spec, rate, opts, log)
        score = delayed(score_partition, pure=True)
        flagged_dir = str((out / FLAGGED_DIR).resolve())
        tasks = [score(scratch, i, spec, ref, flagged_dir) for i in range(partitions)]
        total = PartStats()

        def progress(part: PartStats) -> str:
            total.merge(part)
            return f"{total.pairs:,} pairs, {total.flagged:,} flagged"

        run_tasks(client, tasks, "discover: pairs", log, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    pipeline_s = time.perf_counter() - started
    summary = _summary(spec, a, b, ref, fitted, total, opts)
    summary["elapsed_s"] = {"pipeline": round(pipeline_s, 3)}
    summary["partitions"] = {
        "a_pieces": len(pieces["a"]),
        "b_pieces": len(pieces["b"]),
        "shuffle": partitions,  # partitions of the key-hash shuffle
    }
    if opts.report:
        from engine.batch.report import write_report

        t0 = time.perf_counter()
        write_report(out / REPORT, summary, total, spec)
        summary["elapsed_s"]["report"] = round(time.perf_counter() - t0, 3)
    summary["elapsed_s"]["total"] = round(time.perf_counter() - started, 3)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    log(
        f"discover: {total.pairs:,} pairs: {total.matched:,} matched ({total.matched_equal:,} equal), "
        f"{total.only_b:,} missing in A, {total.only_a:,} missing in B; {total.flagged:,} flagged; "
        f"{summary['elapsed_s']['total']:.1f} s -> {out}"
    )
    return summary


def _differences(spec: MappingSpec, total: PartStats) -> dict[str, Any]:
    """By how much the mismatched number, date and timestamp fields differ (both sides having a value)."""
    from engine.batch.join import DELTA_BUCKETS

    out: dict[str, Any] = {}
    for j, f in enumerate(spec.fields):
        if f.type == "text" or total.field_deltas.size == 0 or total.field_deltas[j, 0] == 0:
            continue
        row = total.field_deltas[j]
        if f.type == "number":
            names = [f"<= {e:.1%}" for e in DELTA_BUCKETS] + [f"> {DELTA_BUCKETS[-1]:.0%}"]
            unit = "|a - b| relative to the smaller value"
        else:
            names = ["<= 1 minute", "<= 1 hour", "<= 1 day", "<= 1 week", "> 1 week"]
            unit = "seconds apart"
        out[f.name] = {
            "compared": int(row[0]),
            "mean_abs_difference": round(float(row[1] / row[0]), 6),
            "max_abs_difference": round(float(row[2]), 6),
            "by_size": dict(zip(names, (int(v) for v in row[3:]), strict=True)),
            "size": unit,
        }
    return out


def _import_plotting() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def rankings(total: PartStats) -> dict[str, pd.DataFrame]:
    return {name: rank(table, total.pairs, total.flagged) for name, table in total.dimensions.items()}


def _summary(
    spec: MappingSpec,
    a: Source,
    b: Source,
    ref: PairModelRef,
    fitted: dict[str, Any],
    total: PartStats,
    opts: Options,
) -> dict[str, Any]:
    def where(src: Source) -> dict[str, Any]:
        if src.query is None:
            return {"location": src.location}
        return {"location": sources.redact(src.location), "query": src.query}

    return {
        "sources": {"a": {"name": spec.a.name, **where(a)}, "b": {"name": spec.b.name, **where(b)}},
        "mapping": mapping_to_json(spec),
        "model": {**ref.describe(), **({"fitted": fitted} if fitted else {})},
        "counts": {
            "rows_a": total.rows_a,
            "rows_b": total.rows_b,
            "pairs": total.pairs,
            "matched": total.matched,
            "matched_all_fields_equal": total.matched_equal,
            "matched_with_mismatches": total.matched - total.matched_equal,
            "missing_in_a": total.only_b,
            "missing_in_b": total.only_a,
            "duplicate_key_rows_a": total.duplicates_a,
            "duplicate_key_rows_b": total.duplicates_b,
        },
        "field_mismatches": {
            f.name: int(n)
            for f, n in zip(
                spec.fields, total.field_mismatches.tolist() or [0] * len(spec.fields), strict=True
            )
        },
        "field_differences": _differences(spec, total),
        "breaks": {
            "flagged": total.flagged,
            "flagged_rate": total.flagged / total.pairs if total.pairs else 0.0,
            "by_class": {c: int(total.classes[i, 1]) for i, c in enumerate(CLASS_ORDER)},
        },
        "pairs_by_class": {c: int(total.classes[i, 0]) for i, c in enumerate(CLASS_ORDER)},
        "hotspots": {name: top(ranked, HOTSPOTS_IN_SUMMARY) for name, ranked in rankings(total).items()},
        "outputs": {"flagged": f"{FLAGGED_DIR}/part-*.parquet", "report": REPORT if opts.report else None},
    }
