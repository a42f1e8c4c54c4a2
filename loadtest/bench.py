#!/usr/bin/env python
"""TradeScore benchmark: in-process ONNX Runtime vs the served engine, side by side in one run.

The driver: it reads the options, builds the requests, and runs, in order, in-process ONNX
Runtime, the served scenarios against each server they need, the interleaved slices and the
points; then it writes the JSON and prints the report. The parts are in `tradescore_bench/`:

    options.py     the command line                    trades.py     the requests it sends
    system.py      CPU sets, /proc readers, machine    inprocess.py  in-process ORT + request path
    server.py      engine and floor server processes   client.py     the load generator processes
    engine_server.py, floor_server.py: the two server programs
    scenarios.py   the served scenarios (as data) and one scenario's run
    slices.py      interleaved slices ((b) vs ORT, (a) on/off, any engines for ab.py)
    points.py      the engine at its defaults against the floors
    costs.py       in-process cost scenarios (reasons, ORT beside the loop, batcher, metrics, path)
    verdicts.py    the ratios and targets              report.py     the printed report, the plot

What one run measures (issue #2, item 8): in-process ORT on the server's CPUs with the server's
session options (rows/s at 256 rows, single-row call, CPU per step of the request path: the
fused `prepare_request`, the model call, the response encoder); the served engine under (a) 1
trade x 64 in flight, (b) 256 trades x 4, (c) open loop at fixed rates, (d) ScoreStream, with
batching on and off, against a bare grpc.aio floor, along an open-loop curve, and through the
Open Inference Protocol; (b) against in-process ORT and (a) on against off in interleaved
slices; and the points at the defaults. loadtest/README.md says how and why.

Example::

    .venv/bin/python loadtest/bench.py                  # the shipped bundle, ~6 min
    .venv/bin/python loadtest/bench.py --bundle /tmp/dev/bundle --duration 2 --warmup 1
    .venv/bin/python loadtest/bench.py --scenarios explain_cost   # one in-process cost scenario
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tradescore_bench import costs  # noqa: E402
from tradescore_bench.client import OIP_METHOD  # noqa: E402
from tradescore_bench.inprocess import inprocess_job, run_inprocess  # noqa: E402
from tradescore_bench.options import parse_args  # noqa: E402
from tradescore_bench.report import plot_curve, print_report  # noqa: E402
from tradescore_bench.scenarios import SERVERS, plan, run_scenario  # noqa: E402
from tradescore_bench.server import ServerProcess, model_info  # noqa: E402
from tradescore_bench.slices import a_interleaved, b_slices  # noqa: E402
from tradescore_bench.system import (  # noqa: E402
    cpus_text,
    machine_info,
    others_cpu_seconds,
    pin_process,
    proc_thread_cpus,
)
from tradescore_bench.trades import RequestSet, build_requests, oip_requests  # noqa: E402
from tradescore_bench.verdicts import curve_verdict, oip_verdicts, saturated, verdicts  # noqa: E402


def write_json(out_dir: Path, name: str, report: dict[str, Any]) -> Path:
    """`report` as OUT_DIR/NAME.json (NAME-PID.json when another run took that name this second)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    if path.exists():
        path = out_dir / f"{name}-{os.getpid()}.json"
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return path


def part_report(
    args: argparse.Namespace,
    machine: dict[str, Any],
    stamp: str,
    started: float,
    part: str,
    title: str,
    config: dict[str, Any],
    results: Any,
    show: Callable[[Any], None],
) -> int:
    """A run of one part alone (points, backends, costs): its JSON report and its printout."""
    report = {
        "schema": 1,
        "timestamp": stamp,
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "config": config,
        part: results,
        "elapsed_s": time.perf_counter() - started,
    }
    path = write_json(args.output_dir, f"bench-{stamp}-{part}", report)
    print(f"TradeScore benchmark {stamp}: {title}")
    show(results)
    print(f"JSON: {path}  ({report['elapsed_s']:.0f} s)")
    return 0


def points_only(
    args: argparse.Namespace, reqs: RequestSet, machine: dict[str, Any], stamp: str, started: float,
    say: Callable[[str], None],
) -> int:  # fmt: skip
    from tradescore_bench.points import default_points, print_points, run_points

    say(f"points at the defaults, {args.point_slices} interleaved rounds")
    points = run_points(args, reqs, default_points(args.batch_trades), say)
    config = {"server_args": args.server_arg, "slice_seconds": args.slice_seconds}
    title = "points at the defaults"
    return part_report(args, machine, stamp, started, "points", title, config, points, print_points)


def backends_only(
    args: argparse.Namespace, reqs: RequestSet, machine: dict[str, Any], stamp: str, started: float,
    say: Callable[[str], None],
) -> int:  # fmt: skip
    from tradescore_bench.backends import print_backends, run_backends

    backends = run_backends(args, reqs, say)
    config = {
        "bundle": str(args.bundle),
        "server_cpus": cpus_text(args.server_cpus),
        "client_cpus": cpus_text(args.client_cpus),
        "server_args": args.server_arg,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
    }
    title = "model backends"
    return part_report(args, machine, stamp, started, "backends", title, config, backends, print_backends)


def costs_only(
    args: argparse.Namespace, keys: Sequence[str], machine: dict[str, Any], stamp: str, started: float,
    say: Callable[[str], None],
) -> int:  # fmt: skip
    results = costs.run_costs(keys, costs.CostOptions.from_args(args), say)
    config = {"bundle": str(args.bundle), "server_cpus": cpus_text(args.server_cpus)}
    title = f"in-process costs on CPU {min(args.server_cpus)}"
    return part_report(args, machine, stamp, started, "costs", title, config, results, costs.print_costs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    machine = machine_info()  # before pinning: record what the machine offers
    pin_process(args.client_cpus)  # this process only coordinates; it stays off the server's CPUs
    wanted = {w.strip() for w in str(args.scenarios).split(",") if w.strip()}

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    cost_keys = [k for k in costs.COSTS if k in wanted]
    if cost_keys and wanted <= set(costs.COSTS):  # in-process costs alone: no servers, no requests
        return costs_only(args, cost_keys, machine, stamp, started, say)

    say("building requests")
    reqs = build_requests(args.singles, args.batches, args.batch_trades, args.seed, args.bundle)
    say(
        f"{len(reqs.singles)} single-trade and {len(reqs.batches)} x {args.batch_trades}-trade requests "
        f"({reqs.source})"
    )

    if wanted == {"points"}:  # the points alone: no in-process or single-scenario runs
        return points_only(args, reqs, machine, stamp, started, say)
    if wanted == {"backends"}:  # the backend dimension alone
        return backends_only(args, reqs, machine, stamp, started, say)

    say(f"in-process ONNX Runtime on CPUs {cpus_text(args.server_cpus)}")
    others0, t_ip = others_cpu_seconds(), time.perf_counter()
    ip = run_inprocess(inprocess_job(args, reqs, args.warmup))
    ip["other_processes_cpu"] = (others_cpu_seconds() - others0) / (time.perf_counter() - t_ip)
    say(
        f"  {ip['batch']['rows_per_s']:,.0f} rows/s at {ip['batch']['rows']} rows, "
        f"single row {ip['single_row']['call_us_p50']:.1f} us"
    )

    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    profile_dir = out_dir / f"profile-{stamp}-{os.getpid()}" if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir()
    results: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    oip_pool: list[bytes] = []
    for kind, (_, _, kind_flags) in SERVERS.items():
        todo = plan(args, wanted, kind)
        if not todo:
            continue
        if kind_flags is None:
            say("starting the bare grpc.aio server (gRPC floor)")
            server = ServerProcess.floor(args.server_cpus, args.batch_trades, args.floor_event_loop)
        else:
            flags = [f"--intra-op-threads={args.intra_op_threads}", *kind_flags, *args.server_arg]
            # two workers want two cores: they share the client's
            cpus = args.server_cpus | args.client_cpus if kind == "w2" else args.server_cpus
            say(f"starting server: {' '.join(flags)} on CPUs {cpus_text(cpus)}")
            server = ServerProcess.engine(args.bundle, cpus, flags)
        desc: dict[str, Any] = {"kind": kind}
        try:
            desc.update(server.describe())
            if kind != "floor":
                desc["model"] = model_info(server.target)
                if desc["model"]["content_hash"] != ip["model"]["content_hash"]:
                    raise RuntimeError(f"server serves {desc['model']}, in-process measured {ip['model']}")
            say(
                f"  pid {server.pid} on {server.target}, threads on CPUs {desc['thread_cpus']} "
                f"({server.launcher})"
            )
            for sc in todo:
                if sc.key.startswith("curve") and saturated(results):
                    continue  # the curve stops after the first rate the engine could not keep up with
                say(f"  {sc.key}: {sc.title}")
                pool = reqs.singles if sc.trades_per_call == 1 else reqs.batches
                if sc.method == OIP_METHOD:
                    oip_pool = oip_pool or oip_requests(reqs.batches, args.bundle)
                    pool = oip_pool
                r = run_scenario(sc, server, pool, args, profile_dir)
                results.append(r)
                say(
                    f"    {r['rows_per_s']:,.0f} rows/s, p50 {r['latency']['p50_ms']:.2f} ms, "
                    f"p99 {r['latency']['p99_ms']:.2f} ms, server CPU {r['server_cpu_util']:.0%}, "
                    f"client CPU {r['client_cpu_util']:.0%}, errors {sum(r['errors'].values())}"
                )
            if kind == "on" and "b" in wanted and args.slices > 0:
                say(f"  (b) against in-process ORT in {args.slices} interleaved slices")
                slices.extend(b_slices(args, reqs, server, say))
            desc["thread_cpus_after"] = proc_thread_cpus(server.pid)
        finally:
            desc.update(server.stop())
            servers.append(desc)

    points: dict[str, Any] | None = None
    if "points" in wanted and args.point_slices > 0:
        from tradescore_bench.points import default_points, run_points

        say(f"points at the defaults, {args.point_slices} interleaved rounds")
        points = run_points(args, reqs, default_points(args.batch_trades), say)
    backends: dict[str, Any] | None = None
    if "backends" in wanted:
        from tradescore_bench.backends import run_backends

        backends = run_backends(args, reqs, say)
    a_slices: list[dict[str, Any]] = []
    if "a" in wanted and "a_nobatch" in wanted and args.slices > 0:
        say(f"(a) batching on vs off in {args.slices} interleaved slices (two servers at once)")
        a_slices = a_interleaved(args, reqs, say)
    cost_results = costs.run_costs(cost_keys, costs.CostOptions.from_args(args), say) if cost_keys else None
    by_key = {r["key"]: r for r in results}
    report: dict[str, Any] = {
        "schema": 1,
        "timestamp": stamp,
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "config": {
            "bundle": str(args.bundle),
            "server_cpus": cpus_text(args.server_cpus),
            "client_cpus": cpus_text(args.client_cpus),
            "intra_op_threads": args.intra_op_threads,
            "server_args": args.server_arg,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "client_procs": args.client_procs,
            "channels": args.channels,
            "call_timeout_s": args.call_timeout,
            "seed": args.seed,
            "profiled": args.profile,
        },
        "trades_source": reqs.source,
        "in_process": ip,
        "servers": servers,
        "scenarios": results,
        "b_slices": slices,
        "a_slices": a_slices,
        "points": points,
        "backends": backends,
        "costs": cost_results,
        "verdicts": {**verdicts(ip, by_key, slices, a_slices), **oip_verdicts(ip, by_key)},
        "curve": curve_verdict(results),
        "elapsed_s": time.perf_counter() - started,
    }
    path = out_dir / f"bench-{stamp}.json"
    if path.exists():  # another run started in the same second
        path = out_dir / f"bench-{stamp}-{os.getpid()}.json"
    if report["curve"] is not None:
        png = path.with_suffix(".png")
        label = f"{machine.get('cpu_model', '?')}, {machine.get('cpus_online', '?')} CPUs; "
        label += f"server on CPUs {cpus_text(args.server_cpus)}, load on {cpus_text(args.client_cpus)}"
        if plot_curve(report["curve"], png, label):
            report["curve"]["plot"] = str(png)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print_report(report)
    if points is not None:
        from tradescore_bench.points import print_points

        print_points(points)
    if backends is not None:
        from tradescore_bench.backends import print_backends

        print_backends(backends)
    if cost_results is not None:
        costs.print_costs(cost_results)
    print(f"JSON: {path}  ({report['elapsed_s']:.0f} s)")
    if profile_dir is not None:
        print(f"profiles: {profile_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
