"""BreakScorer servicer: record pairs -> features -> micro-batched anomaly model -> break scores.

Pairs arrive as `ScorePairsRequest` messages (reconciliation jobs send
hundreds at a time; per pair, reading the fields is the only Python loop).
The features, break classes, believed side and reasons are computed on whole
columns (`engine.features.pairs`); the anomaly model runs in the pair
batcher's thread, a `MicroBatcher` of its own so that a reconciliation job's
large batches never queue in front of single-trade scoring.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.admission import ScoringCalls
from engine.batching import MicroBatcher
from engine.errors import EngineError, InvalidInput, NoFlagStore, NoPairModel
from engine.features.pairs import (
    FIELDS,
    PAIR_FEATURES,
    REASON_CODES,
    REASON_MIN_STRENGTH,
    SIDE_A,
    SIDE_NONE,
    PairColumns,
    PairFeatures,
    break_classes,
    likely_right,
    pair_features,
    top_reasons,
)
from engine.flag_store import MAX_NOTE_CHARS, Flag, FlagStore
from engine.labels import BREAK_CLASSES
from engine.metrics import EngineMetrics
from engine.models.registry import ModelRegistry
from engine.scoring.servable import PairModel, ServingModel
from engine.scoring.streams import pipelined, request_error

SERVICE = pb.DESCRIPTOR.services_by_name["BreakScorer"].full_name
F32 = npt.NDArray[np.float32]

#: reasons returned per flagged pair
REASONS_PER_BREAK = 3
#: the differing fields' names for each bit mask of FIELDS (bit k: FIELDS[k] differs)
_DIFFERENCES: tuple[tuple[str, ...], ...] = tuple(
    tuple(f for k, f in enumerate(FIELDS) if mask >> k & 1) for mask in range(1 << len(FIELDS))
)
#: engine_pair_breaks label of each BreakClass value
_CLASS_LABEL: dict[int, str] = {
    int(pb.BreakClass.Value(f"BREAK_CLASS_{name}")): name for name in BREAK_CLASSES
}


@dataclass(slots=True)
class _Prepared:
    model: ServingModel
    pairs: PairModel
    columns: PairColumns
    features: PairFeatures
    scores: asyncio.Future[F32]


def _view_value(columns: PairColumns, field: str, i: int, side: int) -> str:
    """The text of `field` of pair `i` on `side`, as a correction proposes it."""
    if field == "status":
        return columns.status[side][i]
    if field in ("quantity", "amount"):
        value = float((columns.quantity if field == "quantity" else columns.amount)[i, side])
        return "" if np.isnan(value) else repr(value)
    if field == "name":
        return columns.name[side][i]
    if field == "address":
        return columns.address[side][i]
    return "present"  # "record": the believed side has it


class BreakScorerService:
    def __init__(
        self,
        registry: ModelRegistry[ServingModel],
        batcher: MicroBatcher[PairModel, F32],
        metrics: EngineMetrics,
        calls: ScoringCalls,
        *,
        max_pairs_per_request: int,
        stream_window: int,
        autonomy: Mapping[str, tuple[str, float]],
        flags: FlagStore | None = None,
        event_min_confidence: float = 0.0,
    ) -> None:
        self._registry = registry
        self._flags = flags
        self._event_min_confidence = event_min_confidence
        # per BreakClass value: (AutonomyMode value, confidence an autonomous break needs)
        self._autonomy = np.zeros(max(_CLASS_LABEL) + 1, dtype=np.int32)
        self._auto_level = np.full(max(_CLASS_LABEL) + 1, np.inf)
        for value, label in _CLASS_LABEL.items():
            mode, level = autonomy[label]
            self._autonomy[value] = pb.AutonomyMode.Value(f"AUTONOMY_MODE_{mode.upper()}")
            if mode == "autonomous":
                self._auto_level[value] = level
        self._batcher = batcher
        self._metrics = metrics
        self._calls = calls
        self._max_pairs = max_pairs_per_request
        self._stream_window = stream_window

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ScorePairs": grpc.unary_unary_rpc_method_handler(
                    self.ScorePairs,
                    request_deserializer=pb.ScorePairsRequest.FromString,
                    response_serializer=pb.ScorePairsResponse.SerializeToString,
                ),
                "ScorePairsStream": grpc.stream_stream_rpc_method_handler(
                    self.ScorePairsStream,
                    request_deserializer=pb.ScorePairsRequest.FromString,
                    response_serializer=pb.ScorePairsResponse.SerializeToString,
                ),
                "SubmitFeedback": grpc.unary_unary_rpc_method_handler(
                    self.SubmitFeedback,
                    request_deserializer=pb.FeedbackRequest.FromString,
                    response_serializer=pb.FeedbackResponse.SerializeToString,
                ),
            },
        )

    # -- shared steps ------------------------------------------------------------------

    def _prepare(self, request: pb.ScorePairsRequest, deadline: float | None) -> _Prepared:
        model = self._registry.current
        pairs = model.pairs
        if pairs is None:
            raise NoPairModel(
                f"bundle {model.name} {model.version} has no sync-break model (manifest: pairs)"
            )
        n = len(request.pairs)
        if n == 0:
            raise InvalidInput("pairs", "at least one pair is required")
        if n > self._max_pairs:
            raise InvalidInput("pairs", f"{n} pairs in one request; at most {self._max_pairs}")
        columns = PairColumns.from_messages(request.pairs)
        features = pair_features(columns, pairs.stats)
        future = self._batcher.submit(pairs, features.matrix, deadline)
        return _Prepared(model, pairs, columns, features, future)

    def _respond(self, request_id: str, prepared: _Prepared, scores: F32) -> pb.ScorePairsResponse:
        columns, features = prepared.columns, prepared.features
        pairs = prepared.pairs
        flagged = scores >= pairs.threshold
        classes = break_classes(features.differs)
        sides, confidence = likely_right(
            features.matrix, features.differs, features.quantities, pairs.stats.log_amount_std
        )
        reason_idx, reason_strength = top_reasons(features.matrix, pairs.stats, REASONS_PER_BREAK)
        modes = self._autonomy[classes]
        auto = flagged & (confidence >= self._auto_level[classes])
        self._metrics.pairs_scored.inc(len(columns))
        for cls in np.unique(classes[flagged]):
            self._metrics.pair_breaks.labels(_CLASS_LABEL[int(cls)]).inc(int((classes[flagged] == cls).sum()))
        out = pb.ScorePairsResponse(
            request_id=request_id, model_name=prepared.model.name, model_version=pairs.version
        )
        # whole columns to Python values once: numpy scalar indexing per pair costs more than the message
        bits = features.differs.astype(np.int64) @ (1 << np.arange(len(FIELDS), dtype=np.int64))
        rows = zip(
            columns.keys,
            scores.tolist(),
            flagged.tolist(),
            classes.tolist(),
            bits.tolist(),
            sides.tolist(),
            confidence.tolist(),
            modes.tolist(),
            auto.tolist(),
            strict=True,
        )
        add = out.scores.add
        for i, (key, score_i, flag_i, cls_i, bits_i, side, conf_i, mode_i, auto_i) in enumerate(rows):
            score = add(
                key=key,
                break_score=score_i,
                is_break=flag_i,
                break_class=cls_i,
                differences=_DIFFERENCES[bits_i],
                likely_right=side,
                confidence=conf_i,
                autonomy=mode_i,
                auto_approvable=auto_i,
            )
            if side != SIDE_NONE and mode_i != pb.AUTONOMY_MODE_MONITOR:
                s = 0 if side == SIDE_A else 1
                source = columns.sources[s][i]
                for f in _DIFFERENCES[bits_i]:
                    score.corrections.add(field=f, value=_view_value(columns, f, i, s), source=source)
            if flag_i:
                for j, strength in zip(reason_idx[i].tolist(), reason_strength[i].tolist(), strict=True):
                    if strength >= REASON_MIN_STRENGTH:
                        score.reasons.add(
                            code=REASON_CODES[PAIR_FEATURES[j]],
                            value=float(features.matrix[i, j]),
                            contribution=strength,
                        )
        return out

    async def _answer(self, request_id: str, prepared: _Prepared, scores: F32) -> pb.ScorePairsResponse:
        """The response; with a flag store, its breaks get flag ids once they are recorded on disk."""
        out = self._respond(request_id, prepared, scores)
        if self._flags is None:
            return out
        columns, pairs = prepared.columns, prepared.pairs
        now = time.time()
        records: list[Flag] = []
        for i, score in enumerate(out.scores):
            if not score.is_break:
                continue
            score.flag_id = uuid.uuid4().hex
            event = {
                "event_id": score.flag_id,
                "type": "tradescore.sync_break.flagged",
                "created_at": now,
                "sources": [columns.sources[0][i], columns.sources[1][i]],
                "model": {"name": out.model_name, "version": out.model_version, "kind": pairs.kind},
                "pair": json_format.MessageToDict(score, preserving_proto_field_name=True),
            }
            records.append(
                Flag(
                    flag_id=score.flag_id,
                    created_at=now,
                    pair_key=score.key,
                    source_a=columns.sources[0][i],
                    source_b=columns.sources[1][i],
                    break_class=_CLASS_LABEL[score.break_class],
                    break_score=score.break_score,
                    threshold=pairs.threshold,
                    likely_right=pb.PairSide.Name(score.likely_right),
                    confidence=score.confidence,
                    autonomy=pb.AutonomyMode.Name(score.autonomy),
                    auto_approvable=score.auto_approvable,
                    model_version=pairs.version,
                    features=prepared.features.matrix[i].tolist(),
                    event=event,
                    publish=score.confidence >= self._event_min_confidence,
                )
            )
        if records:
            await self._flags.record(records)
        return out

    def _count_reject(self, error: EngineError) -> None:
        self._metrics.count_rejection(error.code)

    # -- RPCs ----------------------------------------------------------------------------

    async def ScorePairs(
        self, request: pb.ScorePairsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ScorePairsResponse:
        return await self._calls.unary(context, lambda deadline: self.score_pairs(request, deadline))

    async def ScorePairsStream(
        self,
        request_iterator: AsyncIterator[pb.ScorePairsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ScorePairsResponse]:
        """Pipelined like ScoreStream: reads ahead up to `stream_window` requests, answers in order."""

        async def answer(request: pb.ScorePairsRequest, prepared: _Prepared) -> pb.ScorePairsResponse:
            return await self._answer(request.request_id, prepared, await prepared.scores)

        def refused(request: pb.ScorePairsRequest, exc: EngineError) -> pb.ScorePairsResponse:
            return pb.ScorePairsResponse(request_id=request.request_id, error=request_error(exc))

        async with self._calls.stream(context):
            async for out in pipelined(
                request_iterator,
                prepare=lambda request: self._prepare(request, None),
                answer=answer,
                refused=refused,
                count_refusal=self._count_reject,
                drop=lambda prepared: prepared.scores.cancel(),
                window=self._stream_window,
            ):
                yield out

    async def SubmitFeedback(
        self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FeedbackResponse:
        try:
            return await self.feedback(request)
        except EngineError as exc:
            await context.abort(exc.code, exc.client_message())

    # -- other front doors (engine.http) ------------------------------------------------------

    async def score_pairs(
        self, request: pb.ScorePairsRequest, deadline: float | None
    ) -> pb.ScorePairsResponse:
        """`ScorePairs` without gRPC: the same path; EngineError (counted) when refused. Admission
        (`ScoringCalls`) is the caller's."""
        try:
            prepared = self._prepare(request, deadline)
            return await self._answer(request.request_id, prepared, await prepared.scores)
        except EngineError as exc:
            self._count_reject(exc)
            raise

    async def feedback(self, request: pb.FeedbackRequest) -> pb.FeedbackResponse:
        """Record an operator's verdict (`SubmitFeedback`); EngineError when refused."""
        if self._flags is None:
            raise NoFlagStore(
                "this engine keeps no flags (engine serve --flag-store sqlite:PATH or postgresql://...)"
            )
        if not request.flag_id:
            raise InvalidInput("flag_id", "required")
        verdict = _VERDICTS.get(request.verdict)
        if verdict is None:
            raise InvalidInput("verdict", f"must be CONFIRMED or REJECTED, not {request.verdict}")
        if not request.operator.strip():
            raise InvalidInput("operator", "required")
        if len(request.note) > MAX_NOTE_CHARS:
            raise InvalidInput("note", f"{len(request.note)} characters; at most {MAX_NOTE_CHARS}")
        kept = await self._flags.feedback(request.flag_id, verdict, request.operator, request.note)
        out = pb.FeedbackResponse(
            flag_id=kept.flag_id,
            verdict=pb.VERDICT_CONFIRMED if kept.verdict == "confirmed" else pb.VERDICT_REJECTED,
            operator=kept.operator,
            duplicate=kept.duplicate,
        )
        out.recorded_at.FromNanoseconds(int(kept.recorded_at * 1e9))
        return out


_VERDICTS = {pb.VERDICT_CONFIRMED: "confirmed", pb.VERDICT_REJECTED: "rejected"}
