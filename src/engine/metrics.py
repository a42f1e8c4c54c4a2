"""Every Prometheus metric the engine exports, defined in this one place.

Metrics live in an injected `CollectorRegistry` (tests make a fresh one) and
are observed per batch, not per trade, so the hot path pays a handful of
observations per ONNX Runtime call. Buckets start at 10 µs: the usual Python
defaults start at 5 ms and would see nothing of a sub-millisecond engine.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
#: trades per batch
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

REJECT_REASONS = ("overload", "deadline", "invalid", "shutdown")


class EngineMetrics:
    """The engine's own metrics (gRPC server metrics come with the interceptor)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rows_scored = Counter("engine_rows_scored", "Trades scored by the model.", registry=r)
        self.batches = Counter("engine_batches", "ONNX Runtime calls made by the micro-batcher.", registry=r)
        self.batch_size = Histogram(
            "engine_batch_size", "Trades per ONNX Runtime call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("engine_queue_depth", "Trades waiting for a batch.", registry=r)
        self.inflight_calls = Gauge("engine_inflight_calls", "Calls being handled.", registry=r)
        self.queue_wait = Histogram(
            "engine_queue_wait_seconds",
            "Time the oldest trade of each batch waited before inference.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "engine_inference_seconds", "ONNX Runtime time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter(
            "engine_rejected_calls", "Calls refused before inference, by reason.", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.batch_failures = Counter("engine_batch_failures", "Batches whose inference raised.", registry=r)
        self.model_info = Gauge(
            "engine_model_info",
            "The model serving (value 1), with the unix time it was loaded.",
            ["name", "version", "loaded_at"],
            registry=r,
        )
        self.model_reloads = Counter(
            "engine_model_reloads", "Bundle reload attempts by outcome.", ["outcome"], registry=r
        )
        for outcome in ("success", "failure"):
            self.model_reloads.labels(outcome)

    def set_model(self, name: str, version: str, loaded_at: float) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, f"{loaded_at:.0f}").set(1)
