"""`engine`: the one command-line entry point.

engine serve     serve the model bundle over gRPC (flags, or ENGINE_* variables)
engine score     send trades from a file or a generated sample to a server; print scores
engine info      describe a bundle on disk, or the model a server is running
engine compile   compile the engine's kernels into their cache (the image does it when built)
engine health    ask a server's gRPC health service (exit 0 when SERVING)
engine train     train a LightGBM model and write a bundle        ([train] extra)
engine export    turn a LightGBM model file into a bundle         ([train] extra)
engine generate  write synthetic trades with labels to a file     ([train] extra for Parquet)
engine discover  compare two extracts: breaks, hotspots, report   ([batch] extra; Dask)
engine score-batch  score a trades dataset into Parquet on Dask   ([batch] extra)
engine generate-extracts  two systems' extracts with planted breaks ([batch] extra)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine import __version__
from engine.config import SettingsError, add_arguments, from_sources
from engine.models.bundle import BACKENDS

DEFAULT_TARGET = "127.0.0.1:50051"


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# -- serve ------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from engine.server import run

    try:
        settings = from_sources(args)
    except SettingsError as exc:
        print(f"engine serve: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    from engine.errors import BundleError
    from engine.security import SecurityError

    try:
        return run(settings)
    except (BundleError, SecurityError) as exc:
        logging.getLogger("engine").error("cannot serve: %s", exc)
        return 1
    except OSError as exc:
        logging.getLogger("engine").error("cannot serve: %s", exc)
        return 1


def _cmd_compile(args: argparse.Namespace) -> int:
    import time

    _setup_logging()
    started = time.perf_counter()
    import engine.jit as jit
    from engine.errors import BundleError
    from engine.models.bundle import LGB_FILE
    from engine.scoring.servable import load_serving_model

    try:
        load_serving_model(args.bundle)  # its warm-up runs every kernel the server runs
        if (Path(args.bundle) / LGB_FILE).is_file():  # and the compiled backend's machine code
            load_serving_model(args.bundle, backend="compiled")
    except BundleError as exc:
        print(f"engine compile: {exc}", file=sys.stderr)
        return 1
    hits, misses = jit.compile_counts()
    print(
        f"{len(jit.KERNELS)} kernels, {hits + misses} signatures: {misses} compiled, {hits} already in "
        f"{jit.describe()}, in {time.perf_counter() - started:.1f} s"
    )
    if args.ship:
        print(f"shipped into {jit.ship()}")
    return 0


# -- client commands ----------------------------------------------------------------


def _load_trades(args: argparse.Namespace) -> Any:
    from engine.features.columns import from_table
    from engine.trade_files import read_table

    if args.file is not None:
        return from_table(read_table(args.file))
    from engine.training.synthetic import generate_trades

    return generate_trades(args.sample, seed=args.seed).trades


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _cmd_score(args: argparse.Namespace) -> int:
    import grpc

    from engine.client import Client
    from engine.errors import InvalidInput
    from engine.features.columns import RISK_BANDS
    from engine.scoring.messages import columns_to_trades
    from engine.trade_files import TableError

    try:
        trades = columns_to_trades(_load_trades(args))
    except (TableError, KeyError, InvalidInput) as exc:
        print(f"engine score: {exc}", file=sys.stderr)
        return 2
    with Client(args.target, timeout=args.timeout, max_trades_per_request=args.batch_size) as client:
        try:
            if args.stream:  # the client's bulk helper: requests of --batch-size, pipelined on ScoreStream
                scored = [(s, "") for s in client.score_many(trades)]
                version = client.model_info().version if scored else ""
            else:
                scored = []
                for i, chunk in enumerate(_chunks(len(trades), args.batch_size)):
                    resp = client.score(trades[chunk], request_id=f"req-{i}")
                    scored += [(s, resp.model_version) for s in resp.scores]
                version = ""
        except ValueError as exc:  # a refused request of the stream
            print(f"engine score: refused: {exc}", file=sys.stderr)
            return 1
        except grpc.RpcError as exc:
            print(f"engine score: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    for s, model_version in scored:
        band = RISK_BANDS.get(s.risk_band, "UNSPECIFIED")
        if args.format == "jsonl":
            row = {
                "trade_id": s.trade_id,
                "fail_probability": s.fail_probability,
                "risk_band": band,
                "model_version": model_version or version,
            }
            print(json.dumps(row))
        else:
            print(f"{s.trade_id}\t{s.fail_probability:.6f}\t{band}")
    return 0


def _cmd_export_labels(args: argparse.Namespace) -> int:
    from engine.features.pairs import PAIR_FEATURES
    from engine.flag_store import export_labels, parse_store

    try:
        spec = parse_store(args.flag_store)
    except ValueError as exc:
        print(f"engine export-labels: {exc}", file=sys.stderr)
        return 1
    if spec is None or (spec.kind == "sqlite" and not Path(spec.target).is_file()):
        print(f"engine export-labels: no flag store at {args.flag_store!r}", file=sys.stderr)
        return 1
    try:
        rows = export_labels(spec, args.out, PAIR_FEATURES)
    except Exception as exc:  # noqa: BLE001 - the database's own errors: say what and exit 1
        print(f"engine export-labels: cannot read {spec}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {rows} labelled flags to {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    if args.target is None:
        from engine.errors import BundleError
        from engine.scoring.servable import load_serving_model

        try:
            model = load_serving_model(Path(args.bundle), backend=args.model_backend)
        except BundleError as exc:
            print(f"engine info: invalid bundle: {exc}", file=sys.stderr)
            return 1
        manifest = dict(model.bundle.manifest.raw)
        manifest.pop("golden", None)
        manifest["path"] = str(model.bundle.path)
        manifest["backend"] = model.backend
        if model.bundle.backend_parity is not None:  # this load's check against ONNX Runtime
            manifest["backend_parity"] = model.bundle.backend_parity
        print(json.dumps(manifest, indent=2))
        return 0
    import grpc
    from google.protobuf import json_format

    from engine._proto.tradescore.v1 import tradescore_pb2 as pb
    from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.target) as channel:
        try:
            info = pb_grpc.TradeScorerStub(channel).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"engine info: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    out = json_format.MessageToDict(info, preserving_proto_field_name=True)
    out.pop("manifest_json", None)
    print(json.dumps(out, indent=2))
    return 0


def local_health_target(env: Mapping[str, str]) -> str:
    """Where `engine health` looks without --target: this host's plaintext health port, the one an
    `engine serve` with the same ENGINE_* environment listens on: ENGINE_PROBE_PORT when set
    (the gRPC port may be TLS), else ENGINE_PORT, else 50051."""
    probe = env.get("ENGINE_PROBE_PORT", "0").strip()
    port = probe if probe not in ("", "0") else env.get("ENGINE_PORT", "").strip() or "50051"
    return f"127.0.0.1:{port}"


def _cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = args.target or local_health_target(os.environ)
    with grpc.insecure_channel(target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


# -- parser -------------------------------------------------------------------------


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="TradeScore engine: gRPC scoring of settlement-fail risk.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve the model bundle over gRPC",
        description="Serve TradeScorer, BreakScorer (sync breaks between two systems' records), "
        "the Open Inference Protocol (KServe v2 inference.GRPCInferenceService: the model's FP32 "
        "feature matrix in, fail_probability and risk_band out; see docs/oip.md), gRPC health and "
        "reflection, on one port. Every flag can also be set with its ENGINE_* environment "
        "variable; flags win. SIGTERM drains, SIGHUP reloads the bundle.",
    )
    add_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    score = sub.add_parser(
        "score",
        help="score trades from a file or a generated sample against a running server",
        description="Send trades to a running engine through the Python client (engine.client: "
        "deadline per call, retries with backoff when the engine sheds load) and print one line per "
        "trade: trade_id, failure probability, risk band (or JSON lines with --format jsonl).",
    )
    src = score.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--file", type=Path, help="trades as .csv, .json, .jsonl or .parquet (columns: see docs/training.md)"
    )
    src.add_argument("--sample", type=_positive_int, metavar="N", help="score N synthetic trades instead")
    score.add_argument("--seed", type=int, default=7, help="seed for --sample (default 7)")
    score.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
    score.add_argument(
        "--batch-size",
        type=_positive_int,
        default=100,
        help="trades per request (default 100; the server's limit applies)",
    )
    score.add_argument(
        "--stream",
        action="store_true",
        help="send the requests pipelined on one ScoreStream call (the client's score_many)",
    )
    score.add_argument(
        "--timeout", type=float, default=10.0, help="deadline per call in seconds (default 10)"
    )
    score.add_argument(
        "--format",
        choices=("table", "jsonl"),
        default="table",
        help="tab-separated lines (default) or JSON lines",
    )
    score.set_defaults(func=_cmd_score)

    info = sub.add_parser(
        "info",
        help="describe a bundle on disk or the model a server runs",
        description="Print the manifest of a bundle (validating it), with the backend it was loaded "
        "for, or, with --target, the GetModelInfo answer of a running server (its `backend` among "
        "it), as JSON.",
    )
    info.add_argument(
        "--bundle", type=Path, default=None, help="bundle folder (default: the bundle shipped in the package)"
    )
    info.add_argument("--target", default=None, help="ask this server instead, e.g. 127.0.0.1:50051")
    info.add_argument(
        "--model-backend",
        choices=BACKENDS,
        default="onnx",
        help="load the bundle as `engine serve --model-backend` would: compiled also compiles the "
        "model text and checks it against ONNX Runtime, and prints that check (default onnx)",
    )
    info.add_argument("--timeout", type=float, default=5.0, help="deadline with --target (default 5 s)")
    info.set_defaults(func=_cmd_info)

    health = sub.add_parser(
        "health",
        help="check a server's gRPC health (exit 0 when SERVING)",
        description="Call grpc.health.v1.Health/Check; prints the status, exits 0 only when SERVING.",
    )
    health.add_argument(
        "--target",
        default=None,
        help="server address (default: 127.0.0.1 on ENGINE_PROBE_PORT when set, else on ENGINE_PORT, "
        "else 127.0.0.1:50051: the plaintext health port of a server started with the same environment)",
    )
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds (default 3)")
    health.set_defaults(func=_cmd_health)

    compile_ = sub.add_parser(
        "compile",
        help="compile the engine's kernels into their cache, so that a start compiles nothing",
        description="Run every compiled kernel of the serving path once (loading --bundle), so that "
        "their machine code is in the kernel cache: ENGINE_KERNEL_CACHE (else NUMBA_CACHE_DIR, "
        "else ~/.cache/tradescore/kernels), one directory per build and CPU target. With --ship, "
        "also into the installed package, where a start with an empty cache finds it: the "
        "container image runs `NUMBA_CPU_NAME=generic engine compile --ship` when it is built. A "
        "bundle with model.lgb.txt also gets its compiled model (--model-backend compiled) cached.",
    )
    compile_.add_argument(
        "--bundle", type=Path, default=None, help="bundle folder (default: the bundle shipped in the package)"
    )
    compile_.add_argument(
        "--ship", action="store_true", help="copy the cache into the installed package (engine/_kernels)"
    )
    compile_.set_defaults(func=_cmd_compile)

    labels = sub.add_parser(
        "export-labels",
        help="write operators' verdicts on flagged record pairs as labelled training rows (CSV)",
        description="Read a flag store (engine serve --flag-store) and write one CSV row per flag "
        "that has a verdict: flag_id, pair_key, break_class, model_version, the model inputs the "
        "flag was scored on (one column each), is_break (1 confirmed, 0 rejected), operator, "
        "recorded_at.",
    )
    labels.add_argument(
        "--flag-store", required=True, help="the store, as sqlite:PATH or postgresql://user:password@host/db"
    )
    labels.add_argument("--out", type=Path, required=True, help="CSV file to write")
    labels.set_defaults(func=_cmd_export_labels)

    from engine.training.cli import (
        add_export_parser,
        add_generate_parser,
        add_retrain_parser,
        add_train_pairs_parser,
        add_train_parser,
    )

    train = add_train_parser(sub)
    add_export_parser(sub)
    add_generate_parser(sub)
    add_train_pairs_parser(sub)
    add_retrain_parser(sub)

    from engine.batch.cli import add_batch_parsers, add_distributed_training

    add_distributed_training(train)
    add_batch_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "compile" and args.bundle is None:
        from engine.models.bundle import DEFAULT_BUNDLE

        args.bundle = DEFAULT_BUNDLE
    if getattr(args, "command", None) == "info" and args.bundle is None and args.target is None:
        from engine.models.bundle import DEFAULT_BUNDLE

        args.bundle = DEFAULT_BUNDLE
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
