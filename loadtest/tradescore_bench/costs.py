"""In-process cost scenarios: what one part of the request path costs, timed side by side in one
process pinned to the server's first CPU. None is in the default run; ask for them by key:

- `explain_cost`: CPU per explained trade, the engine's TreeSHAP kernel against LightGBM's
  `pred_contrib` (one thread each), same rows, 1 to 256 rows per call, interleaved round by round;
- `ort_interference`: ONNX Runtime's thread CPU per row alone on the core, then beside a thread
  running `prepare_request` on two 256-trade requests every millisecond (the event loop's work
  between model calls), in alternating rounds;
- `batcher_cost`: CPU per call of `engine.batching.MicroBatcher` alone (submit, batch,
  inference-thread hand-off, result) with a no-op model, 256-row calls from 4 callers;
- `metrics_cost`: per call, a bare async handler against the same wrapped by the metrics
  interceptor, the interceptor's look-up step, and `observe_scores` on 256 scores; in memory and
  with `PROMETHEUS_MULTIPROC_DIR` (`--workers N`);
- `path_ab`: `prepare_request` and `response_bytes` of this checkout against
  `--other-checkout`'s, same 256-trade requests, alternating call by call, swapping who goes
  first every round.

Each returns a JSON-able dict with a `lines` entry: what the report prints. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from tradescore_bench.system import pin_process
from tradescore_bench.trades import build_requests

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class CostOptions:
    """What the cost scenarios take from the command line (picklable for the child process)."""

    bundle: Path
    cpu: int
    rounds: int  # 0: each scenario's own default
    calls: int  # 0: each scenario's own default
    slice_seconds: float
    other_checkout: Path | None

    @staticmethod
    def from_args(args: argparse.Namespace) -> CostOptions:
        return CostOptions(
            args.bundle,
            min(args.server_cpus),
            args.cost_rounds,
            args.cost_calls,
            args.slice_seconds,
            args.other_checkout,
        )

    def rounds_or(self, default: int) -> int:
        return self.rounds or default

    def calls_or(self, default: int) -> int:
        return self.calls or default


# -- explain_cost -------------------------------------------------------------------------------


def explain_cost(o: CostOptions) -> dict[str, Any]:
    import lightgbm as lgb

    from engine.features.compute import FeaturePlan
    from engine.models.bundle import ModelBundle
    from engine.models.treeshap import TreeExplainer
    from engine.training.synthetic import generate_trades

    bundle = ModelBundle.load(o.bundle)
    plan = FeaturePlan(bundle.manifest.features, bundle.references)
    features = plan.compute(generate_trades(2048, seed=7).trades)
    text = (o.bundle / "model.lgb.txt").read_text()
    explainer = TreeExplainer.from_text(text)
    booster = lgb.Booster(model_str=text)
    rows: list[dict[str, float]] = []
    for n in (1, 4, 12, 64, 256):
        x = np.ascontiguousarray(features[:n])
        x64 = x.astype(np.float64)
        explainer.contributions(x)
        booster.predict(x64, pred_contrib=True, num_threads=1)
        ours, theirs = [], []
        reps = max(2, 256 // n)
        for _ in range(o.rounds_or(5)):
            t = time.process_time()
            for _ in range(reps):
                explainer.contributions(x)
            ours.append((time.process_time() - t) / reps / n * 1e6)
            t = time.process_time()
            for _ in range(reps):
                booster.predict(x64, pred_contrib=True, num_threads=1)
            theirs.append((time.process_time() - t) / reps / n * 1e6)
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append({"rows_per_call": n, "engine_us_per_row": a, "lightgbm_us_per_row": b, "ratio": b / a})
    lines = [
        f"{r['rows_per_call']:4.0f} rows/call: engine {r['engine_us_per_row']:6.0f} us/row   "
        f"lightgbm pred_contrib {r['lightgbm_us_per_row']:6.0f} us/row   ratio {r['ratio']:.2f}x"
        for r in rows
    ]
    return {"per_batch_size": rows, "lines": lines}


# -- ort_interference ---------------------------------------------------------------------------


def _ort_us_per_row(predict: Callable[[F32], object], mats: Sequence[F32], seconds: float) -> float:
    """In a new thread: ORT calls round robin over `mats` for `seconds`; that thread's CPU us per row."""
    out: list[float] = []

    def run() -> None:
        rows, i = 0, 0
        cpu0, end = time.thread_time(), time.perf_counter() + seconds
        while time.perf_counter() < end:
            x = mats[i % len(mats)]
            predict(x)
            rows += x.shape[0]
            i += 1
        out.append((time.thread_time() - cpu0) * 1e6 / rows)

    thread = threading.Thread(target=run, name="ort")
    thread.start()
    thread.join()
    return out[0]


def ort_interference(o: CostOptions, rows: int = 512, period_ms: float = 1.0) -> dict[str, Any]:
    from engine.scoring.servable import load_serving_model
    from engine.scoring.wire import prepare_request

    batches = build_requests(0, 20, 256, 7, o.bundle).batches
    model = load_serving_model(o.bundle, 1)
    per_request = [prepare_request(r, model.wire, model.plan, 1 << 20)[1] for r in batches]
    matrix = np.concatenate(per_request)
    mats = [np.roll(matrix, -k * rows, axis=0)[:rows].copy() for k in range(len(per_request))]
    _ort_us_per_row(model.predict, mats, 1.0)  # warm up
    stop = threading.Event()

    def request_path() -> None:
        k = 0
        while not stop.is_set():
            time.sleep(period_ms / 1000)
            for _ in range(2):
                prepare_request(batches[k % len(batches)], model.wire, model.plan, 1 << 20)
                k += 1

    rounds: list[dict[str, float]] = []
    for _ in range(o.rounds_or(8)):
        alone = _ort_us_per_row(model.predict, mats, o.slice_seconds)
        stop.clear()
        other = threading.Thread(target=request_path, name="request-path")
        other.start()
        beside = _ort_us_per_row(model.predict, mats, o.slice_seconds)
        stop.set()
        other.join()
        rounds.append({"alone_us_per_row": alone, "beside_us_per_row": beside, "ratio": beside / alone})
    ratios = [r["ratio"] for r in rounds]
    median = statistics.median(ratios)
    lines = [f"ORT on CPU {o.cpu}, {rows} rows per call; CPU us per row of the ORT thread"]
    lines += [
        f"round {i + 1}/{len(rounds)}: alone {r['alone_us_per_row']:.3f}, beside the request path "
        f"{r['beside_us_per_row']:.3f}: {r['ratio']:.3f}x"
        for i, r in enumerate(rounds)
    ]
    lines.append(f"median beside/alone {median:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")
    return {
        "rows_per_call": rows,
        "period_ms": period_ms,
        "rounds": rounds,
        "median_ratio": median,
        "lines": lines,
    }


# -- batcher_cost -------------------------------------------------------------------------------


def _noop(key: str, x: F32) -> F32:
    return x[:, 0]


async def _batcher_round_trips(calls: int, rows: int, callers: int) -> float:
    from engine.batching import MicroBatcher, concat_matrices
    from engine.metrics import EngineMetrics

    batcher: MicroBatcher[str, F32] = MicroBatcher(
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


def batcher_cost(o: CostOptions, rows: int = 256, callers: int = 4) -> dict[str, Any]:
    calls = o.calls_or(3000)
    per_call = asyncio.run(_batcher_round_trips(calls, rows, callers))
    return {
        "calls": calls,
        "rows_per_call": rows,
        "callers": callers,
        "cpu_us_per_call": per_call * 1e6,
        "lines": [
            f"micro-batcher round trip: {per_call * 1e6:.1f} us of CPU per call ({rows} rows, no-op model)"
        ],
    }


# -- metrics_cost -------------------------------------------------------------------------------


def _best_ns(run: Callable[[int], object], calls: int, repeats: int = 5) -> float:
    """Lowest mean ns per call over `repeats` runs of `calls` calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        run(calls)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def metrics_measure(calls: int) -> dict[str, Any]:
    """Per-call costs in ns in this process; and what the metrics counted (a sanity check)."""
    import grpc

    from engine.interceptors import MetricsInterceptor
    from engine.metrics import EngineMetrics

    class Context:
        """The two methods the wrapper asks of a servicer context."""

        def code(self) -> None:
            return None

        def time_remaining(self) -> None:
            return None

    class Details(grpc.HandlerCallDetails):
        method = "/tradescore.v1.TradeScorer/Score"
        invocation_metadata = ()

    async def bare(request: bytes, context: Any) -> bytes:
        return request

    metrics = EngineMetrics()
    interceptor = MetricsInterceptor(metrics)
    handler = grpc.unary_unary_rpc_method_handler(bare)
    loop = asyncio.new_event_loop()
    try:

        async def lookup(details: Any) -> Any:
            return handler

        wrapped = loop.run_until_complete(interceptor.intercept_service(lookup, Details()))
        context = Context()

        def loop_over(fn: Any) -> Callable[[int], object]:
            async def many(n: int) -> None:
                for _ in range(n):
                    await fn(b"x", context)

            return lambda n: loop.run_until_complete(many(n))

        def intercept_loop(n: int) -> None:
            async def many() -> None:
                details = Details()
                for _ in range(n):
                    await interceptor.intercept_service(lookup, details)

            loop.run_until_complete(many())

        def lookup_loop(n: int) -> None:
            async def many() -> None:
                details = Details()
                for _ in range(n):
                    await lookup(details)

            loop.run_until_complete(many())

        probabilities = np.random.default_rng(1).beta(0.5, 12, 256).astype(np.float32)
        band_edges = np.array([0.04, 0.14, 0.41])

        def scores_loop(n: int) -> None:
            for _ in range(n):
                metrics.observe_scores(probabilities, band_edges)

        handler_ns = _best_ns(loop_over(bare), calls)
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


def metrics_cost(o: CostOptions) -> dict[str, Any]:
    """In memory here, then multiprocess in a fresh child (PROMETHEUS_MULTIPROC_DIR is read at import)."""
    calls = o.calls_or(20000)
    modes = [metrics_measure(calls)]
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as tmp:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
        try:
            modes.append(_in_child(metrics_measure, calls))
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    lines = []
    for r in modes:
        mode = "multiprocess (--workers N)" if r["multiprocess"] else "in-memory (--workers 1)"
        lines.append(
            f"{mode:28s} per call: metrics wrapper +{r['wrapper_cost_ns'] / 1000:.2f} us "
            f"(bare handler {r['handler_ns'] / 1000:.2f} us), interceptor lookup "
            f"+{r['intercept_cost_ns'] / 1000:.2f} us; per batch of 256: observe_scores "
            f"{r['observe_scores_256_ns'] / 1000:.2f} us"
        )
    return {"calls": calls, "modes": modes, "lines": lines}


# -- path_ab --------------------------------------------------------------------------------------


def _other_module(checkout: Path, name: str) -> ModuleType | None:
    """`engine/scoring/NAME.py` of `checkout`, loaded beside this checkout's (None: it has none)."""
    path = checkout / "src" / "engine" / "scoring" / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"other_{name}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"path_ab: no {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"other_{name}"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _prepare(module: ModuleType, tables: Any, plan: Any, raw: bytes) -> object:
    return module.prepare_request(raw, tables, plan, 1000)


def _respond(
    respond: Callable[..., bytes], decoded: dict[bytes, Any], probabilities: F32, model: Any, raw: bytes
) -> object:
    return respond(decoded[raw], probabilities, model.band_edges, model.name_bytes, model.version_bytes)


def path_ab(o: CostOptions) -> dict[str, Any]:
    from engine.scoring import response, wire
    from engine.scoring.servable import load_serving_model

    if o.other_checkout is None:
        raise RuntimeError("path_ab needs --other-checkout PATH (e.g. a `git worktree` of HEAD~1)")
    other = _other_module(o.other_checkout, "wire")
    if other is None:
        raise RuntimeError(f"path_ab: {o.other_checkout} has no engine/scoring/wire.py")
    # the encoder is engine.scoring.response since the decoder and encoder were split; before, wire
    other_response = _other_module(o.other_checkout, "response") or other
    responders = {"this": response.response_bytes, "other": other_response.response_bytes}
    model = load_serving_model(o.bundle)
    tables = {"this": model.wire, "other": other.WireTables.build(model.plan)}
    modules = {"this": wire, "other": other}
    raws = build_requests(64, 32, 256, 7, o.bundle).batches
    probabilities = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    steps: dict[str, dict[str, Callable[[bytes], object]]] = {"prepare_request": {}, "response_bytes": {}}
    for name, module in modules.items():
        t = tables[name]
        decoded = {raw: module.decode_request(raw, t, 1000) for raw in raws}
        steps["prepare_request"][name] = partial(_prepare, module, t, model.plan)
        steps["response_bytes"][name] = partial(_respond, responders[name], decoded, probabilities, model)
    out: dict[str, Any] = {"other_checkout": str(o.other_checkout), "lines": []}
    for step, fns in steps.items():
        times: dict[str, list[int]] = {name: [] for name in fns}
        for fn in fns.values():
            for raw in raws:
                fn(raw)  # compile and warm up
        order = list(fns.items())
        for k in range(o.rounds_or(60)):
            for raw in raws:
                # the second call of a pair finds the request bytes in cache: swap who goes first
                for name, fn in order if k % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter_ns()
                    fn(raw)
                    times[name].append(time.perf_counter_ns() - t0)
        this, that = (float(np.median(times[name])) / 1e3 for name in ("this", "other"))
        out[step] = {"this_us": this, "other_us": that, "ratio": this / that}
        out["lines"].append(
            f"{step:16s} this {this:7.1f} us, other {that:7.1f} us per call; this/other {this / that:.3f}"
        )
    return out


# -- the scenarios, as data, and their child process ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    key: str
    title: str
    run: Callable[[CostOptions], dict[str, Any]]


COSTS: dict[str, Cost] = {
    c.key: c
    for c in (
        Cost(
            "explain_cost", "reasons: engine TreeSHAP vs LightGBM pred_contrib, CPU per trade", explain_cost
        ),
        Cost("ort_interference", "ORT's CPU per row alone and beside the request path", ort_interference),
        Cost("batcher_cost", "the micro-batcher's CPU per call, no-op model", batcher_cost),
        Cost("metrics_cost", "the metrics' cost per call, in memory and multiprocess", metrics_cost),
        Cost("path_ab", "the compiled request path, this checkout vs --other-checkout", path_ab),
    )
}


def _child(fn: Callable[..., dict[str, Any]], arg: Any, cpus: set[int] | None, conn: Connection) -> None:
    try:
        if cpus is not None:
            pin_process(cpus)
        conn.send(fn(arg))
    except BaseException as exc:  # noqa: BLE001 - report any failure to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _in_child(fn: Callable[..., dict[str, Any]], arg: Any, cpus: set[int] | None = None) -> dict[str, Any]:
    """fn(arg) in a fresh (spawned) process, pinned to `cpus` when given."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, arg, cpus, child), name=f"bench-{fn.__name__}")
    proc.start()
    child.close()
    try:
        result: dict[str, Any] = parent.recv()
    except EOFError:
        result = {"error": f"the child died (exit code {proc.exitcode})"}
    proc.join(10)
    if "error" in result:
        raise RuntimeError(f"{fn.__name__} failed: {result['error']}")
    return result


def run_costs(keys: Sequence[str], options: CostOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Each cost scenario of `keys`, in order, each in a fresh process pinned to `options.cpu`."""
    out: dict[str, Any] = {}
    for key in keys:
        cost = COSTS[key]
        say(f"{key}: {cost.title}")
        out[key] = {"title": cost.title, **_in_child(cost.run, options, {options.cpu})}
    return out


def print_costs(costs: dict[str, Any]) -> None:
    for key, result in costs.items():
        print(f"\n{key}: {result['title']}")
        for line in result["lines"]:
            print(f"  {line}")
