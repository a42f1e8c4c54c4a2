"""`engine score-batch`: a trades dataset -> fail probabilities, risk bands and reasons, as Parquet.

Per piece of the input (a file's row groups or a CSV byte range, `engine.batch.sources`), in a
Dask task: the engine's table reader (`engine.features.columns.from_table`), the serving
path's validation rules (`engine.features.validate.problems`), the serving bundle's feature
plan (`FeaturePlan.compute`) and ONNX model (`ServingModel.score`): the very code and model
`Score` runs, partition-parallel. Risk bands from the bundle's thresholds; with `reasons`,
the trades at or above that band get the three features that raised their failure log-odds
most, by the bundle's TreeSHAP explainer (as `ScoreResponse.reasons`).

An invalid trade stops the job with its file, line or row, field and reason (as `engine train
--data` does), unless `drop_invalid`: then it is left out and counted per reason.
Output: `scores/part-NNNNN.parquet`, one per piece (in input order), and `summary.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.batch import sources
from engine.batch.cluster import run_tasks
from engine.batch.errors import UsageError
from engine.batch.options import DEFAULT_BLOCK_BYTES, DEFAULT_BLOCK_ROWS, REASON_CHOICES
from engine.models.spec import BAND_NAMES

Printer = Callable[[str], None]
SUMMARY = "summary.json"
#: the scores' Parquet files, inside the output folder
SCORES_DIR = "scores"
REASONS_PER_TRADE = 3
_MODELS: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class ScoreJob:
    bundle: str
    out: str
    #: reasons for trades at or above this band ("none": no reasons)
    reasons: str = "none"
    drop_invalid: bool = False


@dataclass(slots=True)
class ScoreStats:
    rows: int = 0
    scored: int = 0
    bands: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    explained: int = 0
    seconds: float = 0.0

    def merge(self, other: ScoreStats) -> None:
        self.rows += other.rows
        self.scored += other.scored
        self.bands.update(other.bands)
        self.dropped.update(other.dropped)
        self.explained += other.explained
        self.seconds += other.seconds


def serving_model(bundle: str) -> Any:
    """The bundle as `engine serve` loads it (checked, warmed up), once per worker process."""
    from engine.scoring.servable import load_serving_model

    model = _MODELS.get(bundle)
    if model is None:
        model = load_serving_model(Path(bundle))
        _MODELS[bundle] = model
    return model


def _reasons(model: Any, features: npt.NDArray[np.float32], rows: npt.NDArray[np.intp], n: int) -> Any:
    """list<struct<code, value, category, contribution>> per trade (empty for trades not explained)."""
    import pyarrow as pa

    explainer = model.explainer
    counts = np.zeros(n, dtype=np.int32)
    codes: list[str] = []
    values: list[float] = []
    categories: list[str | None] = []
    contributions: list[float] = []
    if rows.size:
        contrib = explainer.shap.contributions(np.ascontiguousarray(features[rows]))
        top = np.argsort(-contrib, axis=1, kind="stable")[:, :REASONS_PER_TRADE]
        top_c = np.take_along_axis(contrib, top, axis=1)
        top_v = np.take_along_axis(features[rows], top, axis=1)
        keep = top_c > 0.0
        counts[rows] = keep.sum(axis=1)
        for j, c, v in zip(top[keep].tolist(), top_c[keep].tolist(), top_v[keep].tolist(), strict=True):
            codes.append(explainer.codes[j])
            values.append(float(np.float32(v)))
            contributions.append(c)
            names = explainer.categories[j]
            categories.append(names[int(v)] if names and v == v and 0 <= int(v) < len(names) else None)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    struct = pa.StructArray.from_arrays(
        [
            pa.array(codes, pa.string()),
            pa.array(values, pa.float32()),
            pa.array(categories, pa.string()),
            pa.array(contributions, pa.float64()),
        ],
        names=["code", "value", "category", "contribution"],
    )
    return pa.ListArray.from_arrays(pa.array(offsets), struct)


def score_piece(piece: sources.Piece, job: ScoreJob) -> ScoreStats:
    """Score one piece of the trades dataset; write `part-NNNNN.parquet`; return its counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.batch.trades import read_trades

    started = time.perf_counter()
    model = serving_model(job.bundle)
    piece_ = read_trades(piece, job.drop_invalid)
    trades = piece_.trades
    stats = ScoreStats(rows=piece_.rows, dropped=piece_.dropped)
    features = model.plan.compute(trades)
    probabilities = model.predict(features)
    bands = model.bundle.manifest.risk_bands.assign(probabilities)
    names = np.asarray(BAND_NAMES, dtype=object)[bands - 1]
    stats.scored = len(trades)
    stats.bands.update(dict(zip(*np.unique(names, return_counts=True), strict=True)))
    columns: dict[str, Any] = {
        "trade_id": pa.array(trades.trade_id.tolist(), pa.string()),
        "fail_probability": pa.array(probabilities, pa.float32()),
        "risk_band": pa.array(names.tolist(), pa.string()),
        "model_version": pa.array([model.version] * len(trades), pa.string()),
    }
    if job.reasons != "none":
        if model.explainer is None:
            raise UsageError(
                f"{job.bundle}: the bundle carries no model.lgb.txt to explain scores; drop --reasons"
            )
        from engine.scoring.servable import explain_threshold

        rows = np.flatnonzero(probabilities >= explain_threshold(job.reasons, model.band_edges))
        columns["reasons"] = _reasons(model, features, rows, len(trades))
        stats.explained = int(rows.size)
    pq.write_table(pa.table(columns), Path(job.out) / f"part-{piece.number:05d}.parquet", compression="zstd")
    stats.seconds = time.perf_counter() - started
    return stats


def prepare_out(out: Path) -> None:
    """The output folder, emptied of a previous score-batch's files; refuses one holding anything else."""
    if out.exists():
        other = [p.name for p in out.iterdir() if p.name not in (SCORES_DIR, SUMMARY)]
        if other:
            raise UsageError(
                f"--out {out}: holds other files ({', '.join(sorted(other)[:5])}); give an empty folder"
            )
        shutil.rmtree(out / SCORES_DIR, ignore_errors=True)
        (out / SUMMARY).unlink(missing_ok=True)
    (out / SCORES_DIR).mkdir(parents=True, exist_ok=True)


def score_batch(
    data: str,
    out: Path,
    bundle: str,
    client: Any,
    *,
    reasons: str = "none",
    drop_invalid: bool = False,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    log: Printer = print,
) -> dict[str, Any]:
    """Score every trade of `data` with `bundle` on `client`'s cluster; write Parquet + summary.json."""
    from dask.delayed import delayed

    if reasons not in REASON_CHOICES:
        raise UsageError(f"--reasons must be one of {', '.join(REASON_CHOICES)}")
    started = time.perf_counter()
    model = serving_model(bundle)  # refuse a bad bundle here, before any task runs
    pieces = sources.plan(data, block_rows=block_rows, block_bytes=block_bytes)
    prepare_out(out)
    job = ScoreJob(bundle, str((out / SCORES_DIR).resolve()), reasons, drop_invalid)
    log(f"score-batch: {len(pieces)} piece(s) of {data}, bundle {model.name} {model.version}")
    task = delayed(score_piece, pure=True)
    total = ScoreStats()

    def progress(part: ScoreStats) -> str:
        total.merge(part)
        return f"{total.scored:,} trades scored"

    run_tasks(client, [task(p, job) for p in pieces], "score-batch", log, progress)
    elapsed = time.perf_counter() - started
    summary = {
        "data": data,
        "bundle": {"path": bundle, "name": model.name, "version": model.version},
        "rows": total.rows,
        "scored": total.scored,
        "dropped_invalid": dict(total.dropped),
        "risk_bands": {b: int(total.bands.get(b, 0)) for b in BAND_NAMES},
        "explained": total.explained,
        "partitions": len(pieces),
        "elapsed_s": round(elapsed, 3),
        "task_seconds": round(total.seconds, 3),
        "rows_per_s": round(total.scored / elapsed, 1) if elapsed > 0 else None,
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    log(
        f"score-batch: {total.scored:,} trades in {elapsed:.1f} s ({summary['rows_per_s']:,} rows/s) -> {out}"
    )
    return summary
