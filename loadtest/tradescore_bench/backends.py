"""The model backend as a benchmark dimension (issue #20): ONNX Runtime against the compiled model.

`bench.py --scenarios backends` measures, in one run:

1. In process, in a child pinned to the server's CPUs: rows per CPU-second at batch 1, 64,
   256 and 1024 of the trade model on ONNX Runtime (`--model-backend onnx`), compiled
   (`--model-backend compiled`) and LightGBM's own predictor (`Booster.predict`, 1 thread), on
   feature matrices built from the benchmark's requests as the server builds them; every
   contestant runs a slice in turn, round after round, and ratios are medians of per-round
   ratios. Batch 1 is also reported as CPU microseconds per call.
2. Served: two engines at their defaults but `--explain-band OFF` (reasons off), one per
   backend, both pinned to the server CPUs, loaded in turn by (b) (256 trades a call, 4 calls
   in flight) for `--backend-rounds` rounds; the ratio is the median of per-round ratios of
   rows/s (and server CPU per row beside it).

Targets (issue #20): in process at batch 256 compiled >= 4x ONNX Runtime; at batch 1
compiled's time per call <= ONNX Runtime's; served 256-trade calls >= 2x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tradescore_bench.scenarios import Scenario, run_scenario
from tradescore_bench.server import ServerProcess, model_info
from tradescore_bench.system import cpus_text, pin_process, run_in_child
from tradescore_bench.trades import RequestSet

BACKENDS = ("onnx", "compiled")
BATCHES = (1, 64, 256, 1024)
TARGETS = {"inprocess_256": 4.0, "batch_1_time": 1.0, "served_256": 2.0}


@dataclass(frozen=True, slots=True)
class InProcessBackends:
    bundle: Path
    cpus: set[int]
    batches: list[bytes]
    rounds: int
    slice_s: float


def _rate(
    fn: Callable[[npt.NDArray[np.float32]], object], xs: list[npt.NDArray[np.float32]], seconds: float
) -> float:
    """Rows per CPU-second of this thread calling fn on each of `xs` in turn for about `seconds`
    (distinct rows call after call, as a server sees them: no branch predictor learns one by heart)."""
    fn(xs[0])
    calls = 0
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    while calls < 5 or time.perf_counter() - wall0 < seconds:
        fn(xs[calls % len(xs)])
        calls += 1
    return float(xs[0].shape[0] * calls / max(time.thread_time() - cpu0, 1e-9))


def _inprocess(job: InProcessBackends) -> dict[str, Any]:
    pin_process(job.cpus)
    import lightgbm as lgb

    from engine.config import Settings
    from engine.models.bundle import LGB_FILE
    from engine.scoring.servable import load_serving_model
    from engine.scoring.wire import decode_request

    models = {b: load_serving_model(job.bundle, backend=b) for b in BACKENDS}
    booster = lgb.Booster(model_str=(job.bundle / LGB_FILE).read_text())
    onnx = models["onnx"]
    max_trades = Settings().max_trades_per_request
    mats = [onnx.plan.compute_rows(decode_request(r, onnx.wire, max_trades).rows) for r in job.batches]
    pool = np.ascontiguousarray(np.vstack(mats), dtype=np.float32)
    contestants: dict[str, Callable[[npt.NDArray[np.float32]], object]] = {
        "onnx": models["onnx"].predict,
        "compiled": models["compiled"].predict,
        "lightgbm": lambda x: booster.predict(x, num_threads=1),
    }
    out: dict[str, Any] = {"rows_in_pool": int(pool.shape[0]), "batches": {}}
    for batch in BATCHES:
        xs = [np.ascontiguousarray(pool[i : i + batch]) for i in range(0, pool.shape[0] - batch + 1, batch)]
        rates: dict[str, list[float]] = {k: [] for k in contestants}
        for r in range(job.rounds):
            order = list(contestants) if r % 2 == 0 else list(reversed(contestants))
            for name in order:
                rates[name].append(_rate(contestants[name], xs, job.slice_s))
        cell: dict[str, Any] = {}
        for name in contestants:
            per_round = [a / b for a, b in zip(rates[name], rates["onnx"], strict=True)]
            cell[name] = {
                "rows_per_cpu_s": statistics.median(rates[name]),
                "us_per_call": batch / statistics.median(rates[name]) * 1e6,
                "vs_onnx": statistics.median(per_round),
            }
        out["batches"][str(batch)] = cell
    parity = np.abs(models["compiled"].predict(pool).astype(np.float64) - models["onnx"].predict(pool))
    out["max_abs_diff_compiled_vs_onnx"] = float(parity.max())
    return out


def run_inprocess(job: InProcessBackends) -> dict[str, Any]:
    timeout = 600 + job.rounds * len(BATCHES) * 3 * (job.slice_s + 1)
    return run_in_child(_inprocess, job, "bench-backends", timeout)


def run_served(args: argparse.Namespace, reqs: RequestSet, say: Callable[[str], None]) -> dict[str, Any]:
    """(b) against one engine per backend, reasons off, in alternating rounds."""
    servers: dict[str, ServerProcess] = {}
    described: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []
    try:
        for backend in BACKENDS:
            flags = [
                f"--intra-op-threads={args.intra_op_threads}",
                f"--model-backend={backend}",
                "--explain-band=OFF",
                *args.server_arg,
            ]
            say(f"starting server: {' '.join(flags)} on CPUs {cpus_text(args.server_cpus)}")
            servers[backend] = ServerProcess.engine(args.bundle, args.server_cpus, flags)
            info = model_info(servers[backend].target)
            if info.get("backend") != backend:
                raise RuntimeError(f"the {backend} server says it runs {info.get('backend')!r}")
            described[backend] = {**servers[backend].describe(), "model": info}
        for r in range(args.backend_rounds):
            order = BACKENDS if r % 2 == 0 else tuple(reversed(BACKENDS))
            got: dict[str, Any] = {}
            for backend in order:
                sc = Scenario(
                    f"b_{backend}",
                    f"(b) {args.batch_trades} trades x {args.batch_concurrency}, {backend}, reasons off",
                    "on",
                    "closed",
                    args.batch_trades,
                    args.batch_concurrency,
                )
                res = run_scenario(sc, servers[backend], reqs.batches, args, None)
                got[backend] = res
                say(
                    f"  round {r + 1} {backend}: {res['rows_per_s']:,.0f} rows/s, "
                    f"p99 {res['latency']['p99_ms']:.1f} ms, server CPU {res['server_cpu_util']:.0%}, "
                    f"errors {sum(res['errors'].values())}"
                )
            rounds.append(got)
    finally:
        for backend, server in servers.items():
            described.setdefault(backend, {}).update(server.stop())
    ratios = [rd["compiled"]["rows_per_s"] / max(rd["onnx"]["rows_per_s"], 1e-9) for rd in rounds]
    return {
        "servers": described,
        "rounds": rounds,
        "rows_per_s": {b: statistics.median(rd[b]["rows_per_s"] for rd in rounds) for b in BACKENDS},
        "p99_ms": {b: statistics.median(rd[b]["latency"]["p99_ms"] for rd in rounds) for b in BACKENDS},
        "errors": {b: sum(sum(rd[b]["errors"].values()) for rd in rounds) for b in BACKENDS},
        "compiled_vs_onnx": statistics.median(ratios),
        "per_round": ratios,
    }


def verdicts(inprocess: Mapping[str, Any], served: Mapping[str, Any]) -> dict[str, Any]:
    b256 = inprocess["batches"]["256"]["compiled"]["vs_onnx"]
    one = inprocess["batches"]["1"]
    time_ratio = one["compiled"]["us_per_call"] / one["onnx"]["us_per_call"]
    s = served["compiled_vs_onnx"]
    return {
        "inprocess_256": {"ratio": b256, "target": f">= {TARGETS['inprocess_256']:g}", "met": b256 >= 4.0},
        "batch_1_time": {
            "ratio": time_ratio,
            "target": "<= 1 (compiled / onnx time per call)",
            "met": time_ratio <= 1.0,
        },
        "served_256": {"ratio": s, "target": f">= {TARGETS['served_256']:g}", "met": s >= 2.0},
    }


def run_backends(args: argparse.Namespace, reqs: RequestSet, say: Callable[[str], None]) -> dict[str, Any]:
    say(f"in process: onnx, compiled, lightgbm at batches {BATCHES}, {args.backend_rounds * 2 + 1} rounds")
    job = InProcessBackends(args.bundle, args.server_cpus, reqs.batches, args.backend_rounds * 2 + 1, 0.4)
    inprocess = run_inprocess(job)
    for batch, cell in inprocess["batches"].items():
        say(
            f"  batch {batch}: "
            + ", ".join(
                f"{k} {v['rows_per_cpu_s']:,.0f} rows/s ({v['vs_onnx']:.2f}x)" for k, v in cell.items()
            )
        )
    served = run_served(args, reqs, say)
    return {"in_process": inprocess, "served": served, "verdicts": verdicts(inprocess, served)}


def print_backends(res: Mapping[str, Any]) -> None:
    ip = res["in_process"]
    print("\nModel backends, in process (rows per CPU-second of one core; x: vs onnx, median of rounds)")
    print(f"{'batch':>6} " + " ".join(f"{name:>26}" for name in ("onnx", "compiled", "lightgbm")))
    for batch, cell in ip["batches"].items():
        cells = [
            f"{c['rows_per_cpu_s']:>11,.0f} {c['us_per_call']:>7.1f}us {c['vs_onnx']:>4.2f}x"
            for c in (cell[n] for n in ("onnx", "compiled", "lightgbm"))
        ]
        print(f"{batch:>6} " + " ".join(f"{c:>26}" for c in cells))
    sv = res["served"]
    print(
        f"served (b) 256 trades x 4, reasons off: onnx {sv['rows_per_s']['onnx']:,.0f} rows/s "
        f"(p99 {sv['p99_ms']['onnx']:.1f} ms), compiled {sv['rows_per_s']['compiled']:,.0f} rows/s "
        f"(p99 {sv['p99_ms']['compiled']:.1f} ms): {sv['compiled_vs_onnx']:.2f}x "
        f"(median of {len(sv['per_round'])} rounds)"
    )
    for name, v in res["verdicts"].items():
        print(f"  {name:<14} {v['ratio']:.2f} (target {v['target']}): {'met' if v['met'] else 'NOT MET'}")
