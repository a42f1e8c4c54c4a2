"""The ASGI application of the HTTP front door: one request in, the gRPC services' own path, one answer out.

Per request, in this order (each refusal answered at once, before any work behind it):

1. route (404, or 405 with `Allow`);
2. bearer token, as on the gRPC port (401; health and /openapi.json are open);
3. body: `Content-Length` over `--max-message-bytes` is refused before a byte is read (413), and so
   is a chunked body once it grows past it; /v1 bodies must be `application/json` (415);
4. scoring routes: admission (`ScoringCalls`, shared with gRPC: 429 beyond
   `--max-concurrent-rpcs`), the deadline from `grpc-timeout` (gRPC's own header: `100m`, `2S`) or
   `X-Request-Timeout` (seconds), then the gRPC service's own method (`score_bytes`,
   `score_pairs`, `infer`): the same decoder, validation, micro-batcher, queue limit, deadline
   drop, metrics and errors;
5. errors become the HTTP status of their gRPC code (`engine.http.status`) with a
   `google.rpc.Status` body (/v1) or the Open Inference Protocol's `{"error": ...}` (/v2).

Every request is counted in `http_server_requests_total{method, route, status}` and timed in
`http_server_request_duration_seconds{method, route}` (route: the template, e.g.
`/v2/models/{name}/infer`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.admission import ScoringCalls
from engine.errors import DeadlineExpired, EngineError, InvalidInput, Overloaded, ShuttingDown
from engine.http import jsonmap, oip
from engine.http.routes import ROUTES, UNMATCHED, Route, Router
from engine.http.status import HTTP_STATUSES, HttpError, error_response, http_status
from engine.metrics import EngineMetrics
from engine.models.registry import ModelRegistry
from engine.scoring.oip import SERVER_NAME, InferenceService
from engine.scoring.pairs import BreakScorerService
from engine.scoring.servable import ServingModel
from engine.scoring.trades import TradeScorerService, model_info
from engine.security import BearerTokens

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]

_JSON = (b"content-type", b"application/json")
_OCTETS = (b"content-type", b"application/octet-stream")
#: grpc-timeout units, in seconds
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(name: str, value: str) -> float:
    """Seconds of a `grpc-timeout` ("100m": up to 8 digits and a unit) or `x-request-timeout`
    ("0.25": seconds) header; InvalidInput naming the header when it is neither."""
    try:
        if name == "grpc-timeout":
            digits, unit = value[:-1], value[-1:]
            if not (0 < len(digits) <= 8 and digits.isdigit() and unit in _GRPC_UNITS):
                raise ValueError(value)
            return int(digits) * _GRPC_UNITS[unit]
        seconds = float(value)
        if not 0.0 < seconds < 1e9:
            raise ValueError(value)
        return seconds
    except ValueError:
        raise InvalidInput(
            name,
            f"{value!r} is not a timeout (grpc-timeout: e.g. 250m or 2S; x-request-timeout: seconds > 0)",
        ) from None


class _Request:
    """What the app reads of one request, headers looked at once."""

    __slots__ = ("authorization", "content_length", "content_type", "deadline", "header_length", "timeout")

    def __init__(self, scope: Scope) -> None:
        self.content_type = b""
        self.content_length = -1
        self.authorization: bytes | None = None
        self.timeout: tuple[str, str] | None = None
        self.header_length: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                self.content_type = value
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else -1
            elif name == b"authorization":
                self.authorization = value
            elif name in (b"grpc-timeout", b"x-request-timeout"):
                self.timeout = (name.decode(), value.decode("latin-1"))
            elif name == b"inference-header-content-length":
                self.header_length = value.decode("latin-1")


class FrontDoor:
    """The ASGI app over the engine's services (which must be started)."""

    def __init__(
        self,
        models: ModelRegistry[ServingModel],
        scorer: TradeScorerService,
        breaks: BreakScorerService,
        oip_service: InferenceService,
        calls: ScoringCalls,
        metrics: EngineMetrics,
        *,
        max_body_bytes: int,
        tokens: BearerTokens | None = None,
        openapi: Callable[[], bytes] | None = None,
    ) -> None:
        self._models = models
        self._scorer = scorer
        self._breaks = breaks
        self._oip = oip_service
        self._calls = calls
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._tokens = tokens
        self._openapi = openapi
        self._router = Router()
        for route in ROUTES:  # every route's series exist from the start, at 0 for every status
            counters = self._metrics.http_route(route.verb, route.template)[1]
            for status in HTTP_STATUSES:
                counters[status] = self._metrics.http_requests.labels(
                    route.verb, route.template, str(status)
                ).inc
        self.draining = False
        self._handlers: dict[str, Callable[[Route, dict[str, str], _Request, bytes], Awaitable[Answer]]] = {
            "score": self._score,
            "model_info": self._model_info,
            "score_pairs": self._score_pairs,
            "feedback": self._feedback,
            "live": self._live,
            "ready": self._ready,
            "server_metadata": self._server_metadata,
            "model_metadata": self._model_metadata,
            "model_ready": self._model_ready,
            "infer": self._infer,
            "openapi": self._openapi_doc,
        }

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        started = time.perf_counter()
        verb = scope["method"]
        route, params, allowed = self._router.match(verb, scope["path"])
        label = route.template if route is not None else UNMATCHED
        v2 = scope["path"].startswith("/v2")
        try:
            if route is None:
                if allowed:
                    raise HttpError(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"{verb} is not served on {scope['path']}; allowed: {', '.join(allowed)}",
                        http_status=405,
                        headers=((b"allow", ", ".join(allowed).encode()),),
                    )
                raise HttpError(grpc.StatusCode.NOT_FOUND, f"no route {verb} {scope['path']}")
            request = _Request(scope)
            if (
                self._tokens is not None
                and not route.open
                and not self._tokens.accepts(request.authorization)
            ):
                why = "missing" if request.authorization is None else "not accepted"
                raise HttpError(
                    grpc.StatusCode.UNAUTHENTICATED, f"bearer token {why} (header 'Authorization')"
                )
            body = await self._body(request, receive, json_only=verb == "POST" and not v2)
            status, headers, payload = await self._handlers[route.handler](route, params, request, body)
        except EngineError as exc:
            status, headers, payload = self._refused(exc, v2)
        except Exception:  # noqa: BLE001 - never a traceback to the client; logged here
            log.exception("HTTP %s %s failed", verb, scope["path"])
            status, headers, payload = self._refused(EngineError("internal error"), v2)
        if status == 401:
            headers = [*headers, (b"www-authenticate", b"Bearer")]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        self._observe(verb, label, status, time.perf_counter() - started)

    def _refused(self, error: EngineError, v2: bool) -> Answer:
        if not v2:
            status, headers, payload = error_response(error)
            return status, [_JSON, *headers], payload
        headers = [_JSON, *error.headers] if isinstance(error, HttpError) else [_JSON]
        return http_status(error), headers, jsonmap.dumps({"error": error.client_message()})

    def _observe(self, verb: str, route: str, status: int, seconds: float) -> None:
        observe, counters = self._metrics.http_route(verb, route)
        observe(seconds)
        counter = counters.get(status)
        if counter is None:
            counter = counters[status] = self._metrics.http_requests.labels(verb, route, str(status)).inc
        counter(1)

    async def _body(self, request: _Request, receive: Receive, json_only: bool) -> bytes:
        if request.content_length > self._max_body:
            raise HttpError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"body of {request.content_length} bytes; at most {self._max_body} (--max-message-bytes)",
                http_status=413,
            )
        if json_only and request.content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            got = request.content_type.decode("latin-1") or "none"
            raise HttpError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Content-Type must be application/json, got {got}",
                http_status=415,
                field="Content-Type",
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(grpc.StatusCode.CANCELLED, "the client went away")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self._max_body:
                    raise HttpError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"body over {self._max_body} bytes (--max-message-bytes)",
                        http_status=413,
                    )
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _deadline(self, request: _Request) -> float | None:
        if request.timeout is None:
            return None
        return time.monotonic() + parse_timeout(*request.timeout)

    async def _scoring(self, call: Callable[[float | None], Awaitable[Answer]], request: _Request) -> Answer:
        """Admission, deadline and the call, as the gRPC servicers do them."""
        if self.draining:
            raise ShuttingDown("the engine is shutting down")
        deadline = self._deadline(request)
        if not self._calls.enter():
            self._metrics.rejected.labels("overload").inc()
            raise Overloaded(self._calls.busy_message())
        try:
            if deadline is None:
                return await call(None)
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExpired("the call's deadline passed before it started")
            # as gRPC cancels a call at its deadline: what is still queued is dropped before inference
            try:
                return await asyncio.wait_for(call(deadline), left)
            except TimeoutError:
                raise DeadlineExpired("deadline exceeded") from None
        finally:
            self._calls.leave()

    # -- /v1: tradescore.v1 -------------------------------------------------------------------------

    async def _score(self, route: Route, params: dict[str, str], request: _Request, body: bytes) -> Answer:
        raw = jsonmap.score_request_bytes(jsonmap.loads(body))

        async def call(deadline: float | None) -> Answer:
            out = await self._scorer.score_bytes(raw, deadline)
            return 200, [_JSON], jsonmap.dumps(jsonmap.score_response_dict(out))

        return await self._scoring(call, request)

    async def _model_info(
        self, route: Route, params: dict[str, str], request: _Request, body: bytes
    ) -> Answer:
        return 200, [_JSON], jsonmap.dumps(jsonmap.to_dict(model_info(self._models.current)))

    async def _score_pairs(
        self, route: Route, params: dict[str, str], request: _Request, body: bytes
    ) -> Answer:
        message = jsonmap.parse(jsonmap.loads(body), pb.ScorePairsRequest())

        async def call(deadline: float | None) -> Answer:
            out = await self._breaks.score_pairs(message, deadline)
            return 200, [_JSON], jsonmap.dumps(jsonmap.to_dict(out))

        return await self._scoring(call, request)

    async def _feedback(self, route: Route, params: dict[str, str], request: _Request, body: bytes) -> Answer:
        value = jsonmap.loads(body)
        message = jsonmap.parse(value, pb.FeedbackRequest())
        flag_id = params["flag_id"]
        if message.flag_id and message.flag_id != flag_id:
            raise InvalidInput("flag_id", f"the body's {message.flag_id!r} is not the path's {flag_id!r}")
        message.flag_id = flag_id
        return 200, [_JSON], jsonmap.dumps(jsonmap.to_dict(await self._breaks.feedback(message)))

    async def _openapi_doc(
        self, route: Route, params: dict[str, str], request: _Request, body: bytes
    ) -> Answer:
        if self._openapi is None:
            raise HttpError(grpc.StatusCode.NOT_FOUND, "no OpenAPI document")
        return 200, [_JSON], self._openapi()

    # -- /v2: the Open Inference Protocol --------------------------------------------------------

    async def _live(self, route: Route, params: dict[str, str], request: _Request, body: bytes) -> Answer:
        return 200, [_JSON], b'{"live":true}'

    async def _ready(self, route: Route, params: dict[str, str], request: _Request, body: bytes) -> Answer:
        if self.draining:
            return 503, [_JSON], b'{"ready":false}'
        return 200, [_JSON], b'{"ready":true}'

    async def _server_metadata(
        self, route: Route, params: dict[str, str], request: _Request, body: bytes
    ) -> Answer:
        from engine import __version__

        doc = {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
        return 200, [_JSON], jsonmap.dumps(doc)

    async def _model_metadata(
        self, route: Route, params: dict[str, str], request: _Request, body: bytes
    ) -> Answer:
        meta = self._oip.model_view(params["name"], params.get("version", ""))
        return 200, [_JSON], jsonmap.dumps(oip.model_metadata(meta))

    async def _model_ready(
        self, route: Route, params: dict[str, str], request: _Request, body: bytes
    ) -> Answer:
        name = params["name"]
        ready = self._oip.model_ready(name, params.get("version", "")) and not self.draining
        return (200 if ready else 400), [_JSON], jsonmap.dumps({"name": name, "ready": ready})

    async def _infer(self, route: Route, params: dict[str, str], request: _Request, body: bytes) -> Answer:
        length: int | None = None
        if request.header_length is not None:
            if not request.header_length.isdigit():
                raise InvalidInput("Inference-Header-Content-Length", "must be a number of bytes")
            length = int(request.header_length)
        message, binary_all, binary = oip.infer_request(
            params["name"], params.get("version", ""), body, length
        )

        async def call(deadline: float | None) -> Answer:
            out = await self._oip.infer(message, deadline)
            payload, head = oip.infer_response(out, binary_all, binary)
            if head is None:
                return 200, [_JSON], payload
            return 200, [_OCTETS, (b"inference-header-content-length", str(head).encode())], payload

        return await self._scoring(call, request)
