"""gRPC load for rest_bench.py: raw ScoreRequest bytes on grpc.aio, closed loop (k calls in flight) or
open loop (a fixed rate, latency from each call's scheduled time), in a child process pinned to the
client CPUs."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from tradescore_rest.httpload import LoadResult


@dataclass(frozen=True)
class GrpcLoad:
    target: str
    requests: Sequence[bytes]
    seconds: float
    warmup: float = 1.0
    inflight: int = 4
    rate: float = 0.0
    channels: int = 2
    cpus: frozenset[int] = frozenset({1})


async def _drive(spec: GrpcLoad) -> LoadResult:
    import grpc

    result = LoadResult()
    clock = time.perf_counter
    channels = [grpc.aio.insecure_channel(spec.target) for _ in range(spec.channels)]
    calls = [c.unary_unary("/tradescore.v1.TradeScorer/Score", None, None) for c in channels]
    start = clock() + spec.warmup
    stop = start + spec.seconds
    n = len(spec.requests)

    async def one(i: int, t0: float) -> None:
        try:
            await calls[i % len(calls)](spec.requests[i % n], timeout=10)
            code = 200
        except grpc.aio.AioRpcError as exc:
            code = 500 + exc.code().value[0]
        if start <= t0 < stop:
            result.calls += 1
            result.latencies.append(clock() - t0)
            result.statuses[code] += 1

    async def closed(k: int) -> None:
        i = k
        while clock() < stop:
            await one(i, clock())
            i += spec.inflight

    if spec.rate > 0:
        tasks: set[asyncio.Task[None]] = set()
        t = clock()
        i = 0
        while t < stop:
            now = clock()
            if t > now:
                await asyncio.sleep(t - now)
            task = asyncio.get_running_loop().create_task(one(i, t))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            t += 1.0 / spec.rate
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    else:
        await asyncio.gather(*(closed(k) for k in range(spec.inflight)))
    for c in channels:
        await c.close(None)
    result.seconds = spec.seconds
    return result


def _main(spec: GrpcLoad, conn: Connection) -> None:
    os.sched_setaffinity(0, set(spec.cpus))
    import uvloop

    conn.send(uvloop.run(_drive(spec)))
    conn.close()


def run_grpc_load(spec: GrpcLoad) -> LoadResult:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_main, args=(spec, child), daemon=True)
    proc.start()
    child.close()
    try:
        result: LoadResult = parent.recv()
    finally:
        proc.join(timeout=30)
    return result
