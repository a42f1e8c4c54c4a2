"""The public Python client of the TradeScore engine: `Client` (blocking) and `AsyncClient` (asyncio).

    from engine.client import Client
    with Client("127.0.0.1:50051") as client:
        print(client.score([{"trade_id": "T-1", ...}]).scores[0].fail_probability)

It imports grpcio and protobuf only (the engine's stubs, `engine._proto`, are its one other
import: no numpy, no ONNX Runtime), so a gateway process pays a few MB for it. What it sets up:

- **deadlines by default** (`timeout`, 1 s per call unless a call says otherwise);
- **retries with backoff** on UNAVAILABLE and RESOURCE_EXHAUSTED (the engine shedding load or
  draining: refused before any work, so a retry is safe) through gRPC's own service config
  (`retryPolicy`: 5 attempts, 50 ms doubling to 1 s, jittered by gRPC; `retryThrottling` stops
  retrying when most calls fail, so retries never multiply an overload);
- **channel options for a trading gateway**: keepalive pings every 30 s on idle connections with
  calls open (the engine accepts one every 10 s or less often), 16 MiB messages both ways (the
  engine's default limit), `round_robin` over every address a `dns:///` target resolves to;
- **TLS and bearer tokens**: `tls=True` (system roots) or `root_certificates=PEM`, a client
  certificate for mutual TLS, `token=` sent as `authorization: Bearer ...` on every call;
- **typed helpers**: trades as `Trade` messages, dicts or dataclasses with the proto's field names
  (enums by full or short name: "ASSET_CLASS_EQUITY" or "EQUITY"; dates as `datetime.date` or text);
- **bulk**: `score_many` splits any number of trades into requests within the server's limit and
  pipelines them on one `ScoreStream`, answers in order.

Errors are `grpc.RpcError` with the engine's status code and message (`exc.code()`,
`exc.details()`), as for any gRPC call.
"""

from __future__ import annotations

from engine._proto.tradescore.v1.tradescore_pb2 import (
    EXPLAIN_ALL,
    EXPLAIN_NONE,
    EXPLAIN_UNSPECIFIED,
    VERDICT_CONFIRMED,
    VERDICT_REJECTED,
    AssetClass,
    BreakClass,
    Explain,
    FeedbackRequest,
    FeedbackResponse,
    ModelInfo,
    PairScore,
    RecordPair,
    RecordView,
    RiskBand,
    ScorePairsRequest,
    ScorePairsResponse,
    ScoreRequest,
    ScoreResponse,
    Side,
    Trade,
    TradeScore,
    Verdict,
)
from engine.client._client import (
    DEFAULT_MAX_TRADES,
    DEFAULT_TIMEOUT_S,
    AsyncClient,
    Client,
    channel_options,
    service_config,
    to_trade,
)

__all__ = [
    "DEFAULT_MAX_TRADES",
    "DEFAULT_TIMEOUT_S",
    "EXPLAIN_ALL",
    "EXPLAIN_NONE",
    "EXPLAIN_UNSPECIFIED",
    "VERDICT_CONFIRMED",
    "VERDICT_REJECTED",
    "AssetClass",
    "AsyncClient",
    "BreakClass",
    "Client",
    "Explain",
    "FeedbackRequest",
    "FeedbackResponse",
    "ModelInfo",
    "PairScore",
    "RecordPair",
    "RecordView",
    "RiskBand",
    "ScorePairsRequest",
    "ScorePairsResponse",
    "ScoreRequest",
    "ScoreResponse",
    "Side",
    "Trade",
    "TradeScore",
    "Verdict",
    "channel_options",
    "service_config",
    "to_trade",
]
