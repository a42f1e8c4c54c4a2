#!/usr/bin/env python
"""ONNX Runtime's CPU per row alone on a core, and beside a thread doing the engine's request path.

    python loadtest/ort_interference.py            # about 30 s

In the served engine the inference thread shares its core with the event
loop, which decodes requests and runs gRPC between (and during) model calls.
This times, on one pinned core, in alternating rounds: the default model's
ONNX Runtime call on `--rows`-row matrices in a thread of its own (`alone`),
then the same while a second thread runs `prepare_request` on two 256-trade
requests every `--period-ms` (`beside`: what the loop does per call pair).
Only the ORT thread's CPU time is counted, so the difference is what the other
thread's work costs ORT itself (caches, branch predictors, TLB refilled after
each switch), not the other thread's own CPU. Prints each round and the
median ratio. Not a test; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (this folder's benchmark: the requests it sends)

from engine.models.bundle import DEFAULT_BUNDLE  # noqa: E402
from engine.scoring.servable import ServingModel, load_serving_model  # noqa: E402
from engine.scoring.wire import prepare_request  # noqa: E402

F32 = npt.NDArray[np.float32]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtest/ort_interference.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle to time")
    p.add_argument("--cpu", type=int, default=0, help="the one CPU both threads run on")
    p.add_argument("--rows", type=int, default=512, help="rows per ORT call (two 256-trade requests)")
    p.add_argument(
        "--period-ms", type=float, default=1.0, help="sleep of the request-path thread between runs"
    )
    p.add_argument("--rounds", type=int, default=8, help="alone/beside pairs")
    p.add_argument("--seconds", type=float, default=1.5, help="length of each measurement")
    args = p.parse_args(argv)
    if args.rows < 1 or args.rounds < 1 or args.seconds <= 0 or args.period_ms < 0:
        p.error("--rows and --rounds must be >= 1, --seconds > 0, --period-ms >= 0")
    return args


def ort_us_per_row(model: ServingModel, mats: Sequence[F32], seconds: float) -> float:
    """In a new thread: ORT calls round robin over `mats` for `seconds`; that thread's CPU us per row."""
    out: list[float] = []

    def run() -> None:
        rows, i = 0, 0
        cpu0, end = time.thread_time(), time.perf_counter() + seconds
        while time.perf_counter() < end:
            x = mats[i % len(mats)]
            model.predict(x)
            rows += x.shape[0]
            i += 1
        out.append((time.thread_time() - cpu0) * 1e6 / rows)

    thread = threading.Thread(target=run, name="ort")
    thread.start()
    thread.join()
    return out[0]


def main(argv: Sequence[str] | None = None) -> int:
    o = parse_args(argv)
    os.sched_setaffinity(0, {o.cpu})
    reqs = bench.build_requests(0, 20, 256, 7, o.bundle)
    model = load_serving_model(o.bundle, 1)
    per_request = [prepare_request(r, model.wire, model.plan, 1 << 20)[1] for r in reqs.batches]
    rows = np.concatenate(per_request)
    mats = [np.roll(rows, -k * o.rows, axis=0)[: o.rows].copy() for k in range(len(per_request))]
    ort_us_per_row(model, mats, 1.0)  # warm up

    stop = threading.Event()

    def request_path() -> None:
        k = 0
        while not stop.is_set():
            time.sleep(o.period_ms / 1000)
            for _ in range(2):
                prepare_request(reqs.batches[k % len(reqs.batches)], model.wire, model.plan, 1 << 20)
                k += 1

    print(f"ORT on CPU {o.cpu}, {o.rows} rows per call; CPU us per row of the ORT thread", flush=True)
    ratios: list[float] = []
    for i in range(o.rounds):
        alone = ort_us_per_row(model, mats, o.seconds)
        stop.clear()
        other = threading.Thread(target=request_path, name="request-path")
        other.start()
        beside = ort_us_per_row(model, mats, o.seconds)
        stop.set()
        other.join()
        ratios.append(beside / alone)
        print(
            f"round {i + 1}/{o.rounds}: alone {alone:.3f}, beside the request path {beside:.3f}: "
            f"{beside / alone:.3f}x",
            flush=True,
        )
    print(f"median beside/alone {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
