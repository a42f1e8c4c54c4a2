#!/usr/bin/env python
"""TradeScore batch benchmark: the issue #17 targets, measured side by side in one run.

What one run measures (about 10 minutes on this project's 2-core VM at the default sizes;
`--quick` shrinks every size tenfold, about 2 minutes)
-----------------------------------------------------------------------------------------
1. Extracts: `engine generate-extracts` writes a `--rows` pair (default 1M, B as Parquet so that
   both tools read the same Parquet files) and a `--big-rows` pair (default 10M).
2. datacompy 1.1 on the 1M pair, polars backend (the faster) and pandas backend: read the same
   Parquet files, rename / convert as the mapping says, compare. Wall time of each; their match,
   missing and per-column mismatch counts against engine discover's (must be identical).
3. `engine discover` on the 1M pair, the local default (no --scheduler), as a user runs it
   (wall clock of the whole command: Python start, local cluster, read, join, features, model,
   hotspots, report); the ratio to datacompy polars (target <= 2). Its peak RSS: the whole process
   tree (the command, the nannies, the workers) sampled every 0.1 s from /proc.
4. The same on the 10M pair: time, rows/s, peak RSS; RSS 10M / 1M (target <= 1.3).
5. The 1M pair again on a two-worker cluster started here with the standard commands
   (`dask scheduler`, 2 x `dask worker`; `--scheduler tcp://...`) and other partition sizes:
   the flagged pairs, sorted by key and written by one writer, byte-identical to the local run's.
6. Planted hotspots: each one's rank in its dimension (target: top 3); recall per planted class
   against the generator's labels (1M pair).
7. `engine score-batch` on `--score-rows` trades (Parquet partitions) with the shipped bundle:
   rows/s per core (2 workers), beside in-process ONNX Runtime rows/s on the same model (one
   thread, 100,000-row feature matrices computed beforehand: ORT alone); ratio (target >= 0.7),
   end to end and per task second.
8. `lightgbm.dask` on two workers against single-machine LightGBM, same `--train-rows` synthetic
   trades, same hash split, same parameters and early stopping: test ROC-AUC of each (target:
   within 0.005).

Results go to `loadtest/results/batch-bench-<timestamp>.json` and a table is printed. Heavy:
run it alone (`flock /tmp/tradescore-cpu.lock .venv/bin/python loadtest/batch_bench.py`).

    .venv/bin/python loadtest/batch_bench.py               # default sizes, ~10 min
    .venv/bin/python loadtest/batch_bench.py --quick       # sizes / 10, ~2 min
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results"
ENGINE = [sys.executable, "-m", "engine.cli"]
DASK = str(Path(sys.executable).with_name("dask"))
HOTSPOTS = ("desk=RATES-NY:4", "counterparty=CP0007:5", "business_date=2026-10-16:4")
FIELDS = ["status", "quantity", "amount", "counterparty_name", "counterparty_address", "trade_date"]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- process tree memory -----------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            out += [int(c) for c in Path(task).read_text().split()]
        except OSError:
            pass
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeRss:
    """Peak of the summed RSS of a process and all its descendants, sampled every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak, self.peak_procs = pid, every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                pids.append(p)
                todo += _children(p)
            total = sum(_rss_kib(p) for p in pids)
            if total > self.peak:
                self.peak, self.peak_procs = total, len(pids)
            time.sleep(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1024.0  # MiB


def run_engine(*args: str, timeout: float = 3600) -> dict[str, Any]:
    """`engine ARGS` as a user runs it: wall time, peak RSS of its process tree, its output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*ENGINE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = TreeRss(proc.pid)
    out, err = proc.communicate(timeout=timeout)
    wall = time.perf_counter() - t0
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"engine {' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "peak_rss_mib": peak, "stdout": out, "stderr": err}


# -- steps -------------------------------------------------------------------------------------


def generate(out: Path, rows: int) -> float:
    t0 = time.perf_counter()
    args = ["generate-extracts", "--rows", str(rows), "--out", str(out), "--b-format", "parquet"]
    for h in HOTSPOTS:
        args += ["--hotspot", h]
    run_engine(*args)
    return time.perf_counter() - t0


def datacompy_run(x: Path, backend: str) -> dict[str, Any]:
    """datacompy on the same Parquet files: read, rename / convert as the mapping says, compare."""
    import datacompy

    t0 = time.perf_counter()
    if backend == "polars":
        import polars as pl

        a = pl.read_parquet(str(x / "a" / "*.parquet"))
        b = pl.read_parquet(str(x / "b" / "*.parquet"))

        def ws(c: str) -> Any:
            return pl.col(c).str.strip_chars().str.replace_all(r"\s+", " ")

        left = a.select(
            book="book",
            trade_ref="trade_ref",
            status=pl.col("status").str.strip_chars().str.to_lowercase(),
            quantity=pl.col("qty").cast(pl.Float64),
            amount="amount",
            counterparty_name=ws("cpty_name"),
            counterparty_address=ws("cpty_address"),
            trade_date=pl.col("trade_date").str.to_date(),
        )
        right = b.select(
            book="BookCode",
            trade_ref="TradeId",
            status=pl.col("State").str.strip_chars().str.to_lowercase(),
            quantity=pl.col("Quantity").cast(pl.Float64),
            amount=pl.col("AmountMinor") * 0.01,
            counterparty_name=ws("CptyName"),
            counterparty_address=ws("CptyAddress"),
            trade_date=pl.col("TradeDate").str.to_datetime().dt.date(),
        )
        t1 = time.perf_counter()
        cmp: Any = datacompy.PolarsCompare(
            left, right, join_columns=["book", "trade_ref"], abs_tol={"amount": 0.005}
        )
    else:
        import pandas as pd

        a, b = pd.read_parquet(x / "a"), pd.read_parquet(x / "b")

        def ws_(s: Any) -> Any:
            return s.str.strip().str.replace(r"\s+", " ", regex=True)

        left = pd.DataFrame(
            {
                "book": a["book"],
                "trade_ref": a["trade_ref"],
                "status": a["status"].str.strip().str.lower(),
                "quantity": a["qty"].astype(float),
                "amount": a["amount"],
                "counterparty_name": ws_(a["cpty_name"]),
                "counterparty_address": ws_(a["cpty_address"]),
                "trade_date": pd.to_datetime(a["trade_date"]),
            }
        )
        right = pd.DataFrame(
            {
                "book": b["BookCode"],
                "trade_ref": b["TradeId"],
                "status": b["State"].str.strip().str.lower(),
                "quantity": b["Quantity"].astype(float),
                "amount": b["AmountMinor"] * 0.01,
                "counterparty_name": ws_(b["CptyName"]),
                "counterparty_address": ws_(b["CptyAddress"]),
                "trade_date": pd.to_datetime(b["TradeDate"]).dt.normalize(),
            }
        )
        t1 = time.perf_counter()
        cmp = datacompy.PandasCompare(
            left, right, join_columns=["book", "trade_ref"], abs_tol={"amount": 0.005}
        )
    counts = {
        "matched": len(cmp.intersect_rows),
        "missing_in_b": len(cmp.df1_unq_rows),
        "missing_in_a": len(cmp.df2_unq_rows),
        "all_equal": int(cmp.count_matching_rows()),
        "columns": {s["column"]: int(s["unequal_cnt"]) for s in cmp.column_stats if s["column"] in FIELDS},
    }
    t2 = time.perf_counter()
    return {"read_prepare_s": t1 - t0, "compare_s": t2 - t1, "total_s": t2 - t0, "counts": counts}


def our_counts(summary: dict[str, Any]) -> dict[str, Any]:
    c = summary["counts"]
    return {
        "matched": c["matched"],
        "missing_in_b": c["missing_in_b"],
        "missing_in_a": c["missing_in_a"],
        "all_equal": c["matched_all_fields_equal"],
        "columns": summary["field_mismatches"],
    }


def discover(x: Path, out: Path, *extra: str) -> dict[str, Any]:
    run = run_engine(
        "discover",
        "--mapping",
        str(x / "mapping.yaml"),
        "--a",
        str(x / "a"),
        "--b",
        str(x / "b"),
        "--out",
        str(out),
        *extra,
    )
    run["summary"] = json.loads((out / "summary.json").read_text())
    return run


def canonical_flagged(out: Path) -> tuple[str, int]:
    """sha256 of the flagged pairs sorted by key, written by one writer (as bytes: what 'identical' means)."""
    import pyarrow.parquet as pq

    table = pq.read_table(out / "flagged").sort_by([("key", "ascending"), ("occurrence", "ascending")])
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(None), buf, compression="zstd")
    return hashlib.sha256(buf.getvalue()).hexdigest(), table.num_rows


class DaskProcesses:
    """`dask scheduler` + `workers` x `dask worker`, the standard commands, on this machine."""

    def __init__(self, workdir: Path, workers: int = 2) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        scheduler_file = workdir / "scheduler.json"
        self.procs = [
            subprocess.Popen(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--dashboard-address",
                    ":0",
                    "--scheduler-file",
                    str(scheduler_file),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]
        for i in range(workers):
            self.procs.append(
                subprocess.Popen(
                    [
                        DASK,
                        "worker",
                        self.address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--local-directory",
                        str(workdir / f"w{i}"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def hotspots_and_recall(x: Path, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    ranks = {}
    for spot in HOTSPOTS:
        dim, rest = spot.split("=")
        value = rest.rsplit(":", 1)[0]
        values = [h["value"] for h in summary["hotspots"][dim]]
        ranks[spot] = values.index(value) + 1 if value in values else None
    flagged = pd.read_parquet(out / "flagged", columns=["key", "occurrence"])
    found = set(zip(flagged["key"], flagged["occurrence"], strict=True))
    truth = pd.read_parquet(x / "truth", columns=["book", "trade_ref", "occurrence", "label"])
    keys = truth["book"] + "|" + truth["trade_ref"]
    truth["found"] = [(k, o) in found for k, o in zip(keys, truth["occurrence"], strict=True)]
    breaks = truth[truth["label"] != "consistent"]
    recall = {str(k): round(float(v), 4) for k, v in breaks.groupby("label")["found"].mean().items()}
    flagged_consistent = int(truth.loc[truth["label"] == "consistent", "found"].sum())
    return {
        "ranks": ranks,
        "recall": recall,
        "recall_all": round(float(breaks["found"].mean()), 4),
        "precision": round(float(breaks["found"].sum()) / max(1, len(found)), 4),
        "flagged_consistent": flagged_consistent,
    }


def score_batch_vs_ort(work: Path, rows: int) -> dict[str, Any]:
    from engine.features.columns import from_table
    from engine.models.bundle import DEFAULT_BUNDLE
    from engine.scoring.servable import load_serving_model
    from engine.trade_files import read_table
    from engine.training.data import write_trades
    from engine.training.synthetic import generate_trades

    trades, labels, _ = generate_trades(rows, seed=17)
    data = work / "trades"
    chunk = 250_000
    for i, lo in enumerate(range(0, rows, chunk)):
        part = slice(lo, min(rows, lo + chunk))
        write_trades(data / f"part-{i:04d}.parquet", trades.take(part), labels[part])
    run = run_engine("score-batch", "--data", str(data), "--out", str(work / "scores"), "--workers", "2")
    summary = json.loads((work / "scores" / "summary.json").read_text())
    # in-process ONNX Runtime alone, one thread, on feature matrices computed beforehand
    model = load_serving_model(DEFAULT_BUNDLE)
    cols = from_table(read_table(data / "part-0000.parquet"))
    x = model.plan.compute(cols)
    block = x[:100_000]
    model.predict(block)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        model.predict(block)
        best = max(best, len(block) / (time.perf_counter() - t0))
    cores = 2
    end_to_end = summary["scored"] / run["wall_s"] / cores
    per_task = summary["scored"] / summary["task_seconds"]
    return {
        "rows": rows,
        "score_batch_wall_s": run["wall_s"],
        "score_batch_rows_per_s": summary["scored"] / run["wall_s"],
        "score_batch_rows_per_s_per_core": end_to_end,
        "score_batch_rows_per_task_s": per_task,
        "ort_rows_per_s_one_thread": best,
        "ratio_end_to_end": end_to_end / best,
        "ratio_per_task_second": per_task / best,
    }


def train_compare(rows: int) -> dict[str, Any]:
    import lightgbm as lgb

    from engine.batch.cluster import connect
    from engine.batch.train import TEST, TRAIN, VALID, Part, best_iteration, fit, heldout, prepare
    from engine.training import metrics as m
    from engine.training.synthetic import generate_trades
    from engine.training.train import TrainConfig

    config = TrainConfig(threads=1)
    trades, labels, references = generate_trades(rows, seed=config.seed)
    out: dict[str, Any] = {"rows": rows}
    with connect(None, 2) as client:
        bounds = np.linspace(0, rows, 9).astype(int)
        parts = client.scatter(
            [
                Part(trades.take(slice(lo, hi)), labels[lo:hi])
                for lo, hi in zip(bounds, bounds[1:], strict=False)
            ]
        )
        prepared = prepare(client, parts, references, config, lambda _: None)
        t0 = time.perf_counter()
        booster, _ = fit(client, prepared, config, lambda _: None)
        out["dask_fit_s"] = time.perf_counter() - t0
        xv, yv = heldout(client, prepared, VALID)
        xt, yt = heldout(client, prepared, TEST)
        xtr, ytr = heldout(client, prepared, TRAIN)
    params = {k: v for k, v in config.lgb_params().items() if k not in ("metric", "first_metric_only")}
    params["num_threads"] = 2
    t0 = time.perf_counter()
    local = lgb.train(params, lgb.Dataset(xtr, ytr), num_boost_round=config.num_boost_round)
    out["single_fit_s"] = time.perf_counter() - t0
    for name, model in (("dask", booster), ("single", local)):
        best, _ = best_iteration(model, xv, yv, config.early_stopping_rounds)
        out[f"{name}_best_iteration"] = best
        out[f"{name}_roc_auc"] = m.roc_auc(yt, model.predict(xt, num_iteration=best))
    out["roc_auc_diff"] = out["dask_roc_auc"] - out["single_roc_auc"]
    out["split"] = {"train": len(ytr), "valid": len(yv), "test": len(yt)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The issue #17 batch targets side by side in one run (about 10 minutes on 2 cores; "
        "--quick about 2). See the module docstring.",
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="records of the datacompy pair (default 1M)"
    )
    parser.add_argument(
        "--big-rows", type=int, default=10_000_000, help="records of the big pair (default 10M)"
    )
    parser.add_argument(
        "--score-rows", type=int, default=2_000_000, help="trades for score-batch (default 2M)"
    )
    parser.add_argument("--train-rows", type=int, default=400_000, help="trades for the training compare")
    parser.add_argument("--quick", action="store_true", help="every size / 10")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--skip", action="append", default=[], choices=("big", "cluster", "score", "train"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.big_rows = args.rows // 10, args.big_rows // 10
        args.score_rows, args.train_rows = args.score_rows // 10, args.train_rows // 10
    work = args.work or Path(tempfile.mkdtemp(prefix="batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "sizes": {
            "rows": args.rows,
            "big_rows": args.big_rows,
            "score_rows": args.score_rows,
            "train_rows": args.train_rows,
        },
    }
    try:
        small, big = work / "pair", work / "big"
        if not small.exists():
            log(f"generating the {args.rows:,}-record pair")
            res["generate_small_s"] = generate(small, args.rows)
        log("datacompy, polars and pandas backends")
        res["datacompy_polars"] = datacompy_run(small, "polars")
        res["datacompy_pandas"] = datacompy_run(small, "pandas")
        log("engine discover, local default")
        local = discover(small, work / "d-local")
        res["discover_small"] = {k: v for k, v in local.items() if k in ("wall_s", "peak_rss_mib")}
        res["discover_small"]["elapsed_s"] = local["summary"]["elapsed_s"]
        res["counts"] = {
            "ours": our_counts(local["summary"]),
            "polars": res["datacompy_polars"]["counts"],
            "pandas": res["datacompy_pandas"]["counts"],
        }
        res["counts"]["identical"] = (
            res["counts"]["ours"] == res["counts"]["polars"] == res["counts"]["pandas"]
        )
        res["ratio_discover_vs_polars"] = local["wall_s"] / res["datacompy_polars"]["total_s"]
        res["hotspots"] = hotspots_and_recall(small, work / "d-local", local["summary"])
        local_hash = canonical_flagged(work / "d-local")
        if "cluster" not in args.skip:
            log("engine discover on dask scheduler + 2 dask worker processes")
            procs = DaskProcesses(work / "dask")
            try:
                remote = discover(
                    small,
                    work / "d-cluster",
                    "--scheduler",
                    procs.address,
                    "--partition-rows",
                    str(max(1, args.rows // 3)),
                )
            finally:
                procs.close()
            remote_hash = canonical_flagged(work / "d-cluster")
            res["cluster"] = {
                "wall_s": remote["wall_s"],
                "flagged_rows": local_hash[1],
                "sha256_local": local_hash[0],
                "sha256_cluster": remote_hash[0],
                "byte_identical": local_hash == remote_hash,
            }
        if "big" not in args.skip:
            if not big.exists():
                log(f"generating the {args.big_rows:,}-record pair")
                res["generate_big_s"] = generate(big, args.big_rows)
            log("engine discover on the big pair, local default")
            large = discover(big, work / "d-big")
            res["discover_big"] = {
                "wall_s": large["wall_s"],
                "peak_rss_mib": large["peak_rss_mib"],
                "pairs": large["summary"]["counts"]["pairs"],
                "pairs_per_s": large["summary"]["counts"]["pairs"] / large["wall_s"],
                "elapsed_s": large["summary"]["elapsed_s"],
            }
            res["rss_ratio_big_vs_small"] = large["peak_rss_mib"] / local["peak_rss_mib"]
        if "score" not in args.skip:
            log("score-batch vs in-process ONNX Runtime")
            res["score_batch"] = score_batch_vs_ort(work, args.score_rows)
        if "train" not in args.skip:
            log("lightgbm.dask vs single-machine LightGBM")
            res["train"] = train_compare(args.train_rows)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"batch-bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    report(res)
    print(f"\nresults: {path}")
    return 0


def report(res: dict[str, Any]) -> None:
    def f(v: Any, digits: int = 2) -> str:
        return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    pol, pan, small = res["datacompy_polars"], res["datacompy_pandas"], res["discover_small"]
    print(f"\n== discovery vs datacompy, {res['sizes']['rows']:,}-record pair (same Parquet files)")
    print(
        f"datacompy polars : {f(pol['total_s'])} s (read+prepare {f(pol['read_prepare_s'])}, compare "
        f"{f(pol['compare_s'])})"
    )
    print(
        f"datacompy pandas : {f(pan['total_s'])} s (read+prepare {f(pan['read_prepare_s'])}, compare "
        f"{f(pan['compare_s'])})"
    )
    print(
        f"engine discover  : {f(small['wall_s'])} s end to end (inside: {small['elapsed_s']}), peak RSS "
        f"{f(small['peak_rss_mib'], 0)} MiB"
    )
    print(f"ratio discover / polars: {f(res['ratio_discover_vs_polars'])}  (target <= 2)")
    print(f"counts identical (ours, polars, pandas): {res['counts']['identical']}  {res['counts']['ours']}")
    hs = res["hotspots"]
    print(f"planted hotspot ranks: {hs['ranks']}  (target: each <= 3)")
    print(f"recall per class: {hs['recall']}; all {hs['recall_all']}, precision {hs['precision']}")
    if "cluster" in res:
        c = res["cluster"]
        print(
            f"local default vs dask scheduler + 2 workers: flagged {c['flagged_rows']:,} rows, "
            f"byte-identical "
            f"after sorting by key: {c['byte_identical']} ({c['sha256_local'][:16]})"
        )
    if "discover_big" in res:
        b = res["discover_big"]
        print(f"\n== discovery, {res['sizes']['big_rows']:,}-record pair, local default")
        print(
            f"time {f(b['wall_s'])} s, {f(b['pairs_per_s'], 0)} pairs/s, "
            f"peak RSS {f(b['peak_rss_mib'], 0)} MiB; "
            f"RSS big / small {f(res['rss_ratio_big_vs_small'])}  (target <= 1.3)"
        )
    if "score_batch" in res:
        s = res["score_batch"]
        print(f"\n== score-batch, {s['rows']:,} trades, 2 workers")
        print(
            f"score-batch {f(s['score_batch_rows_per_s'], 0)} rows/s "
            f"({f(s['score_batch_rows_per_s_per_core'], 0)} "
            f"per core, {f(s['score_batch_rows_per_task_s'], 0)} per task second); in-process ORT alone "
            f"{f(s['ort_rows_per_s_one_thread'], 0)} rows/s on one thread"
        )
        print(
            f"ratio per core {f(s['ratio_end_to_end'])} end to end, {f(s['ratio_per_task_second'])} per task "
            "second  (target >= 0.7)"
        )
    if "train" in res:
        t = res["train"]
        print(f"\n== lightgbm.dask (2 workers) vs single machine, {t['rows']:,} trades, same split")
        print(
            f"ROC-AUC dask {t['dask_roc_auc']:.4f} (best iteration {t['dask_best_iteration']}), single "
            f"{t['single_roc_auc']:.4f} ({t['single_best_iteration']}); diff {t['roc_auc_diff']:+.4f}  "
            "(target within 0.005)"
        )


if __name__ == "__main__":
    sys.exit(main())
