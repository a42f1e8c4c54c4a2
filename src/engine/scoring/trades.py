"""TradeScorer servicer: request bytes -> decode + validate + features -> micro-batch -> response bytes.

`Score` and `ScoreStream` take and return serialized messages (their method
handlers have no (de)serializers): `engine.scoring.wire` decodes the request
bytes straight into feature rows and writes the response bytes, so no
protobuf object is built per trade on the hot path. Everything per call runs
on the event loop in compiled code (tens of microseconds for 256 trades); the
batched ONNX Runtime call runs off it, in the micro-batcher's thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.admission import ScoringCalls
from engine.batching import MicroBatcher
from engine.errors import EngineError, MalformedRequest, NoExplainer
from engine.metrics import EngineMetrics, size_class
from engine.models.registry import ModelRegistry
from engine.models.spec import BAND_NAMES
from engine.scoring.reasons import reasons_bytes
from engine.scoring.response import response_bytes
from engine.scoring.servable import ServingModel, TradeExplainer, explain_threshold
from engine.scoring.streams import pipelined, request_error
from engine.scoring.wire import WireRequest, prepare_request, trade_count

SERVICE = pb.DESCRIPTOR.services_by_name["TradeScorer"].full_name
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Prepared:
    model: ServingModel
    request: WireRequest
    features: F32
    scores: asyncio.Future[F32]
    deadline: float | None
    started: float  # time.perf_counter() when the request's bytes were taken up


class TradeScorerService:
    def __init__(
        self,
        registry: ModelRegistry[ServingModel],
        batcher: MicroBatcher[ServingModel, F32],
        metrics: EngineMetrics,
        calls: ScoringCalls,
        *,
        max_trades_per_request: int,
        stream_window: int,
        explain_batcher: MicroBatcher[TradeExplainer, F32] | None = None,
        explain_band: str = "HIGH",
    ) -> None:
        self._registry = registry
        self._batcher = batcher
        self._metrics = metrics
        self._calls = calls
        self._max_trades = max_trades_per_request
        self._stream_window = stream_window
        self._explainer = explain_batcher
        self._explain_band = explain_band
        self._threshold: tuple[ServingModel | None, float] = (None, float("inf"))
        self._call_time = metrics.call_time["Score"]
        self._message_time = metrics.call_time["ScoreStream"]

    # -- shared steps ------------------------------------------------------------

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The service's method handlers: Score and ScoreStream exchange raw bytes."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Score": grpc.unary_unary_rpc_method_handler(self.Score),
                "ScoreStream": grpc.stream_stream_rpc_method_handler(self.ScoreStream),
                "GetModelInfo": grpc.unary_unary_rpc_method_handler(
                    self.GetModelInfo,
                    request_deserializer=pb.GetModelInfoRequest.FromString,
                    response_serializer=pb.ModelInfo.SerializeToString,
                ),
            },
        )

    def _prepare(self, raw: bytes, deadline: float | None) -> _Prepared:
        """Decode, validate, compute features and queue one request; EngineError before queueing."""
        started = time.perf_counter()
        model = self._registry.current
        if self._batcher.room < self._max_trades:
            # near full: a call the queue has no room for is refused before its trades are decoded,
            # so that shedding costs a scan of the request's top level, not its whole request path
            # (with room for the largest call, every call fits: no scan)
            n = trade_count(raw)
            if n > 0:
                self._batcher.check_room(n)
        # counts the trades before decoding any; one compiled call for decode + validate + features
        request, features = prepare_request(raw, model.wire, model.plan, self._max_trades)
        if request.explain == pb.EXPLAIN_ALL and (model.explainer is None or self._explainer is None):
            raise NoExplainer(
                f"explain: model {model.name} {model.version} carries no LightGBM model text "
                "(model.lgb.txt) to explain its scores"
            )
        future = self._batcher.submit(model, features, deadline)
        return _Prepared(model, request, features, future, deadline, started)

    def _explain_from(self, model: ServingModel) -> float:
        """The lowest failure probability the server's --explain-band explains, for `model`."""
        seen, threshold = self._threshold
        if seen is not model:
            threshold = float(explain_threshold(self._explain_band, model.band_edges))
            self._threshold = (model, threshold)
        return threshold

    async def _respond(self, prepared: _Prepared, probabilities: F32) -> bytes:
        """The response bytes: scores from the compiled encoder, then the reasons of the trades
        that get them (a ScoreResponse holding only `reasons`, appended: protobuf merges them)."""
        model = prepared.model
        out = response_bytes(
            prepared.request, probabilities, model.band_edges, model.name_bytes, model.version_bytes
        )
        explainer = model.explainer
        explain = prepared.request.explain
        if explainer is None or self._explainer is None or explain == pb.EXPLAIN_NONE:
            return out
        if explain == pb.EXPLAIN_ALL:
            rows = np.arange(len(probabilities))
        else:
            threshold = self._explain_from(model)
            if len(probabilities) == 1:  # a lone trade: no array operation to find nothing
                if not float(probabilities[0]) >= threshold:
                    return out
                rows = np.zeros(1, dtype=np.intp)
            else:
                rows = np.flatnonzero(probabilities >= threshold)
                if rows.size == 0:
                    return out
        features = prepared.features[rows]
        contributions = await self._explainer.submit(explainer, features, prepared.deadline)
        self._metrics.trades_explained.inc(len(rows))
        return out + reasons_bytes(
            prepared.request,
            rows,
            features,
            contributions,
            explainer.fields,
            explainer.shap.bias,
        )

    def _count_reject(self, error: EngineError, method: str = "Score") -> None:
        self._metrics.count_rejection(error.code)
        if isinstance(error, MalformedRequest):
            self._metrics.malformed_requests.labels(SERVICE, method).inc()

    # -- RPCs ----------------------------------------------------------------------

    async def Score(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return await self._calls.unary(context, lambda deadline: self.score_bytes(request, deadline))

    async def ScoreStream(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """Pipelined: reads ahead up to `stream_window` requests, answers in request order."""

        async def answer(raw: bytes, prepared: _Prepared) -> bytes:
            out = await self._respond(prepared, await prepared.scores)
            self._message_time[size_class(len(prepared.features))](time.perf_counter() - prepared.started)
            return out

        def refused(raw: bytes, exc: EngineError) -> bytes:
            return pb.ScoreResponse(request_id=_request_id(raw), error=request_error(exc)).SerializeToString()

        async with self._calls.stream(context):
            async for out in pipelined(
                request_iterator,
                prepare=lambda raw: self._prepare(raw, None),
                answer=answer,
                refused=refused,
                count_refusal=lambda exc: self._count_reject(exc, "ScoreStream"),
                drop=lambda prepared: prepared.scores.cancel(),
                window=self._stream_window,
            ):
                yield out

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInfo:
        return model_info(self._registry.current)

    # -- other front doors (engine.http) ----------------------------------------------------

    async def score_bytes(self, raw: bytes, deadline: float | None) -> bytes:
        """`Score` without gRPC: ScoreRequest bytes in, ScoreResponse bytes out, by the same path
        (decode, validate, micro-batch, encode, reasons) and metrics; EngineError (counted in
        engine_rejected_calls_total) when refused. Admission (`ScoringCalls`) is the caller's."""
        prepared: _Prepared | None = None
        try:
            prepared = self._prepare(raw, deadline)
            return await self._respond(prepared, await prepared.scores)
        except EngineError as exc:
            self._count_reject(exc)
            raise
        finally:
            if prepared is not None:
                self._call_time[size_class(len(prepared.features))](time.perf_counter() - prepared.started)


def _request_id(raw: bytes) -> str:
    """The request_id of a refused stream message, if its bytes parse at all (the error path only)."""
    try:
        return pb.ScoreRequest.FromString(raw).request_id
    except DecodeError:
        return ""


def model_info(model: ServingModel) -> pb.ModelInfo:
    m = model.bundle.manifest
    info = pb.ModelInfo(
        name=m.name,
        version=m.version,
        content_hash=m.content_hash,
        parity_max_abs_diff=float(m.parity.get("max_abs_diff", float("nan"))),
        parity_rows=int(m.parity.get("rows", 0)),
        manifest_json=json.dumps(m.raw, sort_keys=True),
        backend=model.backend,
    )
    info.created_at.FromSeconds(int(m.created_at_unix()))
    info.loaded_at.FromNanoseconds(int(model.loaded_at * 1e9))
    for f in m.features.features:
        info.features.add(
            name=f.name, dtype=f.dtype, kind=f.kind, categories=f.categories, description=f.description
        )
    for name, threshold in zip(BAND_NAMES[1:], m.risk_bands.thresholds, strict=True):
        info.risk_bands.add(band=pb.RiskBand.Value(f"RISK_BAND_{name}"), min_probability=threshold)
    info.metrics.update({k: v for k, v in m.metrics.items() if np.isfinite(v)})
    return info
