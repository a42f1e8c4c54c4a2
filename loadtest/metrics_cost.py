"""What the metrics cost on the hot path, measured in-process (not a test; prints numbers).

    python loadtest/metrics_cost.py [--calls N] [--json]

Times, per call, side by side in one run:

- `handler`:     a bare async unary handler called directly (the baseline);
- `wrapped`:     the same handler wrapped by MetricsInterceptor (started, received,
                 sent, handled counters + the handling-time histogram);
- `intercept`:   the interceptor's own per-call step in grpc.aio's handler lookup
                 (an awaited continuation and a cache hit);
- `scores/256`:  EngineMetrics.observe_scores on one batch of 256 probabilities;

once with in-memory values (`--workers 1`) and once in a child process with
PROMETHEUS_MULTIPROC_DIR set (`--workers N`: every write goes to an mmap file).
Only differences measured in the same process are meaningful; the gRPC call
around it costs far more (see loadtest/bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc
import numpy as np


class _Context:
    """The two methods the wrapper asks of a servicer context."""

    def code(self) -> None:
        return None

    def time_remaining(self) -> None:
        return None


class _Details(grpc.HandlerCallDetails):
    method = "/tradescore.v1.TradeScorer/Score"
    invocation_metadata = ()


async def _handler(request: bytes, context: Any) -> bytes:
    return request


def _best_ns(run: Any, calls: int, repeats: int = 5) -> float:
    """Lowest mean ns per call over `repeats` runs of `calls` calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        run(calls)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def measure(calls: int) -> dict[str, Any]:
    """Per-call costs in ns in this process; also returns what the metrics counted (a sanity check)."""
    from engine.interceptors import MetricsInterceptor
    from engine.metrics import EngineMetrics

    metrics = EngineMetrics()
    interceptor = MetricsInterceptor(metrics)
    handler = grpc.unary_unary_rpc_method_handler(_handler)
    loop = asyncio.new_event_loop()
    try:

        async def lookup(details: Any) -> Any:
            return handler

        wrapped = loop.run_until_complete(interceptor.intercept_service(lookup, _Details()))
        context = _Context()

        def loop_over(fn: Any) -> Any:
            async def many(n: int) -> None:
                for _ in range(n):
                    await fn(b"x", context)

            return lambda n: loop.run_until_complete(many(n))

        def intercept_loop(n: int) -> None:
            async def many() -> None:
                details = _Details()
                for _ in range(n):
                    await interceptor.intercept_service(lookup, details)

            loop.run_until_complete(many())

        def lookup_loop(n: int) -> None:
            async def many() -> None:
                details = _Details()
                for _ in range(n):
                    await lookup(details)

            loop.run_until_complete(many())

        probabilities = np.random.default_rng(1).beta(0.5, 12, 256).astype(np.float32)
        band_edges = np.array([0.04, 0.14, 0.41])

        def scores_loop(n: int) -> None:
            for _ in range(n):
                metrics.observe_scores(probabilities, band_edges)

        handler_ns = _best_ns(loop_over(_handler), calls)
        wrapped_ns = _best_ns(loop_over(wrapped.unary_unary), calls)
        lookup_ns = _best_ns(lookup_loop, calls)
        intercept_ns = _best_ns(intercept_loop, calls)
        scores_ns = _best_ns(scores_loop, max(1, calls // 10))
    finally:
        loop.close()
    counted = metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "tradescore.v1.TradeScorer",
            "grpc_method": "Score",
            "grpc_code": "OK",
        },
    )
    return {
        "multiprocess": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
        "handler_ns": handler_ns,
        "wrapped_ns": wrapped_ns,
        "wrapper_cost_ns": wrapped_ns - handler_ns,
        "intercept_cost_ns": intercept_ns - lookup_ns,
        "observe_scores_256_ns": scores_ns,
        "calls_counted": counted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20000, help="calls per timed run (best of 5 runs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per mode")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.calls)))
        return 0
    results = [measure(args.calls)]
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--calls", str(args.calls)],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": tmp},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        if args.json:
            print(json.dumps(r))
            continue
        mode = "multiprocess (--workers N)" if r["multiprocess"] else "in-memory (--workers 1)"
        print(
            f"{mode:28s} per call: metrics wrapper +{r['wrapper_cost_ns'] / 1000:.2f} µs "
            f"(bare handler {r['handler_ns'] / 1000:.2f} µs), interceptor lookup "
            f"+{r['intercept_cost_ns'] / 1000:.2f} µs; per batch of 256: observe_scores "
            f"{r['observe_scores_256_ns'] / 1000:.2f} µs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
