"""The benchmark's command line (`loadtest/bench.py --help`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.models.bundle import DEFAULT_BUNDLE

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def cpu_list(raw: str) -> set[int]:
    """ "0", "0,1" or "0-3" -> a CPU set."""
    out: set[int] = set()
    for part in raw.split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    if not out:
        raise argparse.ArgumentTypeError("empty CPU list")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest/bench.py",
        description="Benchmark TradeScore (issue #2 item 8): in-process ONNX Runtime vs the served "
        "engine over gRPC on 127.0.0.1, server and in-process ORT pinned to --server-cpus, load "
        "generator to --client-cpus; closed loop (a: 1 trade x 64 in flight, b: 256 trades x 4), "
        "open loop (c: fixed calls/s, latency from the scheduled send), batching on/off, and a bare "
        "grpc.aio floor. Prints a table and writes JSON to loadtest/results/bench-<timestamp>.json. "
        "Run time: about 15 s + (warmup + duration + 1 s) per scenario, plus about 4 s per "
        "--slices pair for each of (b) and (a), about 2.5 min for the points and 1.5 min for the "
        "backends; about 8 min with the defaults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle folder served and measured"
    )
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement")
    p.add_argument("--server-cpus", type=cpu_list, default="0", help="CPUs for the server and in-process ORT")
    p.add_argument("--client-cpus", type=cpu_list, default="1", help="CPUs for the load generator")
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="ONNX Runtime threads, for the server (--intra-op-threads) and in-process",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra `engine serve` flag for both servers, e.g. --server-arg=--max-wait-ms=2 (repeatable)",
    )
    p.add_argument("--single-concurrency", type=int, default=64, help="(a) calls in flight, 1 trade each")
    p.add_argument(
        "--stream-concurrency", type=int, default=1, help="(d) ScoreStream streams, 1 trade a message"
    )
    p.add_argument("--stream-window", type=int, default=64, help="(d) messages in flight per stream")
    p.add_argument(
        "--curve-rates",
        default="250,500,1000,1500,2000,2500,3000,3500,4000",
        help="curve: open-loop single-trade rates (calls/s) tried in order, stopping after the first "
        "one the engine cannot keep up with (achieved < 95%% of offered, or > 1%% errors)",
    )
    p.add_argument(
        "--batch-trades", type=int, default=256, help="(b) trades per call, and rows per in-process ORT call"
    )
    p.add_argument("--batch-concurrency", type=int, default=4, help="(b) calls in flight")
    p.add_argument(
        "--rates", default="1000,500", help="(c) offered calls/s of the open-loop runs, comma separated"
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="load generator processes per scenario (all on --client-cpus)",
    )
    p.add_argument(
        "--channels", type=int, default=2, help="gRPC channels (TCP connections) per client process"
    )
    p.add_argument("--call-timeout", type=float, default=10.0, help="deadline of each call, seconds")
    p.add_argument(
        "--parse-responses",
        action="store_true",
        help="parse and check every response, not only the first few per process (then sizes)",
    )
    p.add_argument(
        "--scenarios",
        default="points,a,b,oip_b,c,d,a_nobatch,floor_a,floor_b,floor_d,curve,backends",
        help="which to run, comma separated: points (the engine at its defaults against the floors, "
        "interleaved: tradescore_bench/points.py), backends (--model-backend onnx vs compiled, in "
        "process at batch 1/64/256/1024 beside LightGBM's predictor, and served (b) with reasons "
        "off: tradescore_bench/backends.py), a, b, c (open loop at each of --rates), d "
        "(ScoreStream) against the engine; the same with _nobatch (a_nobatch, ...) against a second "
        "engine started with --no-batching, and with _w2 (a_w2, b_w2, ...) against one started with "
        "--workers 2 on the server and client CPUs together; floor_a, floor_b, floor_c, floor_d "
        "against a bare grpc.aio server that answers with canned bytes (what gRPC alone costs on "
        "these CPUs); curve: open-loop latency at each of --curve-rates up to saturation, plotted to "
        "a PNG; oip_b: (b)'s feature matrices as Open Inference Protocol ModelInfer calls with raw "
        "FP32 contents; and the in-process cost scenarios, none of them in the default run: "
        "explain_cost, ort_interference, batcher_cost, metrics_cost, path_ab (tradescore_bench/costs.py)",
    )
    p.add_argument(
        "--singles", type=int, default=2048, help="distinct single-trade requests to cycle through"
    )
    p.add_argument(
        "--batches", type=int, default=32, help="distinct --batch-trades requests to cycle through"
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic trades")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the server during each scenario (raw folded stacks next to the JSON); "
        "py-spy runs on the client CPUs and perturbs the numbers",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=10,
        help="(b) vs in-process ORT again in this many interleaved pairs of short slices (the load "
        "is paused while in-process ORT runs), and (a) on two servers at once, batching on and "
        "off, in as many pairs; the (b) and (a) rows verdicts are their medians per CPU-second, "
        "(a)'s p99 verdict the median of its slices' on/off p99 ratios (0: judge on the single "
        "scenarios, measured minutes apart)",
    )
    p.add_argument(
        "--slice-seconds", type=float, default=1.5, help="length of each in-process and each served slice"
    )
    p.add_argument(
        "--point-slices",
        type=int,
        default=8,
        help="points: interleaved rounds; each round runs every contestant's load alone for "
        "--slice-seconds (tradescore_bench/points.py: 11 loads, about 2 s each)",
    )
    p.add_argument(
        "--floor-event-loop",
        choices=("uvloop", "asyncio"),
        default="asyncio",
        help="the event loop of the floor server of the single scenarios (floor_a, ...): asyncio's, as "
        "the benchmark always had it; the points measure against both",
    )
    p.add_argument(
        "--backend-rounds",
        type=int,
        default=3,
        help="backends: served (b) rounds per backend, alternating (in process: twice as many + 1)",
    )
    p.add_argument(
        "--cost-rounds",
        type=int,
        default=0,
        help="rounds of the cost scenarios (0: each one's own: explain_cost 5, ort_interference 8, "
        "path_ab 60)",
    )
    p.add_argument(
        "--cost-calls",
        type=int,
        default=0,
        help="calls of the cost scenarios (0: each one's own: batcher_cost 3000, metrics_cost 20000)",
    )
    p.add_argument(
        "--other-checkout",
        type=Path,
        default=None,
        help="path_ab: the other source tree whose src/engine/scoring/wire.py is timed against this one",
    )
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="where the JSON report goes")
    args = p.parse_args(argv)
    args.rate_list = [float(r) for r in str(args.rates).split(",") if r.strip()]
    args.curve_rate_list = [float(r) for r in str(args.curve_rates).split(",") if r.strip()]
    if args.duration <= 0 or args.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    if args.server_cpus & args.client_cpus:
        print("warning: server and client CPUs overlap; 'same cores' comparisons are off", file=sys.stderr)
    if not (args.bundle / "manifest.json").is_file():
        p.error(f"no bundle at {args.bundle} (no manifest.json); pass --bundle")
    return args
