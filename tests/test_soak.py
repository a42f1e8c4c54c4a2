"""Soak: a bounded run of steady mixed load against a real `engine serve`; resident memory and open
file descriptors stay flat, and no call ends with an error other than the ones asked for.

The load, from four client tasks at once: unary `Score` calls of 1-200 trades, short `ScoreStream`s,
`ScorePairs` with breaks, calls the client cancels mid-way, calls with a bad trade, and a fresh
connection (channel) now and then. The engine's RSS and fd count are read from /proc after a
warm-up (the first quarter of the calls: allocators and caches settle) and at the end.
TRADESCORE_SOAK_CALLS sets the length in calls per client task (default 8,000; the figures in
docs/guarantees.md come from longer runs); how long it took is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc

from .conftest import EngineProcess, make_trade, sample_request
from .test_pairs import T0, pair, view

#: 32,000 calls against an engine process (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow

#: calls per client task (four tasks)
SOAK_CALLS = int(os.environ.get("TRADESCORE_SOAK_CALLS", "8000"))
#: allowed growth between the warm-up and the end
RSS_SLACK_MB = 25.0
FD_SLACK = 8


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _load(target: str, calls: int, counts: dict[str, int], seed: int, warm: asyncio.Event) -> None:
    rng = random.Random(seed)
    requests = [sample_request(n, seed=seed * 31 + n) for n in (1, 1, 1, 5, 20, 200)]
    bad = pb.ScoreRequest(trades=[make_trade(0), make_trade(1, quantity=-1.0)])
    pairs = pb.ScorePairsRequest(
        pairs=[
            pair("drift", view(t=T0 + 900), view("risk", status="pending")),
            pair("same", view(), view("risk")),
        ]
    )

    def count(code: str) -> None:
        counts[code] = counts.get(code, 0) + 1
        if sum(counts.values()) >= SOAK_CALLS:  # the four tasks' first quarter: warmed up
            warm.set()

    left = calls
    while left > 0:
        async with grpc.aio.insecure_channel(target) as channel:  # a new connection every 200 calls
            stub = pb_grpc.TradeScorerStub(channel)
            breaks = pb_grpc.BreakScorerStub(channel)
            for _ in range(min(200, left)):
                left -= 1
                kind = rng.random()
                try:
                    if kind < 0.6:
                        await stub.Score(rng.choice(requests), timeout=10)
                    elif kind < 0.75:

                        async def few() -> AsyncIterator[pb.ScoreRequest]:
                            for _ in range(rng.randint(1, 5)):
                                yield rng.choice(requests)

                        async for _ in stub.ScoreStream(few(), timeout=10):
                            pass
                    elif kind < 0.85:
                        await breaks.ScorePairs(pairs, timeout=10)
                    elif kind < 0.95:
                        call = stub.Score(requests[-1], timeout=10)
                        await asyncio.sleep(rng.random() * 0.002)
                        call.cancel()
                        await call
                    else:
                        await stub.Score(bad, timeout=10)
                    count("OK")
                except asyncio.CancelledError:
                    count("CANCELLED")
                except grpc.aio.AioRpcError as exc:
                    count(exc.code().name)


async def _soak(target: str, pid: int) -> dict[str, float]:
    counts: dict[str, int] = {}
    warm = asyncio.Event()
    loads = [asyncio.ensure_future(_load(target, SOAK_CALLS, counts, seed, warm)) for seed in range(4)]
    await warm.wait()
    started = time.monotonic()
    rss0, fds0 = _rss_mb(pid), _fds(pid)
    calls0 = sum(counts.values())
    await asyncio.gather(*loads)
    rss1, fds1 = _rss_mb(pid), _fds(pid)
    seconds = time.monotonic() - started
    await asyncio.sleep(1.0)  # connections the clients closed last are gone
    fds_idle = _fds(pid)
    assert set(counts) <= {"OK", "CANCELLED", "INVALID_ARGUMENT"}, counts
    assert sum(counts.values()) == 4 * SOAK_CALLS, counts  # every call ended with one of those
    assert counts.get("OK", 0) > 0 and counts.get("INVALID_ARGUMENT", 0) > 0
    calls = sum(counts.values()) - calls0
    return {
        "seconds": seconds,
        "calls": calls,
        "rss_start_mb": rss0,
        "rss_end_mb": rss1,
        "fds_start": fds0,
        "fds_end": fds1,
        "fds_idle": fds_idle,
        **{f"calls_{k.lower()}": v for k, v in counts.items()},
    }


def test_soak_keeps_memory_and_file_descriptors_flat(engine_process: Callable[..., EngineProcess]) -> None:
    server = engine_process()
    figures = asyncio.run(_soak(server.target, server.proc.pid))
    print("soak: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    assert figures["rss_end_mb"] - figures["rss_start_mb"] <= RSS_SLACK_MB, figures
    assert figures["fds_idle"] <= figures["fds_start"] + FD_SLACK, figures
    assert server.proc.poll() is None
