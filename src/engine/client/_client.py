"""Client and AsyncClient: channels, deadlines, retries, helpers (see the package docstring)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc

#: a call's deadline when it names none (seconds)
DEFAULT_TIMEOUT_S = 1.0
#: trades per request of `score_many` (the engine's --max-trades-per-request default)
DEFAULT_MAX_TRADES = 1000
_MIB = 1024 * 1024
_SERVICES = ("tradescore.v1.TradeScorer", "tradescore.v1.BreakScorer")
_ENUM_PREFIX = {"asset_class": "ASSET_CLASS_", "side": "SIDE_"}


def service_config(
    max_attempts: int = 5, initial_backoff_s: float = 0.05, max_backoff_s: float = 1.0
) -> dict[str, Any]:
    """gRPC service config: retries with exponential backoff on UNAVAILABLE / RESOURCE_EXHAUSTED for
    every tradescore.v1 method; max_attempts 1 turns retries off."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": s} for s in _SERVICES],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff_s:.3f}s",
                    "maxBackoff": f"{max_backoff_s:.3f}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                },
            }
        ]
        # retries stop while more than half the recent calls failed: they never multiply an overload
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return config


def channel_options(
    max_message_bytes: int = 16 * _MIB, keepalive_s: float = 30.0, retries: int = 5, **extra: Any
) -> list[tuple[str, Any]]:
    """The channel arguments the clients use (also for callers who build their own channel)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1 if retries > 1 else 0),
        ("grpc.service_config", json.dumps(service_config(max_attempts=retries))),
    ]
    options += list(extra.items())
    return options


def to_trade(value: pb.Trade | Mapping[str, Any] | Any) -> pb.Trade:
    """A `Trade` from a Trade, a mapping or a dataclass with the proto's field names. Enums by name
    ("ASSET_CLASS_EQUITY" or "EQUITY") or number; dates as `datetime.date` or "YYYY-MM-DD"; None
    leaves a field unset (an optional signal stays unknown)."""
    if isinstance(value, pb.Trade):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"a trade is a Trade, a mapping or a dataclass, not {type(value).__name__}")
    fields: dict[str, Any] = {}
    for name, v in value.items():
        if v is None:
            continue
        if isinstance(v, dt.date):
            v = v.isoformat()
        elif name in _ENUM_PREFIX and isinstance(v, str) and not v.startswith(_ENUM_PREFIX[name]):
            v = _ENUM_PREFIX[name] + v.upper()
        fields[name] = v
    return pb.Trade(**fields)


def _request(trades: Iterable[Any], explain: int | str | None, request_id: str) -> pb.ScoreRequest:
    request = pb.ScoreRequest(request_id=request_id, trades=[to_trade(t) for t in trades])
    if explain is not None:
        request.explain = pb.Explain.Value(explain) if isinstance(explain, str) else explain  # type: ignore[assignment]
    return request


def _credentials(
    tls: bool, root_certificates: bytes | None, certificate_chain: bytes | None, private_key: bytes | None
) -> grpc.ChannelCredentials | None:
    if not (tls or root_certificates or certificate_chain):
        return None
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


class _Base:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        retries: int = 5,
        max_message_bytes: int = 16 * _MIB,
        max_trades_per_request: int = DEFAULT_MAX_TRADES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.max_trades_per_request = max_trades_per_request
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._credentials = _credentials(tls, root_certificates, certificate_chain, private_key)
        self._options = channel_options(max_message_bytes, retries=retries, **dict(options))

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _chunks(
        self, trades: Sequence[Any], request_id: str, explain: int | str | None
    ) -> Iterator[pb.ScoreRequest]:
        size = self.max_trades_per_request
        for k, start in enumerate(range(0, len(trades), size)):
            yield _request(trades[start : start + size], explain, f"{request_id}{k}")


class Client(_Base):
    """A blocking client on one gRPC channel (thread-safe; share one per process)."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        if self._credentials is None:
            self.channel = grpc.insecure_channel(target, options=self._options)
        else:
            self.channel = grpc.secure_channel(target, self._credentials, options=self._options)
        self.trades = pb_grpc.TradeScorerStub(self.channel)
        self.breaks = pb_grpc.BreakScorerStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def score(
        self,
        trades: Iterable[Any],
        *,
        explain: int | str | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> pb.ScoreResponse:
        """Score trades (Trade messages, mappings or dataclasses): one `TradeScore` per trade, in order."""
        request = _request(trades, explain, request_id)
        response: pb.ScoreResponse = self.trades.Score(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return response

    def score_many(
        self,
        trades: Sequence[Any],
        *,
        explain: int | str | None = None,
        request_id: str = "bulk-",
        timeout: float | None = None,
    ) -> list[pb.TradeScore]:
        """Score any number of trades: requests of at most `max_trades_per_request`, pipelined on one
        ScoreStream; every score in the order given. A refused request raises ValueError naming it."""
        if not trades:
            return []
        calls = -(-len(trades) // self.max_trades_per_request)
        responses = self.trades.ScoreStream(
            self._chunks(trades, request_id, explain),
            timeout=self._timeout(timeout) * calls,
            metadata=self._metadata,
        )
        scores: list[pb.TradeScore] = []
        for response in responses:
            if response.HasField("error"):
                raise ValueError(f"{response.request_id}: {response.error.message}")
            scores.extend(response.scores)
        return scores

    def model_info(self, *, timeout: float | None = None) -> pb.ModelInfo:
        info: pb.ModelInfo = self.trades.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self._timeout(timeout), metadata=self._metadata
        )
        return info

    def score_pairs(
        self, pairs: Iterable[pb.RecordPair], *, request_id: str = "", timeout: float | None = None
    ) -> pb.ScorePairsResponse:
        response: pb.ScorePairsResponse = self.breaks.ScorePairs(
            pb.ScorePairsRequest(request_id=request_id, pairs=list(pairs)),
            timeout=self._timeout(timeout),
            metadata=self._metadata,
        )
        return response

    def submit_feedback(
        self, flag_id: str, verdict: int | str, operator: str, note: str = "", *, timeout: float | None = None
    ) -> pb.FeedbackResponse:
        request = pb.FeedbackRequest(flag_id=flag_id, verdict=verdict, operator=operator, note=note)  # type: ignore[arg-type]
        response: pb.FeedbackResponse = self.breaks.SubmitFeedback(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return response


class AsyncClient(_Base):
    """The asyncio client (grpc.aio); create and use it inside a running event loop."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        if self._credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=self._options)
        else:
            self.channel = grpc.aio.secure_channel(target, self._credentials, options=self._options)
        self.trades = pb_grpc.TradeScorerStub(self.channel)
        self.breaks = pb_grpc.BreakScorerStub(self.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def score(
        self,
        trades: Iterable[Any],
        *,
        explain: int | str | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> pb.ScoreResponse:
        request = _request(trades, explain, request_id)
        response: pb.ScoreResponse = await self.trades.Score(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return response

    async def score_many(
        self,
        trades: Sequence[Any],
        *,
        explain: int | str | None = None,
        request_id: str = "bulk-",
        timeout: float | None = None,
    ) -> list[pb.TradeScore]:
        if not trades:
            return []
        calls = -(-len(trades) // self.max_trades_per_request)

        async def requests() -> AsyncIterator[pb.ScoreRequest]:
            for request in self._chunks(trades, request_id, explain):
                yield request

        stream = self.trades.ScoreStream(
            requests(), timeout=self._timeout(timeout) * calls, metadata=self._metadata
        )
        scores: list[pb.TradeScore] = []
        async for response in stream:
            if response.HasField("error"):
                raise ValueError(f"{response.request_id}: {response.error.message}")
            scores.extend(response.scores)
        return scores

    async def model_info(self, *, timeout: float | None = None) -> pb.ModelInfo:
        info: pb.ModelInfo = await self.trades.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self._timeout(timeout), metadata=self._metadata
        )
        return info

    async def score_pairs(
        self, pairs: Iterable[pb.RecordPair], *, request_id: str = "", timeout: float | None = None
    ) -> pb.ScorePairsResponse:
        response: pb.ScorePairsResponse = await self.breaks.ScorePairs(
            pb.ScorePairsRequest(request_id=request_id, pairs=list(pairs)),
            timeout=self._timeout(timeout),
            metadata=self._metadata,
        )
        return response

    async def submit_feedback(
        self, flag_id: str, verdict: int | str, operator: str, note: str = "", *, timeout: float | None = None
    ) -> pb.FeedbackResponse:
        request = pb.FeedbackRequest(flag_id=flag_id, verdict=verdict, operator=operator, note=note)  # type: ignore[arg-type]
        response: pb.FeedbackResponse = await self.breaks.SubmitFeedback(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return response
