"""In-process ONNX Runtime and request path, in a child process pinned to the server's CPUs, with the
server's session options: ORT rows/s on 256-row matrices, single-row call time, and the CPU cost of
each step the server takes for a request (the fused `prepare_request`, the model call, the
response encoder); and the child that times ORT on command for the interleaved (b) slices."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tradescore_bench.system import CpuTimes, pin_process, run_in_child
from tradescore_bench.trades import RequestSet

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class InProcessJob:
    bundle: Path
    cpus: set[int]
    intra_op_threads: int
    batches: list[bytes]
    singles: list[bytes]
    warmup_s: float
    duration_s: float
    #: only the 256-row ORT rate, no request-path breakdown
    batch_only: bool = False


def timed(fn: Callable[[Any], object], items: Sequence[Any], seconds: float, min_calls: int = 20) -> F64:
    """Call `fn` on `items` round robin for about `seconds`; per-call seconds."""
    times: list[int] = []
    n = len(items)
    clock = time.perf_counter_ns
    end = clock() + int(seconds * 1e9)
    i = 0
    while True:
        item = items[i % n]
        t0 = clock()
        fn(item)
        t1 = clock()
        times.append(t1 - t0)
        i += 1
        if i >= min_calls and t1 >= end:
            break
    return np.asarray(times, dtype=np.float64) / 1e9


def _inprocess(job: InProcessJob) -> dict[str, Any]:
    pin_process(job.cpus)
    from engine.config import Settings
    from engine.scoring.response import response_bytes
    from engine.scoring.servable import load_serving_model
    from engine.scoring.wire import WireRequest, prepare_request

    model = load_serving_model(job.bundle, job.intra_op_threads)
    max_trades = Settings().max_trades_per_request

    # the steps of TradeScorerService._prepare / _respond: the one compiled call that decodes,
    # validates and computes the features, the model call, the response encoder
    def prepare(raw: bytes) -> tuple[WireRequest, npt.NDArray[np.float32]]:
        return prepare_request(raw, model.wire, model.plan, max_trades)

    def respond(args: tuple[WireRequest, npt.NDArray[np.float32]]) -> bytes:
        request, probs = args
        return response_bytes(request, probs, model.band_edges, model.name_bytes, model.version_bytes)

    out: dict[str, Any] = {
        "model": {
            "name": model.name,
            "version": model.version,
            "content_hash": model.bundle.manifest.content_hash,
        },
        "cpus": sorted(os.sched_getaffinity(0)),
        "intra_op_threads": job.intra_op_threads,
    }
    stage_s = max(0.2, min(0.5, job.duration_s / 8))

    def request_path(raws: list[bytes]) -> tuple[dict[str, float], list[npt.NDArray[np.float32]]]:
        """Median CPU microseconds of each step the server takes for one request; and the matrices."""
        prepared = [prepare(r) for r in raws]
        mats = [x for _, x in prepared]
        pairs = [(request, model.predict(x)) for request, x in prepared]
        timed(model.predict, mats, min(job.warmup_s, 1.0))  # warm up ORT for this shape
        per = {
            "prepare_request": timed(prepare, raws, stage_s),
            "ort_predict": timed(model.predict, mats, stage_s),
            "encode_response": timed(respond, pairs, stage_s),
        }
        us = {k: float(np.median(v) * 1e6) for k, v in per.items()}
        us["total"] = sum(us.values())
        return us, mats

    cores0, own0, wall0 = CpuTimes.read(job.cpus), time.process_time(), time.perf_counter()
    if job.batch_only:
        batch_mats = [prepare(r)[1] for r in job.batches]
    else:
        single_path, single_mats = request_path(job.singles)
        batch_path, batch_mats = request_path(job.batches)
        out["pipeline_us_per_call_p50"] = {"1": single_path, str(batch_mats[0].shape[0]): batch_path}
    rows = int(batch_mats[0].shape[0])
    out["feature_width"] = int(batch_mats[0].shape[1])

    timed(model.predict, batch_mats, job.warmup_s)
    t0, cpu0 = time.perf_counter(), time.thread_time()
    calls = timed(model.predict, batch_mats, job.duration_s)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    out["batch"] = {
        "rows": rows,
        "calls": int(calls.size),
        "rows_per_s": rows * calls.size / wall,
        # per CPU-second of this thread: unaffected by other processes taking turns on the CPU
        "rows_per_cpu_s": rows * calls.size / cpu,
        "call_us_p50": float(np.median(calls) * 1e6),
        "call_us_p99": float(np.percentile(calls, 99) * 1e6),
    }
    if job.batch_only:
        return out
    single = timed(model.predict, single_mats, max(1.0, job.duration_s / 3))
    out["single_row"] = {
        "calls": int(single.size),
        "call_us_p50": float(np.median(single) * 1e6),
        "call_us_p99": float(np.percentile(single, 99) * 1e6),
        "call_us_mean": float(single.mean() * 1e6),
    }
    wall = time.perf_counter() - wall0
    out["cpus_busy"] = cores0.until(CpuTimes.read(job.cpus), wall, len(job.cpus))
    out["own_cpu_util"] = (time.process_time() - own0) / wall / len(job.cpus)
    return out


def inprocess_job(
    args: argparse.Namespace, reqs: RequestSet, warmup_s: float, batch_only: bool = False
) -> InProcessJob:
    return InProcessJob(
        args.bundle,
        args.server_cpus,
        args.intra_op_threads,
        reqs.batches,
        reqs.singles,
        warmup_s,
        args.duration,
        batch_only,
    )


def run_inprocess(job: InProcessJob) -> dict[str, Any]:
    return run_in_child(_inprocess, job, "bench-inprocess", 120 + 4 * (job.warmup_s + job.duration_s))


def slices_main(job: InProcessJob, conn: Connection) -> None:
    """In-process ORT, on command: for each number of seconds received, predict 256-row matrices
    round robin that long and answer (rows, thread CPU seconds, wall seconds); None ends it."""
    try:
        pin_process(job.cpus)
        from engine.scoring.servable import load_serving_model
        from engine.scoring.wire import prepare_request

        model = load_serving_model(job.bundle, job.intra_op_threads)
        mats = [prepare_request(r, model.wire, model.plan, 1 << 20)[1] for r in job.batches]
        timed(model.predict, mats, job.warmup_s)
        conn.send("ready")
        while (seconds := conn.recv()) is not None:
            t0, cpu0 = time.perf_counter(), time.thread_time()
            calls = timed(model.predict, mats, seconds)
            wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
            conn.send((int(mats[0].shape[0]) * calls.size, cpu, wall))
    except BaseException as exc:  # noqa: BLE001 - report any failure to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()
