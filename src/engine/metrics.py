"""Every Prometheus metric the engine exports, defined in this one place.

Metrics live in an injected `CollectorRegistry` (tests make a fresh one) and
are observed per batch, not per trade, so the hot path pays a handful of
observations per ONNX Runtime call and a few per gRPC call. Buckets start at
10 µs: the usual Python defaults start at 5 ms and would see nothing of a
sub-millisecond engine.

With `--workers N` every worker writes its values to memory-mapped files in
one directory (prometheus-client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`)
and the parent process serves one `/metrics` for all of them:

    worker 1 ─┐  counter_<pid>.db, histogram_<pid>.db, gauge_livesum_<pid>.db ...
    worker 2 ─┼─▶ PROMETHEUS_MULTIPROC_DIR ──▶ parent: MultiProcessCollector ──▶ :metrics-port/metrics
    worker N ─┘

Counters and histograms add up over workers; the in-flight and queue gauges
are `livesum` (a dead worker's share disappears with it); `engine_model_info`
is `liveall` and carries a `pid` label per worker in that mode.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from engine import jit
from engine.jit import compiled
from engine.labels import BAND_NAMES, BREAK_CLASSES, band_of

#: seconds, 10 µs .. 10 s (gRPC A66-style resolution at the low end)
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: seconds a gRPC call takes in its handler: 10 µs .. 30 s, dense around the single-digit-ms target
#: (the latency SLO's 10 ms threshold is a bucket edge)
HANDLING_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.006,
    0.008,
    0.01,
    0.013,
    0.016,
    0.02,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: trades per batch
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: fail probabilities: fine where most trades score (a few % base rate), coarse above
SCORE_BUCKETS = (
    0.01,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
)
_SCORE_EDGES = np.asarray(SCORE_BUCKETS, dtype=np.float64)

#: engine_rejected_calls_total{reason} of each status a call (or stream message) is refused with
#: before inference: the one map, for every servicer and the REST front door
REJECT_REASON_BY_CODE: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overload",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.NOT_FOUND: "invalid",  # a model name or version that is not served
    grpc.StatusCode.UNAVAILABLE: "shutdown",
}
REJECT_REASONS = tuple(dict.fromkeys(REJECT_REASON_BY_CODE.values()))
#: engine_batches_total{lane}: where the micro-batcher ran a batch (engine.batching)
BATCH_LANES = ("inline", "thread")
#: engine_call_seconds{trades}: scoring calls by size, so that one-trade calls are judged apart
#: from bulk ones (upper bounds of the classes, then the rest)
SIZE_CLASSES = ("1", "2-16", "17-256", "257+")
_SIZE_BOUNDS = (1, 16, 256)
#: engine_call_seconds{method}: the scoring calls timed by size (ScoreStream: each message)
SIZED_METHODS = ("Score", "ScoreStream", "ModelInfer")


def size_class(trades: int) -> int:
    """The index in SIZE_CLASSES of a call of `trades` trades (rows)."""
    return bisect_left(_SIZE_BOUNDS, trades)


#: tradescore.v1.RiskBand numbers 1..4, as `RiskBands.assign` returns them
RISK_BANDS = BAND_NAMES

#: grpc_code label values as grpc-go's codes.Code.String() writes them (what public dashboards filter on)
GRPC_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
#: grpc_type label values, by (request streaming, response streaming)
GRPC_TYPES: dict[tuple[bool, bool], str] = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


# -- fast writes -------------------------------------------------------------------------------------
# Counter.inc() and Histogram.observe() check their arguments and labels on every call and observe()
# walks the buckets in Python (docs/design-figures.md has the cost). The gRPC interceptor runs
# five of them per call, so it binds, once per method, the value objects those methods end up writing
# (the same objects, in-memory or mmap-backed in multiprocess mode) and writes them directly.
# tests/test_metrics.py checks that the results equal the public API's.


def raw_inc(counter: Counter) -> Callable[[float], None]:
    """`counter.inc` without its per-call checks (an unlabelled counter or a bound label child)."""
    counter.inc(0)  # the public API first: raises here if labels are missing
    inc: Callable[[float], None] = counter._value.inc
    return inc


def raw_observe(histogram: Histogram) -> Callable[[float], None]:
    """`histogram.observe` with a binary search for the bucket instead of a Python loop."""
    if not hasattr(histogram, "_buckets"):
        raise ValueError(f"{histogram._name}: bind its labels before taking its observer")
    bounds: list[float] = histogram._upper_bounds
    buckets = histogram._buckets
    add_sum = histogram._sum.inc

    def observe(amount: float) -> None:
        buckets[bisect_left(bounds, amount)].inc(1)  # first bound >= amount, as observe() picks it
        add_sum(amount)

    return observe


@compiled
def _score_counts(
    probabilities: npt.NDArray[np.float32],
    score_edges: npt.NDArray[np.float64],
    band_edges: npt.NDArray[np.float64],
    counts: npt.NDArray[np.int64],
) -> float:
    """Add each probability to its histogram bucket (counts[0..len(score_edges)], `le` bounds,
    +Inf last) and to its risk band (counts[len(score_edges) + band], `band_of`); returns their sum.

    The same counting as np.searchsorted(score_edges, p, "left") (NaN lands in +Inf), without a
    numpy call per step.
    """
    n_buckets = score_edges.shape[0]
    total = 0.0
    for i in range(probabilities.shape[0]):
        p = np.float64(probabilities[i])
        total += p
        b = 0
        while b < n_buckets and not p <= score_edges[b]:  # NaN passes every edge: +Inf
            b += 1
        counts[b] += 1
        counts[n_buckets + band_of(p, band_edges)] += 1  # band 1 right after +Inf
    return total


def _observe_counts(histogram: Histogram, counts: list[int], total: float) -> None:
    """Add pre-bucketed observations (`counts[i]` in bucket i, +Inf last) to a histogram in one go."""
    buckets = histogram._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    histogram._sum.inc(total)


@dataclass(slots=True)
class GrpcMethodMetrics:
    """The gRPC server metrics of one method, bound to its labels once (no label lookup per call)."""

    started: Callable[[float], None]
    msg_received: Callable[[float], None]
    msg_sent: Callable[[float], None]
    handling: Callable[[float], None]
    handled: dict[grpc.StatusCode, Callable[[float], None]]


class EngineMetrics:
    """All the engine's metrics: gRPC server metrics (grpc-ecosystem names) and the engine's own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: values live in files (worker processes): a gauge cannot be read by a function at scrape time
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # compile (or load from numba's cache) the per-batch kernel now, not in the first batch
        _score_counts(np.zeros(0, np.float32), _SCORE_EDGES, _SCORE_EDGES, np.zeros(1, np.int64))

        # -- gRPC server (go-grpc-prometheus names, labels and code spelling) --------------------
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started", "RPCs started on the server.", grpc_labels, registry=r
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received", "RPC stream messages received on the server.", grpc_labels, registry=r
        )
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent", "RPC stream messages sent by the server.", grpc_labels, registry=r
        )
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its last response (seconds).",
            grpc_labels,
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self._grpc_methods: dict[tuple[str, str, str], GrpcMethodMetrics] = {}

        # -- batching and inference --------------------------------------------------------------
        self.rows_scored = Counter("engine_rows_scored", "Trades scored by the model.", registry=r)
        self.batches = Counter(
            "engine_batches",
            "ONNX Runtime calls made by the micro-batcher, by lane: small calls' batches run on the "
            "event loop (inline), larger ones in an inference thread (thread).",
            ["lane"],
            registry=r,
        )
        self._batches = {lane: raw_inc(self.batches.labels(lane)) for lane in BATCH_LANES}
        self._rows_scored = raw_inc(self.rows_scored)
        self.batch_size = Histogram(
            "engine_batch_size", "Trades per ONNX Runtime call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "engine_queue_depth", "Trades waiting for a batch.", multiprocess_mode="livesum", registry=r
        )
        self.inflight_calls = Gauge(
            "engine_inflight_calls",
            "Score/ScoreStream calls being handled (the autoscaling signal).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_wait = Histogram(
            "engine_queue_wait_seconds",
            "Time the oldest trade of each batch waited before inference.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "engine_inference_seconds", "ONNX Runtime time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self._batch_size = raw_observe(self.batch_size)
        self._inference = raw_observe(self.inference)
        self._queue_wait = raw_observe(self.queue_wait)
        self._queue_depth = self.queue_depth.set
        self.rejected = Counter(
            "engine_rejected_calls", "Calls refused before inference, by reason.", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.malformed_requests = Counter(
            "engine_malformed_requests",
            "Requests whose bytes are not the method's message (answered INVALID_ARGUMENT), by method.",
            ["grpc_service", "grpc_method"],
            registry=r,
        )
        self.batch_failures = Counter("engine_batch_failures", "Batches whose inference raised.", registry=r)

        # -- model -------------------------------------------------------------------------------
        self.model_info = Gauge(
            "engine_model_info",
            "The model serving (value 1; 0 for one replaced in this process), with its load time.",
            ["name", "version", "loaded_at"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self._model_labels: tuple[str, str, str] | None = None
        self.model_reloads = Counter(
            "engine_model_reloads", "Bundle reload attempts by outcome.", ["outcome"], registry=r
        )
        for outcome in ("success", "failure"):
            self.model_reloads.labels(outcome)
        self.score = Histogram(
            "engine_score",
            "Fail probabilities returned (drift: compare the distribution over time).",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.risk_band = Counter(
            "engine_risk_band", "Trades scored, by risk band returned.", ["band"], registry=r
        )
        self._bands = [raw_inc(self.risk_band.labels(band)) for band in RISK_BANDS]
        self._score_bucket: list[Callable[[float], None]] = [b.inc for b in self.score._buckets]
        self._score_sum: Callable[[float], None] = self.score._sum.inc
        self._edges_seen: tuple[npt.NDArray[np.float64] | None, list[float]] = (None, [])

        self.tls_reloads = Counter(
            "engine_tls_reloads",
            "Changes of the TLS certificate files seen, by outcome (failure: the previous pair serves on).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("success", "failure"):
            self.tls_reloads.labels(outcome)
        self.trades_explained = Counter(
            "engine_trades_explained",
            "Trades returned with reasons (TreeSHAP contributions, in the explain-0 thread).",
            registry=r,
        )
        self.explain_seconds = Histogram(
            "engine_explain_seconds",
            "TreeSHAP time per batch of explained trades.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # kernels: a signature compiled after the start means a caller waited seconds for it
        self.kernels_compiled = Gauge(
            "engine_kernels_compiled",
            "Kernel signatures this process compiled (0 when the kernel cache held them all).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.kernels_loaded = Gauge(
            "engine_kernels_loaded",
            "Kernel signatures this process loaded from the kernel cache.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.call_seconds = Histogram(
            "engine_call_seconds",
            "Time the engine takes for a scoring call, from its request to its response (ScoreStream: "
            "each message), by method and by trades in the call (size class): one-trade calls "
            "apart from bulk ones.",
            ["method", "trades"],
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        #: observers of engine_call_seconds per method, indexed by `size_class`
        self.call_time: dict[str, tuple[Callable[[float], None], ...]] = {
            method: tuple(raw_observe(self.call_seconds.labels(method, c)) for c in SIZE_CLASSES)
            for method in SIZED_METHODS
        }

        # -- sync breaks (BreakScorer) ------------------------------------------------------------
        self.pairs_scored = Counter(
            "engine_pairs_scored", "Record pairs scored by the break model.", registry=r
        )
        self.pair_breaks = Counter(
            "engine_pair_breaks",
            "Record pairs flagged as breaks (break score >= the bundle's threshold), by break class.",
            ["break_class"],
            registry=r,
        )
        for cls in BREAK_CLASSES:
            self.pair_breaks.labels(cls)
        self.events_published = Counter(
            "engine_events_published",
            "Break events the broker confirmed (at least once: a crash may repeat a few).",
            registry=r,
        )
        self.event_publish_failures = Counter(
            "engine_event_publish_failures",
            "Times the outbox publisher lost or could not reach the broker (it retries).",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "engine_outbox_pending",
            "Break events waiting in the flag store for the broker.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.pair_inference = Histogram(
            "engine_pair_inference_seconds",
            "ONNX Runtime time per batch of record pairs.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # -- the HTTP/JSON front door (engine.http) -----------------------------------------------
        self.http_requests = Counter(
            "http_server_requests",
            "HTTP requests answered by the REST/JSON front door, by method, route (its template) and "
            "HTTP status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "http_server_request_duration_seconds",
            "Time from an HTTP request's arrival at the app to its answer, by method and route.",
            ["method", "route"],
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self._http_routes: dict[tuple[str, str], tuple[Callable[[float], None], dict[int, Any]]] = {}

    # -- model ---------------------------------------------------------------------------------

    def set_model(self, name: str, version: str, loaded_at: float) -> None:
        """Mark the model now serving; the one it replaces goes to 0."""
        if self._model_labels is not None:
            # in multiprocess mode a removed child stays in the worker's file: zero it first
            self.model_info.labels(*self._model_labels).set(0)
            self.model_info.remove(*self._model_labels)
        self._model_labels = (name, version, f"{loaded_at:.0f}")
        self.model_info.labels(*self._model_labels).set(1)

    def _edges(self, band_edges: npt.NDArray[np.float64]) -> list[float]:
        """`band_edges` as a list (the serving model's, converted once per model)."""
        seen, edges = self._edges_seen
        if seen is not band_edges:
            edges = band_edges.tolist()
            self._edges_seen = (band_edges, edges)
        return edges

    def observe_kernels(self) -> None:
        """engine_kernels_loaded / engine_kernels_compiled as of now (the server calls it once it serves,
        and after each reload; with one process they follow every compile from then on)."""
        loaded, compiled_ = jit.compile_counts()
        self.kernels_loaded.set(loaded)
        self.kernels_compiled.set(compiled_)
        if not self._multiprocess:
            self.kernels_loaded.set_function(lambda: float(jit.compile_counts()[0]))
            self.kernels_compiled.set_function(lambda: float(jit.compile_counts()[1]))

    def batches_run(self) -> float:
        """Model calls the micro-batcher made so far, both lanes together."""
        return float(sum(self.batches.labels(lane)._value.get() for lane in BATCH_LANES))

    def observe_queue(self, depth: int, waited: float) -> None:
        """A batch taken off the queue: the trades left waiting, and how long its oldest waited."""
        self._queue_depth(depth)
        self._queue_wait(waited)

    def observe_batch(self, lane: str, rows: int, seconds: float) -> None:
        """One model call of the micro-batcher: its lane, size and time."""
        self._batches[lane](1)
        self._batch_size(rows)
        self._inference(seconds)
        self._rows_scored(rows)

    def observe_scores(
        self, probabilities: npt.NDArray[np.float32], band_edges: npt.NDArray[np.float64]
    ) -> None:
        """One batch's scores: the score histogram and the risk-band counters (bands as
        `RiskBands.assign` with thresholds `band_edges`), counted in one compiled pass; a batch
        of one or two (a lone caller's) by a binary search each, without the compiled call's
        fixed cost."""
        n = probabilities.size
        if n == 0:
            return
        if n <= 2:
            for p in probabilities.tolist():
                if p == p:
                    self._score_bucket[bisect_left(SCORE_BUCKETS, p)](1)
                    self._bands[bisect_right(self._edges(band_edges), p)](1)  # as band_of
                else:  # NaN: the +Inf bucket and the top band, as the compiled count does
                    self._score_bucket[-1](1)
                    self._bands[-1](1)
                self._score_sum(p)
            return
        counts = np.zeros(len(SCORE_BUCKETS) + 1 + len(RISK_BANDS), dtype=np.int64)
        total = _score_counts(probabilities, _SCORE_EDGES, band_edges, counts)
        tally = counts.tolist()
        _observe_counts(self.score, tally[: len(SCORE_BUCKETS) + 1], total)
        for inc, n in zip(self._bands, tally[len(SCORE_BUCKETS) + 1 :], strict=True):
            if n:
                inc(n)

    # -- HTTP ----------------------------------------------------------------------------------

    def http_route(self, method: str, route: str) -> tuple[Callable[[float], None], dict[int, Any]]:
        """The duration observer of one route, and its counters' `inc` by status (filled by the caller)."""
        key = (method, route)
        bound = self._http_routes.get(key)
        if bound is None:
            bound = (raw_observe(self.http_duration.labels(method, route)), {})
            self._http_routes[key] = bound
        return bound

    # -- gRPC ----------------------------------------------------------------------------------

    def count_rejection(self, code: grpc.StatusCode) -> None:
        """engine_rejected_calls_total{reason} for a call or stream message refused with `code`
        (codes that are no refusal before inference, e.g. INTERNAL, are not counted)."""
        reason = REJECT_REASON_BY_CODE.get(code)
        if reason is not None:
            self.rejected.labels(reason).inc()

    def grpc_method(self, service: str, method: str, grpc_type: str) -> GrpcMethodMetrics:
        """The label children of one method, created (at 0 for every code) on first use."""
        key = (grpc_type, service, method)
        bound = self._grpc_methods.get(key)
        if bound is None:
            bound = GrpcMethodMetrics(
                started=raw_inc(self.grpc_started.labels(*key)),
                msg_received=raw_inc(self.grpc_msg_received.labels(*key)),
                msg_sent=raw_inc(self.grpc_msg_sent.labels(*key)),
                handling=raw_observe(self.grpc_handling.labels(*key)),
                handled={c: raw_inc(self.grpc_handled.labels(*key, n)) for c, n in GRPC_CODE_NAMES.items()},
            )
            self._grpc_methods[key] = bound
        return bound


# -- multiprocess mode (--workers N) ---------------------------------------------------------------

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MultiprocessMetrics:
    """The parent's side of `--workers N`: the shared directory, one /metrics, dead workers' files.

    `prepare()` must run before the workers start: they read `PROMETHEUS_MULTIPROC_DIR`
    when they import prometheus-client. A directory given in that variable is used
    (its `*.db` files from an earlier run are removed, as prometheus-client asks);
    otherwise a private temporary one is made and removed when the process exits.
    """

    def __init__(self) -> None:
        self.path = ""
        self._owned = False

    def prepare(self) -> str:
        given = os.environ.get(MULTIPROC_ENV)
        if given:
            os.makedirs(given, exist_ok=True)
            for stale in glob.glob(os.path.join(given, "*.db")):
                os.remove(stale)
            self.path = given
        else:
            self.path = tempfile.mkdtemp(prefix="engine-metrics-")
            self._owned = True
            os.environ[MULTIPROC_ENV] = self.path
            atexit.register(self.close)
        return self.path

    def registry(self) -> CollectorRegistry:
        """A registry that merges every worker's files at each scrape."""
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        return registry

    def worker_exited(self, pid: int) -> None:
        """Drop a dead worker's live gauges (in-flight, queue depth, model info); its counters stay."""
        multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def grpc_service_methods(services: Iterable[Any]) -> Iterable[tuple[str, str, str]]:
    """(service, method, grpc_type) for every method of protobuf `ServiceDescriptor`s."""
    for service in services:
        for method in service.methods:
            kind = GRPC_TYPES[(method.client_streaming, method.server_streaming)]
            yield service.full_name, method.name, kind
