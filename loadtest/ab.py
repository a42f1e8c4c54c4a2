#!/usr/bin/env python
"""Interleaved A/B of two engine builds or settings: server CPU per scored row, side by side.

    python loadtest/ab.py --b-flags="--event-loop asyncio"
    python loadtest/ab.py --a-env PYTHONPATH=/path/to/other/checkout/src   # two builds

Starts two engines (A and B) on `--server-cpus`, each with its own closed-loop
load (scenario (b): 256 trades x 4 in flight, or (a): 1 trade x 64) paused by
SIGSTOP; then runs one load at a time for `--slice-seconds`, alternating A and
B (ABBA order), and reads each server's CPU time (schedstat, ns) and rows
scored (its /metrics batch counters). The VM's speed drifts by tens of percent
within a minute; slices seconds apart compare like with like, where two runs
minutes apart do not. Prints microseconds of server CPU per row for each
slice and the median of the per-slice B/A ratios (below 1: B is cheaper).
Not a test; nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (this folder's benchmark: its server launcher and load generator)

from engine.models.bundle import DEFAULT_BUNDLE  # noqa: E402


@contextmanager
def _env(assignments: str) -> Iterator[None]:
    """Environment variables NAME=VALUE,NAME=VALUE set while a server is started."""
    saved = dict(os.environ)
    for item in filter(None, assignments.split(",")):
        name, _, value = item.partition("=")
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest/ab.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--a-flags", default="", help="extra `engine serve` flags of server A")
    p.add_argument("--b-flags", default="", help="extra `engine serve` flags of server B")
    p.add_argument("--a-env", default="", help="NAME=VALUE,... in server A's environment")
    p.add_argument("--b-env", default="", help="NAME=VALUE,... in server B's environment")
    p.add_argument("--scenario", choices=("a", "b"), default="b", help="the load: bench.py's (a) or (b)")
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
    args = bench.parse_args(
        ["--bundle", str(o.bundle), "--server-cpus", o.server_cpus, "--client-cpus", o.client_cpus]
    )
    reqs = bench.build_requests(args.singles, args.batches, args.batch_trades, args.seed, args.bundle)
    single = o.scenario == "a"
    ctx = mp.get_context("spawn")
    servers: dict[str, bench.ServerProcess] = {}
    clients: dict[str, BaseProcess] = {}
    per_row: dict[str, list[float]] = {"A": [], "B": []}
    try:
        for name, flags, env in (("A", o.a_flags, o.a_env), ("B", o.b_flags, o.b_env)):
            with _env(env):
                servers[name] = bench.ServerProcess.engine(
                    args.bundle,
                    args.server_cpus,
                    [f"--intra-op-threads={args.intra_op_threads}", *flags.split()],
                )
            print(f"server {name}: pid {servers[name].pid}, flags {flags!r}, env {env!r}", flush=True)
        for name, server in servers.items():
            spec = bench.LoadSpec(
                target=server.target,
                mode="closed",
                requests=reqs.singles if single else reqs.batches,
                trades_per_call=1 if single else args.batch_trades,
                concurrency=args.single_concurrency if single else args.batch_concurrency,
                rate=0.0,
                phase_s=0.0,
                channels=args.channels,
                warmup_s=args.warmup,
                duration_s=o.slices * 2 * (o.slice_seconds + 0.5) + 30.0,
                timeout_s=2 * o.slice_seconds + 30.0,
                cpus=args.client_cpus,
                parse_responses=False,
                first=0,
            )
            barrier = ctx.Barrier(2)
            _, send = ctx.Pipe(duplex=False)
            client: BaseProcess = ctx.Process(target=bench._client_main, args=(spec, barrier, send))
            client.start()
            send.close()
            barrier.wait(args.warmup + 120)
            assert client.pid is not None
            os.kill(client.pid, signal.SIGSTOP)
            clients[name] = client
        for i in range(o.slices):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                pid, server = clients[name].pid, servers[name]
                assert pid is not None
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.25)
                cpu0, m0 = bench.proc_cpu_ns(server.pid), server.engine_metrics()
                time.sleep(o.slice_seconds)
                cpu1, m1 = bench.proc_cpu_ns(server.pid), server.engine_metrics()
                os.kill(pid, signal.SIGSTOP)
                rows = m1.get("engine_batch_size_sum", 0.0) - m0.get("engine_batch_size_sum", 0.0)
                per_row[name].append((cpu1 - cpu0) / 1e3 / max(rows, 1.0))
                time.sleep(0.15)
            a, b = per_row["A"][-1], per_row["B"][-1]
            print(f"slice {i + 1}/{o.slices}: A {a:.3f}, B {b:.3f} us of server CPU per row; B/A {b / a:.3f}")
    finally:
        for client in clients.values():
            if client.pid is not None and client.is_alive():
                os.kill(client.pid, signal.SIGCONT)
                client.kill()
            client.join(10)
        for server in servers.values():
            server.stop()
    ratios = [b / a for a, b in zip(per_row["A"], per_row["B"], strict=True)]
    a_median, b_median = statistics.median(per_row["A"]), statistics.median(per_row["B"])
    print(f"A: median {a_median:.3f} us/row   B: median {b_median:.3f} us/row")
    print(
        f"B/A per slice: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f} "
        f"({o.slices} slices of {o.slice_seconds:g} s each)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
