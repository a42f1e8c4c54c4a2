#!/usr/bin/env python
"""CPU per call of the micro-batcher alone: submit -> batch -> inference thread -> result.

A no-op model (it returns column 0), 256-row calls from 4 concurrent callers,
the process pinned to one CPU (default 0): what `engine.batching` costs the
event loop and its thread hand-off, without gRPC or ONNX Runtime. Used for the
before/after figure of the batcher rewrite (a collector task and
`run_in_executor`: 120-133 us per call; dispatch on submit / finish / timer
with own inference threads: ~41 us, on this project's 2-core VM).

    .venv/bin/python loadtest/batcher_cost.py [--calls 3000] [--cpu 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import numpy as np
import numpy.typing as npt

from engine.batching import MicroBatcher, concat_matrices
from engine.metrics import EngineMetrics


def _noop(key: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return x[:, 0]


async def measure(calls: int, rows: int, callers: int) -> float:
    batcher: MicroBatcher[str, npt.NDArray[np.float32]] = MicroBatcher(
        _noop,
        concat_matrices,
        max_batch_rows=256,
        max_wait_s=0.0015,
        max_queue_rows=4096,
        metrics=EngineMetrics(),
    )
    batcher.start()
    x = np.zeros((rows, 15), dtype=np.float32)

    async def caller(n: int) -> None:
        for _ in range(n):
            await batcher.submit("model", x)

    cpu0 = time.process_time()
    await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
    cpu = time.process_time() - cpu0
    await batcher.close(timeout=5)
    return cpu / (calls // callers * callers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=3000, help="calls in all")
    p.add_argument("--rows", type=int, default=256, help="rows per call")
    p.add_argument("--callers", type=int, default=4, help="concurrent callers")
    p.add_argument("--cpu", type=int, default=0, help="CPU to pin this process to")
    args = p.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    per_call = asyncio.run(measure(args.calls, args.rows, args.callers))
    print(
        f"micro-batcher round trip: {per_call * 1e6:.1f} us of CPU per call ({args.rows} rows, no-op model)"
    )


if __name__ == "__main__":
    main()
