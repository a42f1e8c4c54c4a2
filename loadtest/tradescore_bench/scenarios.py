"""The served scenarios, as data (`Scenario`, and `plan`: which ones a run's --scenarios and options
ask of each server), and one scenario's run: its client processes, the measured window, the
server's CPU by thread, the CPU of the machine's other processes, and the summary."""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tradescore_locust import server_metrics

from tradescore_bench.client import OIP_METHOD, SCORE_METHOD, LoadSpec, WorkerResult, client_main
from tradescore_bench.server import ServerProcess, batching_stats
from tradescore_bench.system import CpuTimes, others_cpu_seconds, thread_cpu_ns, thread_groups

F64 = npt.NDArray[np.float64]
#: above this share of one core a process counts as saturated
SATURATED = 0.9


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str  # "a", "b", "c1000", "a_nobatch", "floor_a", ...
    title: str
    server: str  # "on": engine, batching; "off": engine --no-batching; "floor": bare grpc.aio
    mode: str
    trades_per_call: int
    concurrency: int = 0
    rate: float = 0.0
    method: str = SCORE_METHOD


def oip_scenario(args: argparse.Namespace) -> Scenario:
    """(b) through the Open Inference Protocol: the same matrices, raw FP32, same calls in flight."""
    title = f"(oip_b) OIP {args.batch_trades} rows raw x {args.batch_concurrency}"
    return Scenario(
        "oip_b", title, "on", "closed", args.batch_trades, args.batch_concurrency, method=OIP_METHOD
    )


def run_scenario(
    sc: Scenario,
    server: ServerProcess,
    requests: list[bytes],
    args: argparse.Namespace,
    profile_dir: Path | None,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    procs_n = max(1, args.client_procs)
    if sc.mode in ("closed", "stream"):
        procs_n = min(procs_n, sc.concurrency)
    barrier = ctx.Barrier(procs_n + 1)
    workers: list[tuple[BaseProcess, Connection]] = []
    for p in range(procs_n):
        conc = sc.concurrency // procs_n + (1 if p < sc.concurrency % procs_n else 0)
        spec = LoadSpec(
            target=server.target,
            mode=sc.mode,
            requests=requests,
            trades_per_call=sc.trades_per_call,
            concurrency=conc,
            rate=sc.rate / procs_n,
            phase_s=p / sc.rate if sc.rate else 0.0,
            channels=args.channels,
            warmup_s=args.warmup,
            duration_s=args.duration,
            timeout_s=args.call_timeout,
            cpus=args.client_cpus,
            parse_responses=args.parse_responses,
            first=p * 7919,
            window=args.stream_window,
            method=sc.method,
        )
        recv, send = ctx.Pipe(duplex=False)
        client = ctx.Process(target=client_main, args=(spec, barrier, send), name=f"bench-client-{p}")
        client.start()
        send.close()
        workers.append((client, recv))
    profiler: subprocess.Popen[bytes] | None = None
    try:
        barrier.wait(args.warmup + 120)
    except Exception as exc:  # BrokenBarrierError or timeout: collect what the clients said
        for proc, recv in workers:
            if recv.poll(5):
                err = recv.recv().error
                if err:
                    raise RuntimeError(f"scenario {sc.key}: client failed: {err}") from exc
            proc.kill()
        raise RuntimeError(f"scenario {sc.key}: clients did not start: {exc!r}") from exc
    metrics0, snap0 = server.scrape_metrics()
    cpu0 = server.cpu_seconds()
    others0 = others_cpu_seconds()
    threads0 = thread_cpu_ns(server.pid)
    srv_cores0, cli_cores0 = CpuTimes.read(args.server_cpus), CpuTimes.read(args.client_cpus)
    t0 = time.perf_counter()
    if profile_dir is not None:
        profiler = start_profiler(server.pid, profile_dir / f"server-{sc.key}", args.duration)
    time.sleep(args.duration)
    cpu1 = server.cpu_seconds()
    others1 = others_cpu_seconds()
    threads1 = thread_cpu_ns(server.pid)
    window = time.perf_counter() - t0
    metrics1, snap1 = server.scrape_metrics()
    srv_cores = srv_cores0.until(CpuTimes.read(args.server_cpus), window, len(args.server_cpus))
    cli_cores = cli_cores0.until(CpuTimes.read(args.client_cpus), window, len(args.client_cpus))
    results: list[WorkerResult] = []
    for proc, recv in workers:
        if not recv.poll(args.duration + args.call_timeout + 60):
            proc.kill()
            raise RuntimeError(f"scenario {sc.key}: a client did not report")
        results.append(recv.recv())
        proc.join(10)
    if profiler is not None:
        profiler.wait(30)
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(f"scenario {sc.key}: client failed: {failed[0]}")
    out = summarize(sc, results, cpu1 - cpu0, window, procs_n, args)
    out["batching"] = batching_stats(metrics0, metrics1)
    if snap0 is not None and snap1 is not None:
        # the engine's own view: from its handler's start to its answer, without the client's
        # scheduling or gRPC's transport (bucket-interpolated, as Prometheus' histogram_quantile)
        handled = server_metrics.server_p99(server_metrics.window(snap0, snap1))
        out["server_handling_p99_ms"] = None if handled.p99_s is None else 1e3 * handled.p99_s
    groups = thread_groups(server.pid, threads0, threads1)
    out["server_cpu_by_thread"] = {k: v / max(sum(groups.values()), 1e-9) for k, v in groups.items()}
    out["server_cpus_busy"] = srv_cores
    out["client_cpus_busy"] = cli_cores
    # other processes on the machine (2 CPUs: they take turns with the server or the client)
    out["other_processes_cpu"] = (others1 - others0) / window
    return out


def percentiles_ms(latencies_s: F64) -> dict[str, float]:
    if latencies_s.size == 0:
        return {
            "p50_ms": math.nan,
            "p90_ms": math.nan,
            "p99_ms": math.nan,
            "max_ms": math.nan,
            "mean_ms": math.nan,
        }
    p50, p90, p99 = np.percentile(latencies_s, [50, 90, 99]) * 1e3
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(latencies_s.max() * 1e3),
        "mean_ms": float(latencies_s.mean() * 1e3),
    }


def summarize(
    sc: Scenario,
    results: list[WorkerResult],
    server_cpu_s: float,
    window_s: float,
    procs: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    lat = np.concatenate([r.latencies_s for r in results])
    ok = sum(r.ok for r in results)
    errors: Counter[str] = Counter()
    warm_errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
        warm_errors.update(r.warmup_errors)
    dur = float(np.mean([r.window_s for r in results]))
    calls_done = ok + sum(errors.values())
    client_cpu = sum(r.cpu_s for r in results)
    out: dict[str, Any] = {
        "key": sc.key,
        "title": sc.title,
        "server": sc.server,
        "mode": sc.mode,
        "trades_per_call": sc.trades_per_call,
        "concurrency": sc.concurrency if sc.mode != "open" else None,
        "offered_calls_per_s": sc.rate if sc.mode == "open" else None,
        "client_processes": procs,
        "channels_per_process": args.channels,
        "window_s": dur,
        "ok_calls": ok,
        "errors": dict(errors),
        "error_details": {k: v for r in results for k, v in r.error_details.items()},
        "error_latency": percentiles_ms(np.concatenate([r.error_latencies_s for r in results])),
        "calls_per_s": ok / dur,
        "rows_per_s": ok * sc.trades_per_call / dur,
        "latency": percentiles_ms(lat),
        "server_cpu_s": server_cpu_s,
        "server_cpu_util": server_cpu_s / window_s,
        "server_cpu_us_per_call": server_cpu_s / calls_done * 1e6 if calls_done else math.nan,
        "rows_per_server_cpu_s": ok * sc.trades_per_call / server_cpu_s if server_cpu_s else math.nan,
        "server_cpu_us_per_trade": server_cpu_s / (calls_done * sc.trades_per_call) * 1e6
        if calls_done
        else math.nan,
        "client_cpu_s": client_cpu,
        "client_cpu_util": client_cpu / dur,
        "warmup_calls": sum(r.warmup_calls for r in results),
        "warmup_errors": dict(warm_errors),
        "responses_checked": sum(r.checked for r in results),
    }
    if sc.mode == "open":
        sent = sum(r.sent for r in results)
        out["scheduled_in_window"] = sum(r.scheduled for r in results)
        out["achieved_send_rate"] = sent / dur
        out["achieved_ok_rate"] = ok / dur
        out["send_lag"] = percentiles_ms(np.concatenate([r.send_lag_s for r in results]))
        out["service_latency"] = percentiles_ms(np.concatenate([r.service_s for r in results]))
    srv_sat = out["server_cpu_util"] >= SATURATED
    cli_sat = out["client_cpu_util"] >= SATURATED * len(args.client_cpus)
    out["bound"] = (
        "server+client"
        if srv_sat and cli_sat
        else "server"
        if srv_sat
        else "CLIENT"
        if cli_sat
        else "neither"
    )
    return out


def start_profiler(pid: int, stem: Path, duration: float) -> subprocess.Popen[bytes] | None:
    """py-spy record on the server for one window (speedscope JSON), if py-spy is installed."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print("  (py-spy not found next to python: no profile)", file=sys.stderr)
        return None
    cmd = [
        str(exe),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(duration))),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        f"{stem}.txt",
        "--nonblocking",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: the servers a run starts, in order: kind -> the suffix of its scenarios' keys ("a_nobatch",
#: "a_w2", ...), the prefix ("floor_a", ...), and the `engine serve` flags (None: the floor)
SERVERS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "on": ("", "", ("--batching",)),
    "off": ("_nobatch", "", ("--no-batching",)),
    "floor": ("", "floor_", None),
    "w2": ("_w2", "", ("--workers=2",)),
}


def plan(args: argparse.Namespace, wanted: set[str], kind: str) -> list[Scenario]:
    """The scenarios of `--scenarios` (`wanted`) that run against server `kind` (SERVERS), in order:
    (a), (b), oip_b, (c) at each of --rates, (d), then the curve at each of --curve-rates."""
    suffix, prefix, _ = SERVERS[kind]
    out = []
    if prefix + "a" + suffix in wanted:
        title = f"(a) 1 trade x {args.single_concurrency} in flight"
        out.append(Scenario(prefix + "a" + suffix, title, kind, "closed", 1, args.single_concurrency))
    if prefix + "b" + suffix in wanted:
        title = f"(b) {args.batch_trades} trades x {args.batch_concurrency} in flight"
        out.append(
            Scenario(prefix + "b" + suffix, title, kind, "closed", args.batch_trades, args.batch_concurrency)
        )
    if kind == "on" and "oip_b" in wanted:
        out.append(oip_scenario(args))
    if prefix + "c" + suffix in wanted:
        for rate in args.rate_list:
            title = f"(c) 1 trade, open loop {rate:g}/s"
            out.append(Scenario(f"{prefix}c{rate:g}{suffix}", title, kind, "open", 1, rate=rate))
    if prefix + "d" + suffix in wanted:
        title = f"(d) ScoreStream, 1 trade/msg, {args.stream_concurrency} x {args.stream_window} in flight"
        out.append(Scenario(prefix + "d" + suffix, title, kind, "stream", 1, args.stream_concurrency))
    if kind == "on" and "curve" in wanted:
        out += [
            Scenario(f"curve{rate:g}", f"curve: 1 trade, open loop {rate:g}/s", "on", "open", 1, rate=rate)
            for rate in args.curve_rate_list
        ]
    return out
