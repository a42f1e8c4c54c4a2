"""Admission of scoring calls: the concurrency limit, the in-flight gauge and the drain signal.

Scoring calls (TradeScorer `Score` and `ScoreStream`, Open Inference Protocol
`ModelInfer`; a stream counts as one) share one limit, `--max-concurrent-rpcs`.
Beyond it a call ends at once with RESOURCE_EXHAUSTED, before the engine
decodes or queues any of it (gRPC has already parsed a ModelInfer request), and
is counted in `engine_rejected_calls_total{reason="overload"}` and in the gRPC
server metrics.

Health checks, reflection and metadata calls are not scoring calls: gRPC's
own limit is set `engine.config.CONTROL_HEADROOM` calls above the scoring limit, so an
overloaded engine still answers the kubelet's probes (had gRPC's limit alone
been the scoring limit, a probe arriving at a full engine would be refused
like any call, and Kubernetes would take an overloaded pod for a dead one).
gRPC's limit still refuses everything beyond that, before any handler runs,
so no call waits in gRPC's own pending queue.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import grpc

from engine.metrics import EngineMetrics


class ScoringCalls:
    """The scoring calls in progress, shared by the TradeScorer and Open Inference Protocol services."""

    def __init__(self, limit: int, metrics: EngineMetrics) -> None:
        self.limit = limit
        self._metrics = metrics
        self._gauge = metrics.inflight_calls
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        return self._active

    def enter(self) -> bool:
        """Count one call in; False (nothing counted) when `limit` calls are already in progress."""
        if self._active >= self.limit:
            return False
        self._active += 1
        self._idle.clear()
        self._gauge.inc()
        return True

    def leave(self) -> None:
        """Count out a call that `enter` let in."""
        self._active -= 1
        self._gauge.dec()
        if self._active == 0:
            self._idle.set()

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        """End a call `enter` turned away: RESOURCE_EXHAUSTED, counted as an overload rejection."""
        self._metrics.rejected.labels("overload").inc()
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many scoring calls in progress (limit {self.limit}); retry later",
        )
        raise AssertionError("context.abort returned")  # it raises; this keeps the type checker honest

    async def wait_idle(self) -> None:
        """Return once no scoring call is in progress."""
        await self._idle.wait()
