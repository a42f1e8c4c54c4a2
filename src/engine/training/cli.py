"""`engine train | export | generate | train-pairs | retrain`: subcommands for the engine's one CLI.

`engine.cli` registers them with `add_train_parser(sub)`, `add_export_parser(sub)`,
`add_generate_parser(sub)`, `add_train_pairs_parser(sub)` and
`add_retrain_parser(sub)`; each sets `func`, which takes the parsed arguments
and returns the exit code (0 ok, 1 bad input or unusable model, 3 ONNX parity
failure — nothing written; `retrain`: 4 not promoted). Until then (or without the engine
entry point), `python -m engine.training.cli <command> ...` runs them too.

LightGBM, onnxmltools, pyarrow and scikit-learn (the `[train]` extra) are imported only
inside the commands, so `engine serve` never needs them.

The shipped default bundle (src/engine/models/default) is rebuilt, bit for bit
in its model and tables, by::

    engine train --synthetic-rows 400000 --seed 20261121 --threads 2 \\
        --out src/engine/models/default --version 1.0.0
    engine train-pairs --bundle src/engine/models/default

(or `python -m engine.training.cli train ...` with the same arguments). The
trees depend on the thread count, so keep `--threads 2`. `engine train` writes
the trade model and keeps the sync-break model a bundle at --out already has
(`--drop-pair-model` leaves it out); `engine train-pairs` adds or replaces the
sync-break model and keeps the trade model.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.models.bundle import sha256_file
from engine.training.train import DEFAULT_SEED, TrainConfig

Printer = Callable[[str], None]

DEFAULT_SYNTHETIC_ROWS = 400_000
DEFAULT_EXPORT_ROWS = 100_000
EXIT_OK, EXIT_ERROR, EXIT_PARITY = 0, 1, 3
_DEFAULTS = TrainConfig()


def _printer() -> Printer:
    def emit(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return emit


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be inside (0, 1), got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _band_rule(text: str) -> Any:
    from engine.training.metrics import BandRule

    try:
        return BandRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_band_option(p: argparse.ArgumentParser) -> None:
    from engine.training.metrics import DEFAULT_BAND_PROBABILITIES

    default = "probability:" + ",".join(f"{v:g}" for v in DEFAULT_BAND_PROBABILITIES)
    p.add_argument(
        "--risk-bands",
        type=_band_rule,
        default=_band_rule(default),
        metavar="RULE",
        help="lower bounds of MEDIUM, HIGH, CRITICAL: 'probability:A,B,C', calibrated fail probabilities, "
        "the same meaning on any data; or 'share:A,B,C', the scores above which those shares of the "
        "validation trades fall (a band's fail rate then moves with the data's). The report and the "
        f"manifest's metrics give each band's observed fail rate on held-out rows (default: {default})",
    )


def _add_bundle_options(p: argparse.ArgumentParser, out_required: bool) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=out_required,
        default=None if out_required else Path("bundle"),
        help="bundle directory to write; built next to it and swapped in atomically. An existing "
        "bundle there is replaced, keeping its sync-break model (engine train-pairs) unless "
        "--drop-pair-model; any other non-empty directory is refused"
        + ("" if out_required else " (default: ./bundle)"),
    )
    p.add_argument(
        "--drop-pair-model",
        action="store_true",
        help="when --out holds a bundle with a sync-break model, write the new bundle without it "
        "(default: carry it over, checked, so ScorePairs keeps serving it after the hot reload)",
    )
    p.add_argument(
        "--name", default="settlement-fail", help="model name recorded in the manifest (default: %(default)s)"
    )
    p.add_argument(
        "--version",
        default=None,
        help="model version recorded in the manifest "
        "(default: UTC date + model hash, e.g. 2026.11.21+1a2b3c4d)",
    )
    p.add_argument(
        "--parity-rows",
        type=_positive_int,
        default=_DEFAULTS.parity_rows,
        help="held-out rows on which ONNX Runtime must match LightGBM within 1e-5 before anything is "
        "written (default: %(default)s; fewer when fewer held-out rows exist)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=_DEFAULTS.threads,
        help="CPU threads for LightGBM; results are reproducible for a fixed count (default: %(default)s)",
    )


def _add_source_options(p: argparse.ArgumentParser, rows_default: int, what: str) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        type=Path,
        help="trades file (.csv, .parquet, .jsonl) with the columns of `engine generate`'s output and a "
        "`failed` label (1/0, true/false)" + (" if metrics are wanted" if what == "export" else ""),
    )
    src.add_argument(
        "--synthetic-rows",
        type=_positive_int,
        default=None,
        help="use this many synthetic trades instead of --data "
        f"(default when --data is absent: {rows_default:,})",
    )
    p.add_argument(
        "--drop-invalid",
        action="store_true",
        help="drop rows of --data that fail validation and report counts per reason (default: refuse the "
        "file, naming the first bad row)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of the synthetic generator"
        + (", the split and LightGBM" if what == "train" else "")
        + " (default: %(default)s)",
    )


# --------------------------------------------------------------------------- train


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `train`: fit LightGBM on trades, export to ONNX with a parity check, write a bundle."""
    p = sub.add_parser(
        "train",
        help="train the settlement-fail model and write a bundle",
        description="Train the settlement-fail classifier (LightGBM) on a trades file or on synthetic "
        "trades, export it to ONNX, check ONNX Runtime against LightGBM on held-out rows, and write a "
        "model bundle the engine can serve. Progress goes to stderr.",
        epilog="Rebuild the shipped default bundle: engine train --synthetic-rows 400000 --seed 20261121 "
        "--threads 2 --out src/engine/models/default --version 1.0.0",
    )
    _add_source_options(p, DEFAULT_SYNTHETIC_ROWS, "train")
    p.add_argument(
        "--reference-from",
        type=Path,
        default=None,
        help="with --data: take the counterparty / instrument / FX reference tables from this bundle "
        "directory (default: compute them from the earliest --history-fraction of the data by trade date, "
        "which is then not trained on)",
    )
    p.add_argument(
        "--history-fraction",
        type=_fraction,
        default=0.25,
        help="with --data and no --reference-from: share of rows (earliest trade dates) used only to "
        "compute the reference tables (default: %(default)s)",
    )
    _add_bundle_options(p, out_required=False)
    p.add_argument(
        "--num-boost-round",
        type=_positive_int,
        default=_DEFAULTS.num_boost_round,
        help="maximum boosting rounds (trees) (default: %(default)s)",
    )
    p.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=_DEFAULTS.learning_rate,
        help="LightGBM shrinkage per tree (default: %(default)s)",
    )
    p.add_argument(
        "--num-leaves",
        type=_positive_int,
        default=_DEFAULTS.num_leaves,
        help="maximum leaves per tree (default: %(default)s)",
    )
    p.add_argument(
        "--early-stopping-rounds",
        type=_positive_int,
        default=_DEFAULTS.early_stopping_rounds,
        help="stop when the validation log-loss has not improved for this many rounds; the best round "
        "is kept (default: %(default)s)",
    )
    p.add_argument(
        "--valid-fraction",
        type=_fraction,
        default=0.25,
        help="share of rows held out (stratified): half for early stopping and risk bands, half for the "
        "reported metrics (default: %(default)s)",
    )
    _add_band_option(p)
    p.set_defaults(func=run_train)
    parser: argparse.ArgumentParser = p
    return parser


def _guarded(name: str, body: Callable[[argparse.Namespace, Printer], int]) -> Callable[..., int]:
    """`body` with the command's errors turned into a message and an exit code."""

    def run(args: argparse.Namespace, log: Printer | None = None) -> int:
        from engine.errors import BundleError
        from engine.training.errors import ParityError, TrainingError

        log = log or _printer()
        try:
            return body(args, log)
        except ParityError as exc:
            log(f"engine {name}: parity check failed: {exc}")
            return EXIT_PARITY
        except (TrainingError, BundleError) as exc:
            log(f"engine {name}: error: {exc}")
            return EXIT_ERROR

    return run


def train_config(args: argparse.Namespace, threads: int | None = None) -> TrainConfig:
    """The training configuration `engine train`'s options give (`threads`: instead of --threads)."""
    return TrainConfig(
        seed=args.seed,
        num_boost_round=args.num_boost_round,
        learning_rate=args.learning_rate,
        num_leaves=args.num_leaves,
        early_stopping_rounds=args.early_stopping_rounds,
        valid_fraction=args.valid_fraction,
        parity_rows=args.parity_rows,
        threads=args.threads if threads is None else threads,
        band_rule=args.risk_bands,
    )


def write_trained(
    args: argparse.Namespace,
    trained: Any,
    config: TrainConfig,
    source: dict[str, Any],
    split: str,
    elapsed: dict[str, float],
    log: Printer,
    **extra: Any,
) -> None:
    """Package a trained model as `engine train` does (ONNX, parity, bundle at --out); `extra` goes into
    the manifest's `training` section beside the source, split, parameters and timings."""
    from engine.training.package import package

    training = {
        "source": source,
        "seed": config.seed,
        "rows": trained.rows,
        "split": split,
        "params": trained.params,
        "num_boost_round": config.num_boost_round,
        "early_stopping_rounds": config.early_stopping_rounds,
        "best_iteration": trained.best_iteration,
        "risk_band_rule": config.band_rule.describe(),
        **extra,
        "elapsed_s": elapsed,
    }
    package(
        args.out,
        booster=trained.booster,
        booster_text=trained.booster_text,
        rewrite=trained.rewrite,
        spec=trained.spec,
        references=trained.references,
        bands=trained.bands,
        metrics=trained.metrics,
        heldout=trained.heldout,
        training=training,
        name=args.name,
        version=args.version,
        parity_rows=args.parity_rows,
        threads=args.threads,
        keep_pairs=not args.drop_pair_model,
        log=log,
    )


def _train(args: argparse.Namespace, log: Printer) -> int:
    from engine.models.reference import ReferenceTables
    from engine.training.data import read_trades, split_history, tables_from_history
    from engine.training.errors import DataError
    from engine.training.export import check_out
    from engine.training.synthetic import DEFAULT_BASE_RATE, fx_table, generate_trades
    from engine.training.train import train_model

    started = time.perf_counter()
    check_out(args.out, keep_pairs=not args.drop_pair_model)
    config = train_config(args)
    source: dict[str, Any]
    if args.data is not None:
        read = read_trades(args.data, drop_invalid=args.drop_invalid, log=log)
        if read.labels is None:
            raise DataError(f"{args.data}: no label column")
        trades, labels = read.trades, read.labels
        source = {"kind": "file", "path": read.source, "sha256": sha256_file(Path(read.source))}
        if read.dropped:
            source["dropped_invalid"] = read.dropped
        if args.reference_from is not None:
            references = ReferenceTables.read(args.reference_from)
            source["references"] = f"from {Path(args.reference_from).resolve()}"
        else:
            history, rest = split_history(trades, args.history_fraction)
            references = tables_from_history(trades.take(history), labels[history], fx_table())
            source["references"] = (
                f"computed from the earliest {history.size:,} rows by trade date (not trained on)"
            )
            log(f"reference tables: from {history.size:,} history rows; training on the later {rest.size:,}")
            trades, labels = trades.take(rest), labels[rest]
    else:
        if args.reference_from is not None:
            raise DataError("--reference-from applies to --data; synthetic trades bring their own tables")
        rows = args.synthetic_rows or DEFAULT_SYNTHETIC_ROWS
        t0 = time.perf_counter()
        trades, labels, references = generate_trades(rows, args.seed)
        log(f"synthetic: {rows:,} trades (seed {args.seed}) in {time.perf_counter() - t0:.1f} s")
        source = {
            "kind": "synthetic",
            "generator": "engine.training.synthetic.generate_trades",
            "rows": rows,
            "seed": args.seed,
            "base_rate_target": DEFAULT_BASE_RATE,
        }
    data_s = time.perf_counter() - started
    trained = train_model(trades, labels, references, config, log)
    elapsed = {
        "data": round(data_s, 2),
        **{k.removesuffix("_s"): round(v, 2) for k, v in trained.timings.items()},
        "before_export": round(time.perf_counter() - started, 2),
    }
    split = "stratified by label; valid = early stopping + risk bands, test = metrics"
    write_trained(args, trained, config, source, split, elapsed, log)
    log(f"done in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


# --------------------------------------------------------------------------- export


def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `export`: an existing LightGBM text model -> a served bundle, with the parity check."""
    p = sub.add_parser(
        "export",
        help="package an existing LightGBM model as a bundle (ONNX + parity check)",
        description="Convert a LightGBM text model trained on the engine's catalog features into a model "
        "bundle. The feature spec and reference tables come from an existing bundle (--reference-from); "
        "rows for the parity check, golden rows, risk bands and (with labels) metrics come from --data "
        "or the synthetic generator. Split thresholds are rounded down to float32 first (see "
        "engine.training.export); nothing is written unless ONNX Runtime matches LightGBM within 1e-5.",
    )
    p.add_argument(
        "--lgb-model",
        type=Path,
        required=True,
        help="LightGBM text model (Booster.save_model) of a binary classifier whose features are, in order, "
        "those of the --reference-from bundle's manifest",
    )
    p.add_argument(
        "--reference-from",
        type=Path,
        required=True,
        help="bundle directory whose feature spec and reference tables the model was trained with",
    )
    _add_source_options(p, DEFAULT_EXPORT_ROWS, "export")
    _add_bundle_options(p, out_required=True)
    _add_band_option(p)
    p.set_defaults(func=run_export)
    parser: argparse.ArgumentParser = p
    return parser


def _export(args: argparse.Namespace, log: Printer) -> int:
    import lightgbm as lgb
    import numpy as np

    from engine.features.compute import FeaturePlan
    from engine.models.bundle import ModelBundle
    from engine.training import metrics as m
    from engine.training.data import read_trades
    from engine.training.errors import ExportError
    from engine.training.export import check_out, round_thresholds_down, verify_rewrite
    from engine.training.package import package
    from engine.training.synthetic import generate_trades

    started = time.perf_counter()
    check_out(args.out, keep_pairs=not args.drop_pair_model)
    base = ModelBundle.load(args.reference_from)
    spec, references = base.manifest.features, base.references
    try:
        booster = lgb.Booster(model_file=str(args.lgb_model))
    except (lgb.basic.LightGBMError, OSError) as exc:
        raise ExportError(f"{args.lgb_model}: not a LightGBM model: {exc}") from exc
    names = list(booster.feature_name())
    if booster.num_feature() != len(spec):
        raise ExportError(
            f"{args.lgb_model} takes {booster.num_feature()} features; {args.reference_from} declares "
            f"{len(spec)}: {', '.join(spec.names)}"
        )
    generic = [f"Column_{i}" for i in range(len(names))]
    if names != generic and names != list(spec.names):
        diff = [f"{i}: {a} != {b}" for i, (a, b) in enumerate(zip(names, spec.names, strict=True)) if a != b]
        raise ExportError(f"{args.lgb_model} feature names differ from the spec: {'; '.join(diff[:5])}")

    labels = None
    if args.data is not None:
        read = read_trades(args.data, require_labels=False, drop_invalid=args.drop_invalid, log=log)
        trades, labels = read.trades, read.labels
        source: dict[str, Any] = {"kind": "file", "path": read.source}
    else:
        rows = args.synthetic_rows or DEFAULT_EXPORT_ROWS
        trades, labels, _ = generate_trades(rows, args.seed)
        source = {"kind": "synthetic", "rows": rows, "seed": args.seed}
    x = FeaturePlan(spec, references).compute(trades)
    log(f"rows: {x.shape[0]:,} trades, {x.shape[1]} features ({source['kind']})")
    rewritten, text, rewrite = round_thresholds_down(booster)
    verify_rewrite(booster, rewritten, x, threads=args.threads)
    p = rewritten.predict(x, num_threads=args.threads)
    bands = m.choose_risk_bands(p, args.risk_bands)
    scores: dict[str, float] = {"rows": float(x.shape[0])}
    if labels is not None and 0 < int(labels.sum()) < labels.size:
        y = labels.astype(np.float64)
        scores = m.summary(y, p)
        scores.update(m.band_report(bands, y, p))
        log("metrics: ROC-AUC {roc_auc:.4f}  PR-AUC {pr_auc:.4f}  Brier {brier:.5f}".format(**scores))
        log(
            "fail rate by band: "
            + ", ".join(
                f"{b} {scores[f'band_{b.lower()}_fail_rate']:.1%} of {scores[f'band_{b.lower()}_share']:.1%}"
                for b in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
            )
        )
        for warning in m.band_warnings(bands, scores):
            log(f"warning: risk band {warning}")
    training = {
        "source": {
            "kind": "export",
            "lgb_model": str(Path(args.lgb_model).resolve()),
            "lgb_model_sha256": sha256_file(Path(args.lgb_model)),
            "reference_from": str(Path(args.reference_from).resolve()),
            "rows": source,
        },
        "seed": args.seed,
        "rows": {"evaluation": int(x.shape[0])},
        "best_iteration": int(booster.current_iteration()),
        "risk_band_rule": args.risk_bands.describe(),
        "metrics_on": "the export rows (not necessarily held out from the model's training)",
        "elapsed_s": {"before_export": round(time.perf_counter() - started, 2)},
    }
    package(
        args.out,
        booster=rewritten,
        booster_text=text,
        rewrite=rewrite,
        spec=spec,
        references=references,
        bands=bands,
        metrics=scores,
        heldout=x,
        training=training,
        name=args.name,
        version=args.version,
        parity_rows=args.parity_rows,
        threads=args.threads,
        keep_pairs=not args.drop_pair_model,
        log=log,
    )
    return EXIT_OK


# --------------------------------------------------------------------------- generate


run_train = _guarded("train", _train)
run_export = _guarded("export", _export)


def add_generate_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `generate`: write synthetic labelled trades to a file."""
    p = sub.add_parser(
        "generate",
        help="write synthetic trades with fail labels (.csv, .parquet, .jsonl)",
        description="Write synthetic trades from the engine's simulator, with a `failed` label column, "
        "for trying `engine score --file` and `engine train --data`.",
    )
    p.add_argument(
        "--rows", type=_positive_int, default=10_000, help="number of trades (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed (default: %(default)s)")
    p.add_argument(
        "--base-rate",
        type=_fraction,
        default=None,
        help="target fail rate the simulator is calibrated to (default: 0.035)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output file; the suffix picks the format: .csv, .parquet or .jsonl",
    )
    p.set_defaults(func=run_generate)
    parser: argparse.ArgumentParser = p
    return parser


def run_generate(args: argparse.Namespace, log: Printer | None = None) -> int:
    from engine.training.data import write_trades
    from engine.training.errors import TrainingError
    from engine.training.synthetic import DEFAULT_BASE_RATE, generate_trades

    log = log or _printer()
    t0 = time.perf_counter()
    try:
        if Path(args.out).suffix.lower() not in (".csv", ".parquet", ".jsonl", ".ndjson"):
            raise TrainingError(f"{args.out}: unknown file type (use .csv, .parquet or .jsonl)")
        base_rate = args.base_rate or DEFAULT_BASE_RATE
        trades, labels, _ = generate_trades(args.rows, args.seed, base_rate=base_rate)
        path = write_trades(args.out, trades, labels)
    except TrainingError as exc:
        log(f"engine generate: error: {exc}")
        return EXIT_ERROR
    log(
        f"wrote {len(trades):,} trades ({labels.mean():.2%} failed) to {path} "
        f"({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s"
    )
    return EXIT_OK


def add_train_pairs_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `train-pairs`: train the sync-break model and add it to a bundle."""
    from engine.training.pairs import DEFAULT_PAIRS, DEFAULT_PAIRS_SEED, MODEL_CHOICES

    p = sub.add_parser(
        "train-pairs",
        help="train the sync-break (anomaly) model and add it to a bundle",
        description="Generate labelled record pairs (consistent history plus stale copies, partial "
        "fills, status drift, static-data typos, missing records, fat fingers); train an "
        "IsolationForest on 60%% of them without labels and a LightGBM classifier on the same pairs "
        "with their labels; pick each one's alert threshold on 20%%; report both models' precision "
        "and recall on the last 20%% side by side; export the one --model names to ONNX (checked "
        "against its library) and write it into BUNDLE (pairs/model.onnx and the manifest's "
        "`pairs` section). The bundle's trade model is kept as it is and checked as a server checks it; "
        "the new bundle is built beside BUNDLE and swapped in whole. Needs the [train] extra "
        "(scikit-learn, LightGBM).",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder to add the model to")
    p.add_argument(
        "--pairs", type=_positive_int, default=DEFAULT_PAIRS, help="pairs generated (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_PAIRS_SEED,
        help="generator and forest seed (default: %(default)s)",
    )
    p.add_argument(
        "--trees", type=_positive_int, default=100, help="trees in the forest (default: %(default)s)"
    )
    p.add_argument(
        "--max-samples",
        type=_positive_int,
        default=4096,
        help="pairs each tree is grown on (default: %(default)s; breaks are rare, so a tree needs "
        "thousands of pairs to see a few of each class)",
    )
    p.add_argument(
        "--model",
        choices=MODEL_CHOICES,
        default="isolation-forest",
        help="the model the bundle serves: the unsupervised IsolationForest, the supervised LightGBM "
        "classifier (trained on the pairs' labels), or the better of the two by held-out F1; both are "
        "trained and reported side by side either way (default: %(default)s)",
    )
    p.set_defaults(func=run_train_pairs)
    parser: argparse.ArgumentParser = p
    return parser


def _train_pairs(args: argparse.Namespace, log: Printer) -> int:
    from engine.training.pairs import train_pair_model

    started = time.perf_counter()
    train_pair_model(
        args.bundle,
        pairs=args.pairs,
        seed=args.seed,
        trees=args.trees,
        max_samples=args.max_samples,
        model=args.model,
        log=log,
    )
    log(f"done in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


run_train_pairs = _guarded("train-pairs", _train_pairs)


def add_retrain_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `retrain`: retrain a bundle's pair model from operators' verdicts; promote if not worse."""
    from engine.training.pairs import DEFAULT_PAIRS, DEFAULT_PAIRS_SEED, MODEL_CHOICES

    p = sub.add_parser(
        "retrain",
        help="retrain the bundle's sync-break model from operators' verdicts; promote it only if not worse",
        description="Read the verdicts in a flag store (SubmitFeedback), hold out a stable share of "
        "them, train a new pair model on fresh synthetic history plus the rest, score it and the "
        "bundle's serving pair model on the same held-out pairs, and write it into BUNDLE (a server "
        "with --watch, or sent SIGHUP, swaps it in) only if its F1 is at least the serving model's; "
        "the manifest's pairs.promotion records both. Exit 0: promoted; 4: not promoted (the reason "
        "is printed; the bundle is unchanged); 1: error.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="the bundle the engine serves")
    p.add_argument(
        "--flag-store", required=True, help="sqlite:PATH or postgresql://... (engine serve --flag-store)"
    )
    p.add_argument(
        "--model",
        choices=("same", *MODEL_CHOICES),
        default="same",
        help="the kind of model to train: the serving one's, or as engine train-pairs (default: %(default)s)",
    )
    p.add_argument(
        "--holdout", type=_fraction, default=0.3, help="share of the verdicts held out (default: %(default)s)"
    )
    p.add_argument(
        "--pairs",
        type=_positive_int,
        default=DEFAULT_PAIRS,
        help="synthetic history pairs (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_PAIRS_SEED + 1,
        help="history and model seed (default: %(default)s)",
    )
    p.set_defaults(func=run_retrain)
    parser: argparse.ArgumentParser = p
    return parser


EXIT_NOT_PROMOTED = 4


def _retrain(args: argparse.Namespace, log: Printer) -> int:
    from engine.flag_store import parse_store
    from engine.training.errors import DataError
    from engine.training.pairs import retrain_pair_model

    try:
        store = parse_store(args.flag_store)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    if store is None:
        raise DataError("--flag-store is empty")
    outcome = retrain_pair_model(
        args.bundle, store, pairs=args.pairs, seed=args.seed, model=args.model, holdout=args.holdout, log=log
    )
    return EXIT_OK if outcome.promoted else EXIT_NOT_PROMOTED


run_retrain = _guarded("retrain", _retrain)


# --------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.training.cli train|export|generate|train-pairs|retrain ...`"""
    parser = argparse.ArgumentParser(
        prog="python -m engine.training.cli",
        description="Train, export and generate for the TradeScore engine.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,export,generate,train-pairs,retrain}"
    )
    add_train_parser(sub)
    add_export_parser(sub)
    add_generate_parser(sub)
    add_train_pairs_parser(sub)
    add_retrain_parser(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
