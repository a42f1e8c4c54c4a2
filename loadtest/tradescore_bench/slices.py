"""Interleaved slices: loads paused with SIGSTOP and let run one at a time for `--slice-seconds`, so
that ratios compare measurements seconds apart on a VM whose speed drifts within a minute: (b)
against in-process ORT, (a) batching on against off, and any set of engines (`ab.py`)."""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from tradescore_bench.client import LoadSpec, WorkerResult, client_main
from tradescore_bench.inprocess import inprocess_job, slices_main
from tradescore_bench.server import ServerProcess
from tradescore_bench.system import thread_cpu_ns, thread_groups
from tradescore_bench.trades import RequestSet


def b_slices(
    args: argparse.Namespace, reqs: RequestSet, server: ServerProcess, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """(b) and in-process ORT in alternating short slices on the same CPUs, `--slices` pairs.

    The CPU speed of a shared VM drifts by tens of percent within a minute, so two
    measurements taken a minute apart (or even ten seconds apart) compare two
    different machines. Here the (b) load runs all along and is paused
    (SIGSTOP to the client processes) while the in-process child measures ORT for
    `--slice-seconds`; then it resumes and the served side is measured for as long
    (rows from the engine's batch counters, server CPU from schedstat). Each pair
    is a few seconds apart; the verdict is the median of the pairs' ratios.
    """
    ctx = mp.get_context("spawn")
    job = inprocess_job(args, reqs, min(args.warmup, 1.0), batch_only=True)
    parent, child = ctx.Pipe()
    local = ctx.Process(target=slices_main, args=(job, child), name="bench-inprocess-slices")
    local.start()
    child.close()
    out: list[dict[str, Any]] = []
    client: PausedLoad | None = None
    try:
        client = paused_load(args, reqs, server, single=False, name="bench-client-slices")
        if not parent.poll(120):
            raise RuntimeError("in-process slices: the child did not start")
        ready = parent.recv()
        if ready != "ready":
            raise RuntimeError(f"in-process slices failed: {ready}")
        for i in range(args.slices):
            parent.send(args.slice_seconds)  # the load is paused meanwhile
            answer = parent.recv()
            if isinstance(answer, dict):
                raise RuntimeError(f"in-process slices failed: {answer['error']}")
            rows_ip, cpu_ip, wall_ip = answer
            served = served_slice(client, server, args.slice_seconds)
            entry = {
                "slice": i + 1,
                "inprocess_rows_per_cpu_s": rows_ip / cpu_ip,
                "inprocess_rows_per_s": rows_ip / wall_ip,
                "served_rows_per_server_cpu_s": served.rows_per_server_cpu_s,
                "served_rows_per_s": served.rows_per_s,
                "inprocess_us_per_row": 1e6 * cpu_ip / rows_ip,
                "served_us_per_row_by_thread": served.us_per_row_by_thread,
            }
            served_rate, local_rate = entry["served_rows_per_server_cpu_s"], entry["inprocess_rows_per_cpu_s"]
            entry["cpu_time_ratio"] = served_rate / local_rate
            entry["ratio"] = entry["served_rows_per_s"] / entry["inprocess_rows_per_s"]
            out.append(entry)
            say(
                f"  (b) slice {i + 1}/{args.slices}: in-process {entry['inprocess_rows_per_cpu_s']:,.0f}, "
                f"served {entry['served_rows_per_server_cpu_s']:,.0f} rows per CPU-second: "
                f"{entry['cpu_time_ratio']:.3f} (wall clock {entry['ratio']:.3f})"
            )
    finally:
        if client is not None:
            stop_load(client)
        if local.is_alive():
            try:
                parent.send(None)
            except OSError:
                pass
            local.join(10)
            if local.is_alive():
                local.kill()
    return out


@dataclass(frozen=True, slots=True)
class SliceRate:
    """What one engine scored in one slice: rows per second of its server's CPU, and per second;
    the server's CPU microseconds per row by THREAD_GROUPS; the measured window (perf_counter);
    and the p99 latency of the calls made in it (`slice_p99_ms`; NaN until the load reports)."""

    rows_per_server_cpu_s: float
    rows_per_s: float
    us_per_row_by_thread: dict[str, float]
    window: tuple[float, float]
    p99_ms: float = math.nan


def interleave_engines(
    args: argparse.Namespace,
    reqs: RequestSet,
    engines: Mapping[str, tuple[Sequence[str], Mapping[str, str]]],
    single: bool,
    on_slice: Callable[[int, dict[str, SliceRate]], None] | None = None,
    stream: bool = False,
) -> list[dict[str, SliceRate]]:
    """Several engines on the server CPUs at once, each (name -> (flags, environment)) with its own
    closed-loop load, (a) when `single`, else (b) (or (d), one-trade ScoreStream messages, when
    `stream`), paused with SIGSTOP; then `--slices` rounds in which each load runs alone for
    `--slice-seconds`, in alternating order.

    Per round and engine: rows per server CPU-second (schedstat, and the engine's batch
    counters) and per second. Side by side a few seconds apart, the VM's drift
    cancels out, where scenarios run minutes apart compare two different machines.
    """
    servers: dict[str, ServerProcess] = {}
    clients: dict[str, PausedLoad] = {}
    out: list[dict[str, SliceRate]] = []
    try:
        for name, (flags, env) in engines.items():
            threads = f"--intra-op-threads={args.intra_op_threads}"
            servers[name] = ServerProcess.engine(args.bundle, args.server_cpus, [threads, *flags], env)
        for name, server in servers.items():
            clients[name] = paused_load(
                args, reqs, server, single or stream, name=f"bench-client-{name}", stream=stream
            )
        names = list(engines)
        for i in range(args.slices):
            rates = {
                name: served_slice(clients[name], servers[name], args.slice_seconds)
                for name in (names if i % 2 == 0 else names[::-1])
            }
            out.append(rates)
            if on_slice is not None:
                on_slice(i, rates)
        for name, client in clients.items():  # each load's latencies, cut into its slices
            result = stop_load(client, collect=args.call_timeout + 30.0)
            if result is not None:
                for rates in out:
                    rates[name] = replace(rates[name], p99_ms=slice_p99_ms(result, rates[name].window))
    finally:
        for client in clients.values():
            stop_load(client)
        for server in servers.values():
            server.stop()
    return out


#: a call that starts this close to a slice's end may still be running when its load is paused


#: a call that starts this close to a slice's end may still be running when its load is paused
SLICE_TAIL_S = 0.25


def slice_p99_ms(result: WorkerResult, window: tuple[float, float]) -> float:
    """p99 latency (ms) of the calls a paused closed-loop load started in `window`, its last
    SLICE_TAIL_S excepted; a call still unanswered when the load was paused counts as infinitely
    slow (it is not dropped: dropping the slow ones would flatter the tail). NaN without calls."""
    lo, hi = window
    latency = result.latencies_s
    started = result.recorded_at_s - latency
    mine = (started >= lo) & (started < hi - SLICE_TAIL_S)
    if not mine.any():
        return math.nan
    ms = np.where(result.recorded_at_s[mine] <= hi, 1e3 * latency[mine], math.inf)
    return float(np.quantile(ms, 0.99, method="higher"))


@dataclass(frozen=True, slots=True)
class PausedLoad:
    """A closed-loop client process, paused between slices, and the end of its result pipe."""

    process: BaseProcess
    results: Connection


def paused_load(
    args: argparse.Namespace,
    reqs: RequestSet,
    server: ServerProcess,
    single: bool,
    name: str,
    stream: bool = False,
) -> PausedLoad:
    """A client process running (a) (`single`), (b), or (d) (`stream`) against `server` for as long
    as `--slices` slices can take, warmed up, then paused (SIGSTOP) until `served_slice` lets it run."""
    spec = LoadSpec(
        target=server.target,
        mode="stream" if stream else "closed",
        requests=reqs.singles if single else reqs.batches,
        trades_per_call=1 if single else args.batch_trades,
        concurrency=args.stream_concurrency
        if stream
        else args.single_concurrency
        if single
        else args.batch_concurrency,
        window=args.stream_window,
        rate=0.0,
        phase_s=0.0,
        channels=args.channels,
        warmup_s=args.warmup,
        duration_s=args.slices * 3 * (args.slice_seconds + 0.5) + 30.0,
        timeout_s=max(args.call_timeout, 3 * args.slice_seconds + 5.0),  # a paused call waits
        cpus=args.client_cpus,
        parse_responses=args.parse_responses,
        first=0,
    )
    return start_paused(spec, name, args.warmup)


def served_slice(load: PausedLoad, server: ServerProcess, seconds: float) -> SliceRate:
    """Let the paused `load` run for `seconds` (after a refill) and pause it again; what
    `server` scored meanwhile, per server CPU-second (schedstat) and per second."""
    client = load.process
    assert client.pid is not None
    os.kill(client.pid, signal.SIGCONT)
    time.sleep(0.25)  # the pipeline refills
    # the /metrics scrapes stay outside the CPU window (each costs the server ~0.4 ms)
    m0 = server.engine_metrics()
    threads0, t0 = thread_cpu_ns(server.pid), time.perf_counter()
    time.sleep(seconds)
    threads1, t1, m1 = thread_cpu_ns(server.pid), time.perf_counter(), server.engine_metrics()
    os.kill(client.pid, signal.SIGSTOP)
    time.sleep(0.15)  # in-flight calls finish: the server is idle for whatever runs next
    rows = m1.get("engine_batch_size_sum", 0.0) - m0.get("engine_batch_size_sum", 0.0)
    groups = thread_groups(server.pid, threads0, threads1)
    cpu_s = sum(groups.values()) / 1e9
    per_row = {k: v / 1e3 / max(rows, 1.0) for k, v in groups.items()}
    return SliceRate(rows / max(cpu_s, 1e-9), rows / (t1 - t0), per_row, (t0, t1))


def stop_load(load: PausedLoad, collect: float = 0.0) -> WorkerResult | None:
    """End a paused load. With `collect` > 0: let it finish its calls and wait that many seconds
    for its result (SIGTERM ends its window, `_Load.run`); else, or when it does not answer, kill it."""
    client, result = load.process, None
    if client.pid is not None and client.is_alive():
        if collect > 0:
            os.kill(client.pid, signal.SIGTERM)  # handled once it runs again
            os.kill(client.pid, signal.SIGCONT)
            if load.results.poll(collect):
                answer = load.results.recv()
                result = answer if isinstance(answer, WorkerResult) and not answer.error else None
            client.join(10)
        if client.is_alive():
            os.kill(client.pid, signal.SIGCONT)
            client.kill()
    client.join(10)
    return result


def a_interleaved(
    args: argparse.Namespace, reqs: RequestSet, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """(a) on two engines at once, batching on and off, in interleaved slices (`interleave_engines`)."""

    def report(i: int, rates: dict[str, SliceRate]) -> None:
        on, off = rates["on"].rows_per_server_cpu_s, rates["off"].rows_per_server_cpu_s
        say(
            f"  (a) slice {i + 1}/{args.slices}: batching on {on:,.0f}, off {off:,.0f} rows per "
            f"CPU-second: {on / off:.2f}x"
        )

    no_env: dict[str, str] = {}
    engines = {
        "on": (["--batching", *args.server_arg], no_env),
        "off": (["--no-batching", *args.server_arg], no_env),
    }
    out: list[dict[str, Any]] = []
    for i, rates in enumerate(interleave_engines(args, reqs, engines, single=True, on_slice=report)):
        on, off = rates["on"], rates["off"]
        out.append(
            {
                "slice": i + 1,
                "on_rows_per_server_cpu_s": on.rows_per_server_cpu_s,
                "off_rows_per_server_cpu_s": off.rows_per_server_cpu_s,
                "on_rows_per_s": on.rows_per_s,
                "off_rows_per_s": off.rows_per_s,
                "cpu_time_ratio": on.rows_per_server_cpu_s / off.rows_per_server_cpu_s,
                "on_p99_ms": on.p99_ms,
                "off_p99_ms": off.p99_ms,
                "p99_ratio": on.p99_ms / off.p99_ms,
            }
        )
    return out


def start_paused(spec: LoadSpec, name: str, warmup_s: float) -> PausedLoad:
    """A client process (`name`) running `spec`, once warmed up paused with SIGSTOP until a slice
    lets it run (SIGCONT)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    recv, send = ctx.Pipe(duplex=False)
    client: BaseProcess = ctx.Process(target=client_main, args=(spec, barrier, send), name=name)
    client.start()
    send.close()
    load = PausedLoad(client, recv)
    try:
        barrier.wait(warmup_s + 120)
    except Exception:
        stop_load(load)
        raise
    assert client.pid is not None
    os.kill(client.pid, signal.SIGSTOP)
    return load
