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

Streams (`ScoreStream`, `ScorePairsStream`) live long and each holds a read-ahead
window: one client connection may hold at most `--max-streams-per-connection`
of them open (a connection is gRPC's `context.peer()`, its address and port);
beyond it the new stream ends at once with RESOURCE_EXHAUSTED, counted like any
overload refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from engine.errors import EngineError
from engine.metrics import EngineMetrics

T = TypeVar("T")


def deadline_of(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The call's deadline on the `time.monotonic()` clock (None: the client set none)."""
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


class ScoringCalls:
    """The scoring calls in progress, shared by the TradeScorer and Open Inference Protocol services."""

    def __init__(self, limit: int, metrics: EngineMetrics, streams_per_connection: int = 100) -> None:
        self.limit = limit
        self.streams_per_connection = streams_per_connection
        self._streams: dict[str, int] = {}  # open streams per client connection (peer)
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

    async def unary(
        self, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[float | None], Awaitable[T]]
    ) -> T:
        """One unary scoring call (Score, ScorePairs, ModelInfer): `await call(deadline)` once admitted.

        Beyond the limit the call ends at once with RESOURCE_EXHAUSTED (counted); an
        EngineError from `call` ends it with that error's status and client message
        (`call` counts its own refusals: the REST front door runs the same `call`).
        """
        if not self.enter():
            await self.refuse(context)
        try:
            return await call(deadline_of(context))
        except EngineError as exc:
            await context.abort(exc.code, exc.client_message())
            raise AssertionError("context.abort returned") from exc
        finally:
            self.leave()

    @contextlib.asynccontextmanager
    async def stream(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Admission of one stream for its whole life (ScoreStream, ScorePairsStream).

        Refused at once with RESOURCE_EXHAUSTED when its connection already holds
        `streams_per_connection` streams or the engine `limit` calls; otherwise counted in, and out
        again however the stream ends (finished, failed, cancelled, its connection gone).
        """
        peer = context.peer()
        open_here = self._streams.get(peer, 0)
        if open_here >= self.streams_per_connection:
            await self.refuse(
                context,
                f"too many streams open on this connection (limit {self.streams_per_connection}); "
                "close one or open another connection",
            )
        if not self.enter():
            await self.refuse(context)
        self._streams[peer] = open_here + 1
        try:
            yield
        finally:
            left = self._streams[peer] - 1
            if left:
                self._streams[peer] = left
            else:
                del self._streams[peer]
            self.leave()

    def busy_message(self) -> str:
        """What a call refused at the limit is told (gRPC and HTTP alike)."""
        return f"too many scoring calls in progress (limit {self.limit}); retry later"

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any], why: str | None = None) -> NoReturn:
        """End a call turned away: RESOURCE_EXHAUSTED, counted as an overload rejection."""
        self._metrics.rejected.labels("overload").inc()
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why or self.busy_message())
        raise AssertionError("context.abort returned")  # it raises; this keeps the type checker honest

    async def wait_idle(self) -> None:
        """Return once no scoring call is in progress."""
        await self._idle.wait()
