#!/usr/bin/env python
"""Interleaved A/B of two engine builds or settings: server CPU per scored row, side by side.

    python loadtest/ab.py --b-flags="--event-loop asyncio"
    python loadtest/ab.py --a-env PYTHONPATH=/path/to/other/checkout/src   # two builds

Starts two engines (A and B) on `--server-cpus`, each with its own closed-loop
load (scenario (b): 256 trades x 4 in flight, (a): 1 trade x 64, or (d): one-trade
ScoreStream messages, 64 in flight on one stream) paused by
SIGSTOP; then runs one load at a time for `--slice-seconds`, alternating A and
B (ABBA order), and reads each server's CPU time (schedstat, ns) and rows
scored (its /metrics batch counters): `tradescore_bench.slices.interleave_engines`. The VM's
speed drifts by tens of percent within a minute; slices seconds apart compare
like with like, where two runs minutes apart do not. Prints microseconds of
server CPU per row for each slice and the median of the per-slice B/A ratios
(below 1: B is cheaper), each server's CPU per row by thread group
(`tradescore_bench.system.THREAD_GROUPS`) and the p99 latency of the calls made in each slice
(`tradescore_bench.slices.slice_p99_ms`). Not a test; nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tradescore_bench.options import parse_args as bench_args  # noqa: E402
from tradescore_bench.slices import SliceRate, interleave_engines  # noqa: E402
from tradescore_bench.system import THREAD_GROUPS  # noqa: E402
from tradescore_bench.trades import build_requests  # noqa: E402

from engine.models.bundle import DEFAULT_BUNDLE  # noqa: E402


def _env(assignments: str) -> dict[str, str]:
    """NAME=VALUE,NAME=VALUE as a mapping."""
    pairs = (item.partition("=") for item in assignments.split(",") if item)
    return {name: value for name, _, value in pairs}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest/ab.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--a-flags", default="", help="extra `engine serve` flags of server A")
    p.add_argument("--b-flags", default="", help="extra `engine serve` flags of server B")
    p.add_argument("--a-env", default="", help="NAME=VALUE,... added to server A's environment")
    p.add_argument("--b-env", default="", help="NAME=VALUE,... added to server B's environment")
    p.add_argument(
        "--scenario",
        choices=("a", "b", "d"),
        default="b",
        help="the load: bench.py's (a), (b) or (d) (one-trade ScoreStream messages)",
    )
    p.add_argument("--slices", type=int, default=10, help="A/B pairs of slices")
    p.add_argument("--slice-seconds", type=float, default=1.5, help="length of each slice")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle both serve")
    p.add_argument("--server-cpus", default="0", help="CPUs of both servers")
    p.add_argument("--client-cpus", default="1", help="CPUs of the load generators")
    args = p.parse_args(argv)
    if args.slices < 1 or args.slice_seconds <= 0:
        p.error("--slices must be >= 1 and --slice-seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    o = parse_args(argv)
    args = bench_args(
        [
            *("--bundle", str(o.bundle), "--server-cpus", o.server_cpus, "--client-cpus", o.client_cpus),
            *("--slices", str(o.slices), "--slice-seconds", str(o.slice_seconds)),
        ]
    )
    reqs = build_requests(args.singles, args.batches, args.batch_trades, args.seed, args.bundle)
    engines = {"A": (o.a_flags.split(), _env(o.a_env)), "B": (o.b_flags.split(), _env(o.b_env))}
    for name, (flags, env) in engines.items():
        print(f"server {name}: flags {flags}, environment {env}", flush=True)

    def report(i: int, rates: dict[str, SliceRate]) -> None:
        a, b = (1e6 / rates[k].rows_per_server_cpu_s for k in ("A", "B"))
        print(f"slice {i + 1}/{o.slices}: A {a:.3f}, B {b:.3f} us of server CPU per row; B/A {b / a:.3f}")

    slices = interleave_engines(
        args, reqs, engines, single=o.scenario == "a", on_slice=report, stream=o.scenario == "d"
    )
    a_us = [1e6 / s["A"].rows_per_server_cpu_s for s in slices]
    b_us = [1e6 / s["B"].rows_per_server_cpu_s for s in slices]
    ratios = [b / a for a, b in zip(a_us, b_us, strict=True)]
    print(f"A: median {statistics.median(a_us):.3f} us/row   B: median {statistics.median(b_us):.3f} us/row")
    for name in ("A", "B"):
        split = {
            group: statistics.median(s[name].us_per_row_by_thread[group] for s in slices)
            for group in THREAD_GROUPS
        }
        print(f"{name} by thread (medians, us/row): " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    p99 = {name: [s[name].p99_ms for s in slices] for name in ("A", "B")}
    if all(math.isfinite(v) for values in p99.values() for v in values):
        p99_ratios = [b / a for a, b in zip(p99["A"], p99["B"], strict=True)]
        print(
            f"p99 latency of each slice's calls: A median {statistics.median(p99['A']):.2f} ms, "
            f"B {statistics.median(p99['B']):.2f} ms; B/A median {statistics.median(p99_ratios):.3f}"
        )
    print(
        f"B/A per slice: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f} "
        f"({o.slices} slices of {o.slice_seconds:g} s each)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
