"""grpc.aio wiring: servicers, health, reflection, signals, worker processes.

Shutdown (SIGTERM / SIGINT): health goes NOT_SERVING for every service, the
server stops accepting calls, in-flight calls get `grace_seconds` to finish
(the micro-batcher keeps running for them), then the batcher drains and the
process exits 0. SIGHUP reloads the model bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from engine import jit
from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.admission import ScoringCalls
from engine.batching import MicroBatcher, concat_matrices
from engine.config import CONTROL_HEADROOM, Settings
from engine.events import OutboxPublisher
from engine.flag_store import FlagStore, ensure_schema, parse_store
from engine.http.server import HttpServer, http_front_door
from engine.interceptors import MalformedRequestInterceptor, MetricsInterceptor
from engine.metrics import EngineMetrics, MultiprocessMetrics
from engine.models.registry import ModelRegistry
from engine.scoring.oip import SERVICE as OIP_SERVICE
from engine.scoring.oip import InferenceService, reflection_pool
from engine.scoring.pairs import SERVICE as BREAK_SERVICE
from engine.scoring.pairs import BreakScorerService
from engine.scoring.servable import PairModel, ServingModel, TradeExplainer, load_serving_model
from engine.scoring.trades import SERVICE as SCORER_SERVICE
from engine.scoring.trades import TradeScorerService
from engine.security import BearerTokens, CertificateFiles, TokenAuthInterceptor

log = logging.getLogger(__name__)

#: after the last scoring call, how long other calls (health watches) may still run at shutdown
FLUSH_SECONDS = 1.0


#: services whose gRPC metrics exist (at 0) from the start
METERED_SERVICES = (
    pb.DESCRIPTOR.services_by_name["TradeScorer"],
    pb.DESCRIPTOR.services_by_name["BreakScorer"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)
#: what needs no bearer token (probes, tools listing the services): method-name prefixes
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _predict_with_metrics(
    metrics: EngineMetrics,
) -> Callable[[ServingModel, npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    """`ServingModel.predict` that also records the batch's score distribution (in the inference thread)."""

    def predict(model: ServingModel, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        probabilities = model.predict(features)
        metrics.observe_scores(probabilities, model.band_edges)
        return probabilities

    return predict


def _predict_pairs_with_metrics(
    metrics: EngineMetrics,
) -> Callable[[PairModel, npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    """`PairModel.predict`, timed into engine_pair_inference_seconds (in the pair batcher's thread)."""

    def predict(model: PairModel, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        started = time.perf_counter()
        scores = model.predict(features)
        metrics.pair_inference.observe(time.perf_counter() - started)
        return scores

    return predict


def _explain_with_metrics(
    metrics: EngineMetrics,
) -> Callable[[TradeExplainer, npt.NDArray[np.float32]], npt.NDArray[np.float64]]:
    """`TreeExplainer.contributions`, timed into engine_explain_seconds (in the explain-0 thread)."""

    def explain(explainer: TradeExplainer, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        started = time.perf_counter()
        contributions = explainer.shap.contributions(features)
        metrics.explain_seconds.observe(time.perf_counter() - started)
        return contributions

    return explain


def freeze_heap() -> None:
    """Move everything alive now (modules, the model, its tables) out of the garbage collector's sight.

    A full collection walks every tracked object (over a hundred thousand after start-up),
    and it used to land in the middle of calls, multiplying the p99 of single-trade calls
    (docs/design-figures.md). Frozen objects
    are never scanned; what calls allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


class EngineServer:
    """One engine process: a gRPC server, its model registry and its micro-batcher."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = EngineMetrics(registry)
        threads, backend = settings.intra_op_threads, settings.model_backend
        self.models: ModelRegistry[ServingModel] = ModelRegistry(
            settings.bundle,
            lambda path: load_serving_model(path, threads, backend),
            on_swap=self._swapped,
            on_outcome=lambda ok: self.metrics.model_reloads.labels("success" if ok else "failure").inc(),
        )
        self.batcher: MicroBatcher[ServingModel, npt.NDArray[np.float32]] | None = None
        self.pair_batcher: MicroBatcher[PairModel, npt.NDArray[np.float32]] | None = None
        self.explain_batcher: MicroBatcher[TradeExplainer, npt.NDArray[np.float32]] | None = None
        self.health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.scorer: TradeScorerService | None = None
        self.oip: InferenceService | None = None
        self.breaks: BreakScorerService | None = None
        self.flags: FlagStore | None = None
        self.publisher: OutboxPublisher | None = None
        self.calls: ScoringCalls | None = None
        self.certificates: CertificateFiles | None = None
        self._probe: grpc.aio.Server | None = None
        self.http: HttpServer | None = None
        self.malformed: MalformedRequestInterceptor | None = None
        self.port = 0
        self.probe_port = 0
        self.http_port = 0

    def _swapped(self, model: ServingModel) -> None:
        self.metrics.set_model(model.name, model.version, model.loaded_at)
        self.metrics.observe_kernels()
        freeze_heap()

    async def start(self) -> int:
        """Load the model, bind, start serving; returns the bound port."""
        s = self.settings
        # certificates and tokens first: unusable ones stop the start before anything runs
        tokens = BearerTokens(Path(s.auth_tokens_file)) if s.auth_tokens_file else None
        if s.tls_cert:
            self.certificates = CertificateFiles(
                Path(s.tls_cert),
                Path(s.tls_key),
                Path(s.tls_client_ca) if s.tls_client_ca else None,
                self.metrics,
            )
        model = self.models.load_initial()
        log.info(
            "model %s %s loaded from %s (backend %s)", model.name, model.version, s.bundle, model.backend
        )
        self.batcher = MicroBatcher(
            _predict_with_metrics(self.metrics),
            concat_matrices,
            max_batch_rows=s.max_batch_rows,
            max_wait_s=s.max_wait_s,
            inline_rows=s.inline_rows,
            max_queue_rows=s.max_queue_rows,
            max_inflight_batches=s.max_inflight_batches,
            coalesce=s.batching,
            metrics=self.metrics,
        )
        self.batcher.start()
        # record pairs get a batcher (and inference thread) of their own: a reconciliation job's
        # thousand-pair requests never queue in front of single-trade calls
        self.pair_batcher = MicroBatcher(
            _predict_pairs_with_metrics(self.metrics),
            concat_matrices,
            max_batch_rows=s.max_batch_rows,
            max_wait_s=s.max_wait_s,
            inline_rows=s.inline_rows,
            max_queue_rows=s.max_queue_rows,
            max_inflight_batches=1,
            coalesce=s.batching,
            thread_name="pairs",
        )
        self.pair_batcher.start()
        # trade reasons (TreeSHAP, the costliest per-trade work: docs/design-figures.md) run in a
        # thread of their own, so that
        # explaining one call's flagged trades never delays another call's scores; it takes
        # whatever queued while it worked (no wait: batching saves nothing per explained trade)
        self.explain_batcher = MicroBatcher(
            _explain_with_metrics(self.metrics),
            concat_matrices,
            max_batch_rows=s.max_batch_rows,
            max_wait_s=0.0,
            max_queue_rows=s.max_queue_rows,
            max_inflight_batches=1,
            thread_name="explain",
        )
        self.explain_batcher.start()
        store = parse_store(s.flag_store)
        if store is not None:
            self.flags = FlagStore(store)
            self.flags.start()
            log.info("flag store: %s", store)
            if s.events_url and s.workers == 1:  # with workers, the parent process publishes (run())
                self.publisher = OutboxPublisher(store, s.events_url, s.events_exchange, metrics=self.metrics)
                self.flags.on_commit = self.publisher.wake
                self.publisher.start()
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            # keepalive: ping a connection whose calls have been quiet for keepalive_time; no answer
            # within keepalive_timeout closes it and cancels its calls (a client that vanished
            # without closing its streams frees what they held); pings go on for as long as calls
            # are open. Clients may ping at most every min_client_ping_interval: the second ping
            # too early gets GOAWAY too_many_pings
            ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
            # gRPC core (1.6x on) times a keepalive ping with the ping timeout (default 1 minute)
            ("grpc.http2.ping_timeout_ms", int(s.keepalive_timeout_s * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", int(s.min_client_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            # workers share the port on purpose; a lone server must fail loudly on a taken port
            ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
        ]
        if s.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_s * 1000)),
            ]
        # scoring calls beyond max_concurrent_rpcs are refused by ScoringCalls; gRPC's own limit,
        # CONTROL_HEADROOM above it, keeps probes answering then, and refuses any call beyond it
        # before it waits in gRPC's pending queue (which would otherwise end in CANCELLED)
        self.calls = ScoringCalls(s.max_concurrent_rpcs, self.metrics, s.max_streams_per_connection)
        interceptors: list[Any] = [MetricsInterceptor(self.metrics, METERED_SERVICES)]
        if tokens is not None:  # inside the metrics one: refused calls are counted (Unauthenticated)
            interceptors.append(TokenAuthInterceptor(tokens, OPEN_SERVICES))
        # innermost: a request that does not parse is INVALID_ARGUMENT (counted), on every method
        self.malformed = MalformedRequestInterceptor(self.metrics)
        interceptors.append(self.malformed)
        server = grpc.aio.server(
            options=options,
            maximum_concurrent_rpcs=s.max_concurrent_rpcs + CONTROL_HEADROOM,
            interceptors=interceptors,
        )
        self.scorer = TradeScorerService(
            self.models,
            self.batcher,
            self.metrics,
            self.calls,
            max_trades_per_request=s.max_trades_per_request,
            stream_window=s.stream_window,
            explain_batcher=self.explain_batcher,
            explain_band=s.explain_band.upper(),
        )
        self.oip = InferenceService(
            self.models, self.batcher, self.metrics, self.calls, max_rows_per_request=s.max_trades_per_request
        )
        self.breaks = BreakScorerService(
            self.models,
            self.pair_batcher,
            self.metrics,
            self.calls,
            max_pairs_per_request=s.max_trades_per_request,
            stream_window=s.stream_window,
            autonomy=s.autonomy,
            flags=self.flags,
            event_min_confidence=s.event_min_confidence,
        )
        server.add_generic_rpc_handlers((self.scorer.handlers(), self.oip.handlers(), self.breaks.handlers()))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflected = (
            SCORER_SERVICE,
            BREAK_SERVICE,
            OIP_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(reflected, server, pool=reflection_pool(reflected))
        if self.certificates is not None:
            self.port = server.add_secure_port(f"{s.host}:{s.port}", self.certificates.credentials())
        else:
            self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {s.host}:{s.port}")
        await server.start()
        self._server = server
        if s.probe_port:
            self._probe = await self._start_probe_server(reflected[-2:])
        if s.http_port:
            self.http = http_front_door(self, tokens)
            self.http_port = await self.http.start()
            log.info("REST/JSON front door on %s:%d", s.host, self.http_port)
        freeze_heap()
        for service in ("", SCORER_SERVICE, BREAK_SERVICE, OIP_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if s.watch:
            self._watcher = asyncio.get_running_loop().create_task(
                self.models.watch(s.watch_interval_s), name="bundle-watcher"
            )
        return self.port

    async def _start_probe_server(self, services: tuple[str, ...]) -> grpc.aio.Server:
        """Health checks and reflection, and nothing else, in plaintext on --probe-port."""
        s = self.settings
        probe = grpc.aio.server(
            options=[("grpc.so_reuseport", 1 if s.workers > 1 else 0)],
            maximum_concurrent_rpcs=CONTROL_HEADROOM,
            interceptors=[self.malformed or MalformedRequestInterceptor(self.metrics)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, probe)
        reflection.enable_server_reflection(services, probe)
        self.probe_port = probe.add_insecure_port(f"{s.host}:{s.probe_port}")
        if self.probe_port == 0:
            raise OSError(f"cannot bind {s.host}:{s.probe_port} (probe port)")
        await probe.start()
        return probe

    async def _calls_idle(self) -> None:
        """Return once no scoring call (TradeScorer, or OIP ModelInfer) is in progress."""
        if self.calls is not None:
            await self.calls.wait_idle()

    async def reload(self) -> bool:
        return await self.models.reload()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`."""
        grace = self.settings.grace_seconds if grace is None else grace
        started = time.monotonic()
        await self.health.enter_graceful_shutdown()
        http_stopping = asyncio.ensure_future(self.http.stop(grace)) if self.http is not None else None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._server is not None and self.scorer is not None:
            # stop(grace) refuses new calls at once and lets running ones finish; long-lived
            # calls that are not scoring (health Watch streams) would hold it for the whole
            # grace period, so once scoring is idle the rest gets at most FLUSH_SECONDS
            # (time for finished calls to send their responses)
            stopping = asyncio.ensure_future(self._server.stop(grace))
            idle = asyncio.ensure_future(self._calls_idle())
            await asyncio.wait((stopping, idle), return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                await self._server.stop(min(FLUSH_SECONDS, max(0.0, grace - (time.monotonic() - started))))
            idle.cancel()
            await stopping
        if http_stopping is not None:
            await http_stopping
        if self._probe is not None:  # probes saw NOT_SERVING while the gRPC port drained
            await self._probe.stop(0)
        for batcher in (self.batcher, self.explain_batcher, self.pair_batcher):
            if batcher is not None:
                await batcher.close(timeout=max(0.0, grace - (time.monotonic() - started)) + 1.0)
        if self.flags is not None:
            await self.flags.close()  # after the last call that could record a flag
        if self.publisher is not None:  # what it has not sent waits in the store for the next start
            await asyncio.get_running_loop().run_in_executor(None, self.publisher.stop)
        log.info("stopped after draining for %.2fs", time.monotonic() - started)


def process_age() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere since engine.server was imported)."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


async def serve(settings: Settings) -> int:
    """Run one engine process until SIGTERM/SIGINT; returns the exit code."""
    if jit.CACHE_STATE == "empty":
        log.info(
            "compiling the engine's kernels: none compiled yet for this build and CPU in %s "
            "(10-20 s, once; `engine compile` does it ahead)",
            jit.CACHE_DIR,
        )
    engine = EngineServer(settings)
    if settings.metrics_port and settings.workers == 1:
        start_http_server(settings.metrics_port, registry=engine.metrics.registry)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(engine.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    port = await engine.start()
    # signal handlers are in place before this line: a supervisor may act on it at once
    hits, misses = jit.compile_counts()
    log.info(
        "serving %s on %s:%d (pid %d), %.2f s after the process started; kernels: %d from the "
        "cache, %d compiled (%s)",
        SCORER_SERVICE,
        settings.host,
        port,
        os.getpid(),
        process_age(),
        hits,
        misses,
        jit.describe(),
    )
    await stop.wait()
    log.info("shutdown requested: draining for up to %.1fs", settings.grace_seconds)
    await engine.stop()
    return 0


def run_loop(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    """Run `main` to completion on the event loop `settings.event_loop` names.

    uvloop runs the loop itself (polling, timers, callbacks, wake-ups from the
    inference threads) in C; with asyncio's loop that bookkeeping is Python, and
    gRPC's own events, a dozen loop iterations per call, pay for it.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.event_loop == "uvloop":
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _worker(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker-{os.getpid()} %(name)s: %(message)s",
    )
    raise SystemExit(run_loop(settings, serve(settings)))


def run(settings: Settings) -> int:
    """Serve with `settings.workers` processes (one: in this process)."""
    if settings.workers == 1:
        return run_loop(settings, serve(settings))
    shared_metrics = MultiprocessMetrics()
    if settings.metrics_port:
        # before the workers start: they read PROMETHEUS_MULTIPROC_DIR when they import prometheus-client
        shared_metrics.prepare()
        start_http_server(settings.metrics_port, registry=shared_metrics.registry())
    # spawn, not fork: no gRPC or ONNX Runtime state may cross into the workers
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_worker, args=(settings,), name=f"engine-worker-{i}")
        for i in range(settings.workers)
    ]
    for w in workers:
        w.start()
    publisher: OutboxPublisher | None = None
    store = parse_store(settings.flag_store)
    if settings.events_url and store is not None:
        # one publisher for the workers' shared flag store: the workers' flags wait there until it
        # reads them (it looks every second), so no two processes publish the same rows
        ensure_schema(store)  # before the first read
        # (its metrics would not reach the workers' shared /metrics: the parent writes none)
        publisher = OutboxPublisher(store, settings.events_url, settings.events_exchange)
        publisher.start()
    stopping = False

    def forward(sig: int, _frame: Any) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("started %d workers on port %d: %s", len(workers), settings.port, [w.pid for w in workers])
    code = 0
    while workers:
        for w in list(workers):
            w.join(timeout=0.2)
            if w.exitcode is None:
                continue
            workers.remove(w)
            if settings.metrics_port and w.pid is not None:
                shared_metrics.worker_exited(w.pid)
            if w.exitcode != 0:
                code = 1
                log.error("worker %s exited with %s", w.pid, w.exitcode)
                if not stopping:
                    stopping = True  # one worker died: stop the rest rather than serve degraded silently
                    forward(signal.SIGTERM, None)
    if publisher is not None:
        publisher.stop()
    return code
