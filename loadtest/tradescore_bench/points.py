"""Points at the defaults: the engine as users run it, against the floors, in interleaved slices.

Each point pairs two *contestants* (a load against a server) and reads one ratio:

| point | measured | against | ratio |
| --- | --- | --- | --- |
| `single_1` | 1 trade x 1 caller | unary echo floor | p50 latency, calls/s |
| `single_64` | 1 trade x 64 callers | unary echo floor | calls/s |
| `bulk_reasons` | 256 trades x 4 callers, default reasons band | same, `EXPLAIN_NONE` | server CPU per call |
| `stream_1` | `ScoreStream`, 1 trade a message, 4 streams | bidi echo floor | server CPU per message |

(the engine's load and the floor's are the same requests, callers and streams)

Every server runs at its defaults (`engine serve` with no tuning flag). The floors are
`floor_server.py` on asyncio's loop (the benchmark's floor since issue #2: the targets are
judged against it) and on uvloop, the engine's own loop (the stricter floor, reported beside:
`*_uvloop`). Each contestant has its own closed-loop
client process on the client CPUs, paused with SIGSTOP; then, round after round, each
load runs alone for a slice while the others are paused, in alternating order. The VM's
speed drifts by tens of percent within a minute: slices seconds apart compare like with
like. Per slice and contestant: calls answered in the slice, their p50 and p99 (calls
started in the slice), and the server's CPU time per call (schedstat). A point's ratio is
the median of its per-slice ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from tradescore_bench.client import LoadSpec, WorkerResult
from tradescore_bench.server import ServerProcess
from tradescore_bench.slices import SLICE_TAIL_S, PausedLoad, start_paused, stop_load
from tradescore_bench.system import thread_cpu_ns
from tradescore_bench.trades import RequestSet


@dataclass(frozen=True, slots=True)
class Contestant:
    """One load against one server: what a slice runs."""

    name: str
    server: str  # "engine" or "floor"
    mode: str  # "closed" (unary calls) or "stream" (ScoreStream messages)
    pool: str  # "singles", "batches" or "batches_no_reasons"
    trades_per_call: int
    concurrency: int  # calls in flight (closed), or streams (stream)
    window: int = 64  # stream: messages in flight per stream


@dataclass(frozen=True, slots=True)
class Ratio:
    """measured / reference of one per-slice figure, judged against a target."""

    figure: str  # "p50_ms", "calls_per_s" or "cpu_us_per_call"
    target: float | None  # None: reported, not judged
    at_most: bool  # True: the ratio must be <= target; False: >= target


@dataclass(frozen=True, slots=True)
class Point:
    key: str
    title: str
    measured: Contestant
    reference: Contestant
    ratios: tuple[Ratio, ...]


def default_points(batch_trades: int) -> list[Point]:
    """The points of issue #16, as data. The echo floors are the issue's (a bare grpc.aio server on
    asyncio's loop, as the benchmark always had it) and, reported beside, the same on uvloop, the
    engine's own loop: the stricter floor."""
    points: list[Point] = []
    for floor, suffix in (("floor", ""), ("floor_uvloop", " (uvloop)")):
        strict = floor == "floor"  # the targets are judged against the floor
        points += [
            Point(
                "single_1" + ("" if strict else "_uvloop"),
                f"1 trade, 1 caller: engine vs unary echo floor{suffix}",
                Contestant("engine 1x1", "engine", "closed", "singles", 1, 1),
                Contestant(f"{floor} 1x1", floor, "closed", "singles", 1, 1),
                (
                    Ratio("p50_ms", 1.35 if strict else None, True),
                    Ratio("calls_per_s", 0.7 if strict else None, False),
                ),
            ),
            Point(
                "single_64" + ("" if strict else "_uvloop"),
                f"1 trade, 64 callers: engine vs unary echo floor{suffix}",
                Contestant("engine 1x64", "engine", "closed", "singles", 1, 64),
                Contestant(f"{floor} 1x64", floor, "closed", "singles", 1, 64),
                (Ratio("calls_per_s", 0.85 if strict else None, False),),
            ),
            Point(
                "stream_1" + ("" if strict else "_uvloop"),
                f"ScoreStream, 1 trade a message, 4 streams: engine vs bidi echo floor{suffix}",
                Contestant("engine stream", "engine", "stream", "singles", 1, 4),
                Contestant(f"{floor} stream", floor, "stream", "singles", 1, 4),
                (Ratio("cpu_us_per_call", 1.6 if strict else None, True),),
            ),
        ]
    points.append(
        Point(
            "bulk_reasons",
            f"{batch_trades} trades x 4 callers: default reasons band vs EXPLAIN_NONE",
            Contestant("engine bulk", "engine", "closed", "batches", batch_trades, 4),
            Contestant("engine bulk, no reasons", "engine", "closed", "batches_no_reasons", batch_trades, 4),
            (Ratio("cpu_us_per_call", 1.3, True),),
        )
    )
    return points


def without_reasons(requests: Sequence[bytes]) -> list[bytes]:
    """The same ScoreRequests asking for no reasons (`explain = EXPLAIN_NONE`)."""
    out = []
    for raw in requests:
        request = pb.ScoreRequest.FromString(raw)
        request.explain = pb.EXPLAIN_NONE
        out.append(request.SerializeToString())
    return out


@dataclass(frozen=True, slots=True)
class SliceFigures:
    calls: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_call: float
    window: tuple[float, float]

    def get(self, figure: str) -> float:
        return float(getattr(self, figure))


@dataclass(slots=True)
class _Running:
    contestant: Contestant
    server: ServerProcess
    load: PausedLoad
    slices: list[tuple[tuple[float, float], float]] = field(default_factory=list)  # window, cpu ns


def _start_load(
    args: argparse.Namespace, pools: Mapping[str, list[bytes]], c: Contestant, server: ServerProcess
) -> PausedLoad:
    """`c`'s client process against `server`, warmed up and paused (SIGSTOP)."""
    rounds = args.point_slices * 12  # every contestant runs once per round
    spec = LoadSpec(
        target=server.target,
        mode=c.mode,
        requests=pools[c.pool],
        trades_per_call=c.trades_per_call,
        concurrency=c.concurrency,
        window=c.window,
        rate=0.0,
        phase_s=0.0,
        channels=1 if c.concurrency == 1 else args.channels,
        warmup_s=args.warmup,
        duration_s=rounds * (args.slice_seconds + 0.5) + 60.0,
        timeout_s=max(args.call_timeout, 3 * args.slice_seconds + 5.0),
        cpus=args.client_cpus,
        parse_responses=args.parse_responses,
        first=0,
    )
    return start_paused(spec, f"bench-{c.name}", args.warmup)


def _slice(run: _Running, seconds: float) -> None:
    """Let `run`'s load go for one slice; record the window and the server's CPU time in it."""
    pid = run.load.process.pid
    if pid is None:
        return
    os.kill(pid, signal.SIGCONT)
    time.sleep(0.25)  # the pipeline refills
    cpu0, t0 = thread_cpu_ns(run.server.pid), time.perf_counter()
    time.sleep(seconds)
    cpu1, t1 = thread_cpu_ns(run.server.pid), time.perf_counter()
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.15)  # calls in flight finish: the server is idle for the next slice
    ns = sum(cpu for _, cpu in cpu1.values()) - sum(
        cpu0.get(tid, (c, 0.0))[1] for tid, (c, _) in cpu1.items()
    )
    run.slices.append(((t0, t1), ns))


def _figures(result: WorkerResult, window: tuple[float, float], cpu_ns: float) -> SliceFigures:
    lo, hi = window
    answered = (result.recorded_at_s >= lo) & (result.recorded_at_s < hi)
    calls = int(answered.sum())
    started = result.recorded_at_s - result.latencies_s
    mine = (started >= lo) & (started < hi - SLICE_TAIL_S) & (result.recorded_at_s <= hi)
    ms = 1e3 * result.latencies_s[mine]
    p50 = float(np.quantile(ms, 0.5)) if ms.size else math.nan
    p99 = float(np.quantile(ms, 0.99, method="higher")) if ms.size else math.nan
    return SliceFigures(
        calls, calls / (hi - lo), p50, p99, cpu_ns / 1e3 / calls if calls else math.nan, window
    )


def run_points(
    args: argparse.Namespace, reqs: RequestSet, points: Sequence[Point], say: Callable[[str], None]
) -> dict[str, Any]:
    """Measure `points` in `args.point_slices` interleaved rounds; the per-point verdicts."""
    pools = {
        "singles": reqs.singles,
        "batches": reqs.batches,
        "batches_no_reasons": without_reasons(reqs.batches),
    }
    contestants: dict[str, Contestant] = {}
    for p in points:
        for c in (p.measured, p.reference):
            contestants.setdefault(c.name, c)
    servers: dict[str, ServerProcess] = {}
    running: dict[str, _Running] = {}
    results: dict[str, WorkerResult | None] = {}
    try:
        wanted = {c.server for c in contestants.values()}
        if "engine" in wanted:
            # the defaults, unless the run says otherwise; but a paused load cannot answer the
            # engine's keepalive pings, and a stream open across a pause would be closed as dead
            flags = ["--keepalive-timeout-s=600", *args.server_arg]
            servers["engine"] = ServerProcess.engine(args.bundle, args.server_cpus, flags)
            say(f"  engine at its defaults, pid {servers['engine'].pid} on {servers['engine'].target}")
        for floor, loop in (("floor", "asyncio"), ("floor_uvloop", "uvloop")):
            if floor in wanted:
                servers[floor] = ServerProcess.floor(args.server_cpus, reqs.batch_trades, loop)
                say(f"  {floor} ({loop}), pid {servers[floor].pid} on {servers[floor].target}")
        for c in contestants.values():
            running[c.name] = _Running(c, servers[c.server], _start_load(args, pools, c, servers[c.server]))
        names = list(running)
        for i in range(args.point_slices):
            for name in names if i % 2 == 0 else names[::-1]:
                _slice(running[name], args.slice_seconds)
            say(f"  points: round {i + 1}/{args.point_slices}")
        for name, run in running.items():
            results[name] = stop_load(run.load, collect=args.call_timeout + 30.0)
    finally:
        for run in running.values():
            stop_load(run.load)
        for server in servers.values():
            server.stop()
    per_slice: dict[str, list[SliceFigures]] = {}
    for name, run in running.items():
        result = results.get(name)
        per_slice[name] = (
            [] if result is None else [_figures(result, window, ns) for window, ns in run.slices]
        )
    return {"contestants": _summaries(per_slice), "points": [_verdict(p, per_slice) for p in points]}


def _summaries(per_slice: Mapping[str, list[SliceFigures]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, slices in per_slice.items():
        out[name] = {
            figure: statistics.median(s.get(figure) for s in slices) if slices else math.nan
            for figure in ("calls_per_s", "p50_ms", "p99_ms", "cpu_us_per_call")
        }
    return out


def _verdict(point: Point, per_slice: Mapping[str, list[SliceFigures]]) -> dict[str, Any]:
    mine, ref = per_slice[point.measured.name], per_slice[point.reference.name]
    ratios = []
    for r in point.ratios:
        each = [m.get(r.figure) / f.get(r.figure) for m, f in zip(mine, ref, strict=False)]
        each = [x for x in each if math.isfinite(x)]
        median = statistics.median(each) if each else math.nan
        ok: bool | None = None
        if r.target is not None and math.isfinite(median):
            ok = (median <= r.target) if r.at_most else (median >= r.target)
        ratios.append(
            {
                "figure": r.figure,
                "median": median,
                "range": [min(each), max(each)] if each else [],
                "target": r.target,
                "at_most": r.at_most,
                "ok": ok,
            }
        )
    return {
        "key": point.key,
        "title": point.title,
        "measured": point.measured.name,
        "reference": point.reference.name,
        "ratios": ratios,
    }


def print_points(report: Mapping[str, Any]) -> None:
    print("\nPoints at the defaults (medians of interleaved slices)")
    print(f"{'contestant':<26}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'srv CPU us/call':>17}")
    for name, s in report["contestants"].items():
        print(
            f"{name:<26}{s['calls_per_s']:>10,.0f}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}"
            f"{s['cpu_us_per_call']:>17,.0f}"
        )
    for p in report["points"]:
        for r in p["ratios"]:
            verdict = {True: "PASS", False: "FAIL", None: "    "}[r["ok"]]
            op = "<=" if r["at_most"] else ">="
            spread = f" (slices {r['range'][0]:.2f}-{r['range'][1]:.2f})" if r["range"] else ""
            target = f", target {op} {r['target']}" if r["target"] is not None else ""
            print(
                f"  {verdict} {p['key']}: {r['figure']} {p['measured']} / {p['reference']} = "
                f"{r['median']:.2f}{spread}{target}"
            )
