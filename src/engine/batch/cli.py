"""`engine discover | score-batch | generate-extracts` and `engine train --scheduler`: the batch side's CLI.

`engine.cli` registers them: `add_batch_parsers(sub)` adds the three commands, and
`add_distributed_training(train_parser)` gives `engine train` its `--scheduler` and
`--partitions` options (without `--scheduler`, `engine train` trains in this process, as before).

Exit codes: 0 done; 1 the data or the bundle cannot be used (a bad value, an unreadable
partition: the message names the file, the row and the column); 2 a usage error (bad options,
a mapping file that does not validate, a column the mapping names that an extract lacks, an
output folder holding other files); 3 (train) the ONNX parity check failed, nothing written.
Dask, pandas and the rest of the `[batch]` extra are imported inside the commands only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the training commands' option parsers and progress printer: one definition for both CLIs
from engine.training.cli import _fraction, _positive_int, _printer

Printer = Callable[[str], None]
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARITY = 0, 1, 2, 3

_SCHEDULER_HELP = (
    "Dask scheduler to run on, e.g. tcp://HOST:8786 (a `dask scheduler`, a Dask Kubernetes operator "
    "DaskCluster's scheduler Service, a Dask Gateway cluster's address); every worker needs this package "
    "and the input and output paths. Default: a local cluster of --workers processes on this machine"
)


def _guarded(name: str, body: Callable[[argparse.Namespace, Printer], int]) -> Callable[..., int]:
    """`body` with the batch errors turned into a message and an exit code."""

    def run(args: argparse.Namespace, log: Printer | None = None) -> int:
        from engine.batch.errors import BatchError, UsageError
        from engine.errors import BundleError
        from engine.training.errors import ParityError, TrainingError

        log = log or _printer()
        try:
            return body(args, log)
        except UsageError as exc:
            log(f"engine {name}: usage error: {exc}")
            return EXIT_USAGE
        except ParityError as exc:
            log(f"engine {name}: parity check failed: {exc}")
            return EXIT_PARITY
        except (BatchError, BundleError, TrainingError) as exc:
            log(f"engine {name}: error: {exc}")
            return EXIT_ERROR

    return run


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help=_SCHEDULER_HELP)
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="worker processes of the local cluster, one thread each (default: one per core); ignored with "
        "--scheduler",
    )


def _add_block_options(p: argparse.ArgumentParser) -> None:
    from engine.batch.options import DEFAULT_BLOCK_BYTES, DEFAULT_BLOCK_ROWS

    p.add_argument(
        "--block-rows",
        type=_positive_int,
        default=DEFAULT_BLOCK_ROWS,
        help="Parquet: row groups are gathered into partitions of up to this many rows (a row group is never "
        "split) (default: %(default)s)",
    )
    p.add_argument(
        "--block-mb",
        type=_positive_int,
        default=DEFAULT_BLOCK_BYTES >> 20,
        help="CSV: partitions of this many megabytes, cut at line ends (default: %(default)s)",
    )


# --------------------------------------------------------------------------- discover


def add_discover_parser(sub: Any) -> argparse.ArgumentParser:
    from engine.batch.options import (
        DEFAULT_CONTAMINATION,
        DEFAULT_DISCOVER_SEED,
        DEFAULT_PARTITION_ROWS,
        DEFAULT_SAMPLE_PAIRS,
        DEFAULT_SQL_PARTS,
        MODEL_CHOICES,
    )

    p = sub.add_parser(
        "discover",
        help="compare two systems' extracts: matches, missing records, mismatched fields, flagged breaks, "
        "hotspot report",
        description="Phase 1 of a reconciliation: join two extracts of the same records on their key (full "
        "outer join, duplicated keys paired in order), compare the fields the mapping file names with its "
        "tolerances, score every record pair with the sync-break model (the same features and model as "
        "ScorePairs, or an IsolationForest fitted on the data), and write OUT/flagged/part-*.parquet (every "
        "flagged pair: key, class, score, believed side, corrections, reasons), OUT/summary.json (match "
        "counts, per-field mismatch counts, breaks by class, top hotspots) and OUT/report.html (hotspots "
        "ranked by excess breaks with Wilson intervals, a per-field mismatch heat map, the break rate over "
        "business dates, score distributions). Nothing is changed in either source. Runs on Dask: a local "
        "cluster by default, --scheduler for a real one. Progress goes to stderr.",
        epilog="Exit codes: 0 done; 1 a source cannot be read or a value does not fit the mapping "
        "(the message "
        "names the file, row and column); 2 usage error (options, the mapping file, a column the mapping "
        "names that an extract lacks, an output folder holding other files). Example: engine "
        "generate-extracts --rows 200000 --out x && engine discover --mapping x/mapping.yaml --a x/a --b x/b "
        "--out x/discovery",
    )
    p.add_argument("--mapping", type=Path, required=True, help="the mapping file (YAML; see docs/batch.md)")
    for side in ("a", "b"):
        p.add_argument(
            f"--{side}",
            required=True,
            metavar="SOURCE",
            help=f"extract of system {side.upper()}: a .parquet or .csv file, a folder of them (read whole, "
            "recursively), or a postgresql://user:password@host:5432/db URL with --" + f"{side}-query",
        )
        p.add_argument(
            f"--{side}-query",
            default=None,
            metavar="SQL",
            help=f"with a postgresql:// --{side}: the query whose rows are system {side.upper()}'s extract",
        )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (new, empty, or a previous discovery's)"
    )
    p.add_argument(
        "--model",
        choices=MODEL_CHOICES,
        default=MODEL_CHOICES[0],
        help="bundle: the --bundle's sync-break model, as ScorePairs serves it; isolation-forest: a forest "
        "fitted on a sample of these pairs (no labels needed) (default: %(default)s)",
    )
    p.add_argument(
        "--bundle", type=Path, default=None, help="model bundle (default: the bundle shipped in the package)"
    )
    p.add_argument(
        "--contamination",
        type=_fraction,
        default=DEFAULT_CONTAMINATION,
        help="with --model isolation-forest: share of the sampled pairs the forest's threshold flags "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--sample-pairs",
        type=_positive_int,
        default=DEFAULT_SAMPLE_PAIRS,
        help="with --model isolation-forest: about how many pairs (a hash sample of keys) it is fitted on "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=DEFAULT_DISCOVER_SEED, help="the forest's seed (default: %(default)s)"
    )
    p.add_argument(
        "--partition-rows",
        type=_positive_int,
        default=DEFAULT_PARTITION_ROWS,
        help="rows of each extract per shuffle partition (memory per task grows with it) "
        "(default: %(default)s)",
    )
    _add_block_options(p)
    p.add_argument(
        "--sql-partitions",
        type=_positive_int,
        default=DEFAULT_SQL_PARTS,
        help="postgresql:// sources are read in this many parts, by a hash of the key (default: %(default)s)",
    )
    p.add_argument(
        "--no-report", action="store_true", help="skip report.html (the summary and Parquet still)"
    )
    _add_cluster_options(p)
    p.set_defaults(func=run_discover)
    parser: argparse.ArgumentParser = p
    return parser


def _discover(args: argparse.Namespace, log: Printer) -> int:
    from engine.batch.cluster import connect, describe
    from engine.batch.discover import REPORT, SUMMARY, Source, discover, plan_sources, prepare_out
    from engine.batch.mapping import load_mapping
    from engine.batch.options import Options
    from engine.models.bundle import DEFAULT_BUNDLE

    spec = load_mapping(args.mapping)
    opts = Options(
        model=args.model,
        bundle=str(args.bundle or DEFAULT_BUNDLE),
        contamination=args.contamination,
        sample_pairs=args.sample_pairs,
        seed=args.seed,
        partition_rows=args.partition_rows,
        block_rows=args.block_rows,
        block_bytes=args.block_mb << 20,
        sql_parts=args.sql_partitions,
        report=not args.no_report,
    )
    a, b = Source(args.a, args.a_query), Source(args.b, args.b_query)
    pieces = plan_sources(spec, a, b, opts)  # usage errors before a cluster starts
    prepare_out(args.out)
    with connect(args.scheduler, args.workers) as client:
        log(f"discover: cluster {describe(client)}")
        discover(spec, a, b, args.out, client, opts, log, pieces)
    print(args.out / SUMMARY)
    if opts.report:
        print(args.out / REPORT)
    return EXIT_OK


run_discover = _guarded("discover", _discover)


# --------------------------------------------------------------------------- score-batch


def add_score_batch_parser(sub: Any) -> argparse.ArgumentParser:
    from engine.batch.options import REASON_CHOICES

    p = sub.add_parser(
        "score-batch",
        help="score a trades dataset (files or partitions) into Parquet, partition-parallel on Dask",
        description="Score every trade of a dataset with the serving bundle: the same validation rules, "
        "features and ONNX model as Score, one Dask task per partition. Writes OUT/scores/part-NNNNN.parquet "
        "(trade_id, fail_probability, risk_band, model_version, and with --reasons the reasons) and "
        "OUT/summary.json. Progress goes to stderr.",
        epilog="Exit codes: 0 done; 1 an invalid trade or unreadable partition (file, line or row, field, "
        "reason); 2 usage error.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="trades: a .parquet or .csv file or a folder of them, with the columns of `engine "
        "generate`'s output",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (new, empty, or a previous score-batch's)"
    )
    p.add_argument(
        "--bundle", type=Path, default=None, help="model bundle (default: the bundle shipped in the package)"
    )
    p.add_argument(
        "--reasons",
        choices=REASON_CHOICES,
        default="none",
        help="add reasons (TreeSHAP, the three features that raised the failure log-odds most) for trades in "
        "this risk band or above; none: no reasons column (default: %(default)s)",
    )
    p.add_argument(
        "--drop-invalid",
        action="store_true",
        help="leave out trades that fail validation and count them per reason in the summary (default: stop "
        "at the first one, naming it)",
    )
    _add_block_options(p)
    _add_cluster_options(p)
    p.set_defaults(func=run_score_batch)
    parser: argparse.ArgumentParser = p
    return parser


def _score_batch(args: argparse.Namespace, log: Printer) -> int:
    from engine.batch.cluster import connect, describe
    from engine.batch.score import SUMMARY, score_batch
    from engine.models.bundle import DEFAULT_BUNDLE

    with connect(args.scheduler, args.workers) as client:
        log(f"score-batch: cluster {describe(client)}")
        score_batch(
            args.data,
            args.out,
            str(args.bundle or DEFAULT_BUNDLE),
            client,
            reasons=args.reasons,
            drop_invalid=args.drop_invalid,
            block_rows=args.block_rows,
            block_bytes=args.block_mb << 20,
            log=log,
        )
    print(args.out / SUMMARY)
    return EXIT_OK


run_score_batch = _guarded("score-batch", _score_batch)


# --------------------------------------------------------------------------- generate-extracts


def add_generate_extracts_parser(sub: Any) -> argparse.ArgumentParser:
    from engine.batch.options import DEFAULT_EXTRACTS_SEED, DEFAULT_HOTSPOTS, DIMENSIONS

    p = sub.add_parser(
        "generate-extracts",
        help="write two systems' extracts of the same trades with planted breaks, hotspots and labels",
        description="Write OUT/a (system A, 'trading': Parquet) and OUT/b (system B, 'risk': CSV or Parquet, "
        "other column names, types and units), OUT/truth (per record: planted break class and broken side), "
        "OUT/truth.json and OUT/mapping.yaml (the mapping engine discover needs), so that discovery's recall "
        "and its hotspot ranking can be checked against the truth.",
    )
    p.add_argument("--rows", type=_positive_int, default=100_000, help="records (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument(
        "--seed", type=int, default=DEFAULT_EXTRACTS_SEED, help="generator seed (default: %(default)s)"
    )
    p.add_argument(
        "--hotspot",
        action="append",
        default=None,
        metavar="DIMENSION=VALUE:FACTOR",
        help=f"multiply every break class's rate by FACTOR for records with this dimension value; DIMENSION "
        f"is one of {', '.join(DIMENSIONS)}; repeatable (default: {' '.join(DEFAULT_HOTSPOTS)}; "
        "--hotspot none "
        "for none)",
    )
    p.add_argument(
        "--b-format",
        choices=("csv", "parquet"),
        default="csv",
        help="system B's file format (default: %(default)s)",
    )
    p.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=500_000,
        help="records per output file (one Parquet row group, one partition) (default: %(default)s)",
    )
    p.set_defaults(func=run_generate_extracts)
    parser: argparse.ArgumentParser = p
    return parser


def _generate_extracts(args: argparse.Namespace, log: Printer) -> int:
    from engine.batch.extracts import Hotspot, generate_extracts
    from engine.batch.options import DEFAULT_HOTSPOTS

    given = args.hotspot if args.hotspot is not None else list(DEFAULT_HOTSPOTS)
    hotspots = [] if given == ["none"] else [Hotspot.parse(h) for h in given]
    generate_extracts(
        args.out,
        args.rows,
        seed=args.seed,
        hotspots=hotspots,
        b_format=args.b_format,
        chunk_rows=args.chunk_rows,
        log=log,
    )
    print(args.out / "mapping.yaml")
    return EXIT_OK


run_generate_extracts = _guarded("generate-extracts", _generate_extracts)


# --------------------------------------------------------------------------- train --scheduler


def add_distributed_training(train: argparse.ArgumentParser) -> None:
    """Give `engine train` `--scheduler` / `--workers` / `--partitions`; with --scheduler it trains with
    lightgbm.dask (`engine.batch.train`), otherwise as before."""
    train.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="train with lightgbm.dask on this Dask cluster (tcp://HOST:8786), or `local` for a local "
        "cluster "
        "of --workers processes; --data must then be a file or folder of partitions and needs "
        "--reference-from. The same bundle, parity check and metrics; train / valid / test split by a "
        "hash of "
        "trade_id. Default: train in this process",
    )
    train.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="with --scheduler local: worker processes (default: one per core)",
    )
    train.add_argument(
        "--partitions",
        type=_positive_int,
        default=None,
        help="with --scheduler and --synthetic-rows: partitions the synthetic trades are cut into (default: "
        "two per worker)",
    )
    local = train.get_default("func")
    train.set_defaults(func=_dispatch_train(local))


def _dispatch_train(local: Callable[..., int]) -> Callable[..., int]:
    def run(args: argparse.Namespace, log: Printer | None = None) -> int:
        if getattr(args, "scheduler", None) is None:
            return local(args, log) if log is not None else local(args)
        return run_train_distributed(args, log)

    return run


def _train_distributed(args: argparse.Namespace, log: Printer) -> int:
    from dask.delayed import delayed

    from engine.batch import sources
    from engine.batch.cluster import connect, describe
    from engine.batch.errors import UsageError
    from engine.batch.train import Part, read_part, train_distributed
    from engine.models.bundle import sha256_file
    from engine.models.reference import ReferenceTables
    from engine.training.cli import DEFAULT_SYNTHETIC_ROWS, train_config, write_trained
    from engine.training.export import check_out
    from engine.training.synthetic import generate_trades

    started = time.perf_counter()
    check_out(args.out, keep_pairs=not args.drop_pair_model)
    config = train_config(args, threads=1)  # a worker trains with its own Dask threads
    scheduler = None if args.scheduler == "local" else args.scheduler
    with connect(scheduler, args.workers) as client:
        workers = len(client.scheduler_info()["workers"])
        log(f"train: cluster {describe(client)}")
        source: dict[str, Any]
        if args.data is not None:
            if args.reference_from is None:
                raise UsageError(
                    "--scheduler with --data needs --reference-from BUNDLE_DIR (the reference tables)"
                )
            references = ReferenceTables.read(args.reference_from)
            pieces = sources.plan(str(args.data))
            parts = client.persist([delayed(read_part)(p, args.drop_invalid) for p in pieces])
            source = {
                "kind": "files",
                "path": str(Path(args.data).resolve()),
                "partitions": len(pieces),
                "references": f"from {Path(args.reference_from).resolve()}",
            }
            if Path(args.data).is_file():
                source["sha256"] = sha256_file(Path(args.data))
        else:
            if args.reference_from is not None:
                raise UsageError(
                    "--reference-from applies to --data; synthetic trades bring their own tables"
                )
            rows = args.synthetic_rows or DEFAULT_SYNTHETIC_ROWS
            trades, labels, references = generate_trades(rows, args.seed)
            count = args.partitions or 2 * workers
            bounds = [round(i * rows / count) for i in range(count + 1)]
            parts = client.scatter(
                [
                    Part(trades.take(slice(lo, hi)), labels[lo:hi])
                    for lo, hi in zip(bounds, bounds[1:], strict=False)
                ]
            )
            source = {
                "kind": "synthetic",
                "generator": "engine.training.synthetic.generate_trades",
                "rows": rows,
                "seed": args.seed,
                "partitions": count,
            }
        trained = train_distributed(client, parts, references, config, log)
    elapsed = {
        **{k.removesuffix("_s"): round(v, 2) for k, v in trained.timings.items()},
        "before_export": round(time.perf_counter() - started, 2),
    }
    split = "by a hash of trade_id; valid = early stopping + risk bands, test = metrics"
    distributed = {"scheduler": args.scheduler, "workers": workers, "library": "lightgbm.dask"}
    write_trained(args, trained, config, source, split, elapsed, log, distributed=distributed)
    log(f"done in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


run_train_distributed = _guarded("train", _train_distributed)


def add_batch_parsers(sub: Any) -> None:
    add_discover_parser(sub)
    add_score_batch_parser(sub)
    add_generate_extracts_parser(sub)
