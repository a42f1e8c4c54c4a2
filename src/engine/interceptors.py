"""gRPC server metrics: one grpc.aio interceptor that wraps every method handler.

The interceptor looks up the handler gRPC would run and returns a copy of it
(`RpcMethodHandler._replace`) whose behaviour function is wrapped; the
request deserializer and response serializer are kept as they are, so it
works the same for protobuf handlers and for handlers that take raw bytes.
Wrapped handlers are cached per method: a call pays one dict lookup, three
counter increments and one histogram observation (label children are bound
once, in `EngineMetrics.grpc_method`).

What is counted, with the labels of go-grpc-prometheus:

- `grpc_server_started_total` when the handler starts;
- `grpc_server_handled_total{grpc_code}` when it finishes: the code it set or
  aborted with (`OK` when none), `Canceled` / `DeadlineExceeded` when the
  call was cancelled, `Unknown` for an exception (what grpc.aio sends);
- `grpc_server_handling_seconds` from start to the handler's last response;
- `grpc_server_msg_received_total` / `_msg_sent_total`: one per request and
  per response message (streams: each message read through the request
  iterator or `context.read()`, each one yielded or `context.write()`n).

Calls gRPC refuses before any handler runs (beyond its own concurrency limit,
`engine.config.CONTROL_HEADROOM` above `--max-concurrent-rpcs`; unknown
methods) are not seen here, as in go-grpc-prometheus. Scoring calls the
engine refuses at `--max-concurrent-rpcs` are, and so are requests whose
bytes do not parse: `MalformedRequestInterceptor` (below, placed inside this
one) answers them INVALID_ARGUMENT instead of letting grpc.aio's deserializer
fail the call with UNKNOWN and a logged traceback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc

from engine.metrics import GRPC_TYPES, EngineMetrics, GrpcMethodMetrics, grpc_service_methods

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_OK = grpc.StatusCode.OK
log = logging.getLogger(__name__)
if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not subscriptable
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def _split(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service, method) if service else ("unknown", method)


def _ended_code(context: Any) -> grpc.StatusCode:
    """The status of a handler that returned normally: what it set, else OK."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else _OK


def _failed_code(exc: BaseException, context: Any) -> grpc.StatusCode:
    """The status a call ends with when its handler raised `exc`."""
    code = getattr(context, "code", lambda: None)()
    if isinstance(code, grpc.StatusCode) and code is not _OK:
        return code  # aborted, or set before raising
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        return (
            grpc.StatusCode.DEADLINE_EXCEEDED
            if remaining is not None and remaining <= 0
            else (grpc.StatusCode.CANCELLED)
        )
    return grpc.StatusCode.UNKNOWN


class _CountingContext:
    """A servicer context whose read()/write() count messages (reader/writer-style stream handlers)."""

    __slots__ = ("_context", "_m")

    def __init__(self, context: Any, m: GrpcMethodMetrics) -> None:
        self._context = context
        self._m = m

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:  # type: ignore[attr-defined]
            self._m.msg_received(1)
        return message

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._m.msg_sent(1)


async def _count_async(requests: AsyncIterator[Any], m: GrpcMethodMetrics) -> AsyncIterator[Any]:
    async for message in requests:
        m.msg_received(1)
        yield message


def _count_sync(requests: Iterable[Any], m: GrpcMethodMetrics) -> Iterator[Any]:
    for message in requests:
        m.msg_received(1)
        yield message


def wrap_handler(handler: Handler, m: GrpcMethodMetrics) -> Handler:
    """`handler` with its behaviour timed and counted into `m`; (de)serializers untouched."""
    streaming_in = handler.request_streaming
    streaming_out = handler.response_streaming
    attr = ("stream_" if streaming_in else "unary_") + ("stream" if streaming_out else "unary")
    behaviour: Callable[..., Any] = getattr(handler, attr)
    started, received, sent, observe, handled = m.started, m.msg_received, m.msg_sent, m.handling, m.handled
    ok = handled[_OK]
    unknown = handled[grpc.StatusCode.UNKNOWN]

    def finish(start: float, code: grpc.StatusCode) -> None:
        observe(perf_counter() - start)
        handled.get(code, unknown)(1)

    if not streaming_out and inspect.iscoroutinefunction(behaviour):
        if not streaming_in:

            async def unary_unary(request: Any, context: Any) -> Any:
                started(1)
                received(1)
                start = perf_counter()
                try:
                    response = await behaviour(request, context)
                except BaseException as exc:
                    finish(start, _failed_code(exc, context))
                    raise
                observe(perf_counter() - start)
                code = context.code()
                if code is None or code is _OK:
                    sent(1)
                    ok(1)
                else:
                    handled.get(code, unknown)(1)
                return response

            wrapped: Callable[..., Any] = unary_unary
        else:

            async def stream_unary(requests: Any, context: Any) -> Any:
                started(1)
                start = perf_counter()
                try:
                    response = await behaviour(_count_async(requests, m), context)
                except BaseException as exc:
                    finish(start, _failed_code(exc, context))
                    raise
                code = _ended_code(context)
                if code is _OK:
                    sent(1)
                finish(start, code)
                return response

            wrapped = stream_unary
    elif streaming_out and inspect.isasyncgenfunction(behaviour):

        async def stream_out(request: Any, context: Any) -> AsyncIterator[Any]:
            started(1)
            if streaming_in:
                request = _count_async(request, m)
            else:
                received(1)
            start = perf_counter()
            responses = behaviour(request, context)
            try:
                async for response in responses:
                    sent(1)
                    yield response
            except BaseException as exc:
                finish(start, _failed_code(exc, context))
                raise
            finally:
                await responses.aclose()
            finish(start, _ended_code(context))

        wrapped = stream_out
    elif streaming_out and inspect.iscoroutinefunction(behaviour):

        async def stream_writer(request: Any, context: Any) -> None:
            started(1)
            if streaming_in:
                request = _count_async(request, m)
            else:
                received(1)
            start = perf_counter()
            try:
                await behaviour(request, _CountingContext(context, m))
            except BaseException as exc:
                finish(start, _failed_code(exc, context))
                raise
            finish(start, _ended_code(context))

        wrapped = stream_writer
    elif not streaming_out:  # synchronous handler: grpc.aio runs it in its thread pool

        def sync_unary(request: Any, context: Any) -> Any:
            started(1)
            if streaming_in:
                request = _count_sync(request, m)
            else:
                received(1)
            start = perf_counter()
            try:
                response = behaviour(request, context)
            except BaseException as exc:
                finish(start, _failed_code(exc, context))
                raise
            sent(1)
            finish(start, _OK)
            return response

        wrapped = sync_unary
    else:  # synchronous generator (or a function returning an iterator)

        def sync_stream(request: Any, context: Any) -> Iterator[Any]:
            started(1)
            if streaming_in:
                request = _count_sync(request, m)
            else:
                received(1)
            start = perf_counter()
            try:
                for response in behaviour(request, context):
                    sent(1)
                    yield response
            except BaseException as exc:
                finish(start, _failed_code(exc, context))
                raise
            finish(start, _OK)

        wrapped = sync_stream
    return cast(Handler, cast(Any, handler)._replace(**{attr: wrapped}))


class MetricsInterceptor(_Interceptor):
    """grpc-ecosystem server metrics for every method the server serves.

    `services`: protobuf ServiceDescriptors whose methods get their series at 0
    from the start (every code), so `rate()` and alerts see the first calls.
    """

    def __init__(self, metrics: EngineMetrics, services: Iterable[Any] = ()) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        for service, method, grpc_type in grpc_service_methods(services):
            metrics.grpc_method(service, method, grpc_type)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED itself
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, name = _split(method)
        grpc_type = GRPC_TYPES[(handler.request_streaming, handler.response_streaming)]
        wrapped = wrap_handler(handler, self._metrics.grpc_method(service, name, grpc_type))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


# -- requests whose bytes do not parse ---------------------------------------------------------


class _Malformed:
    """What a handler's deserializer gives in place of a request whose bytes do not parse."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED: Any = _Malformed()
#: what a client is told when its request bytes are not the method's message
MALFORMED_MESSAGE = "malformed request: the bytes are not a valid message of the method's request type"


def tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserialize`, giving MALFORMED instead of raising (grpc.aio would answer UNKNOWN and log a
    traceback per call: a client sending garbage could fill the logs at line rate)."""

    def read(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:  # noqa: BLE001 - DecodeError, or whatever a parser raises on bytes: the client's
            return MALFORMED

    read.tolerant = True  # type: ignore[attr-defined]
    return read


class RateLimitedLog:
    """At most one log line per `every_s` seconds; the lines it held back are counted in the next one."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self._log = logger
        self._every = every_s
        self._next = float("-inf")
        self._held = 0

    def warning(self, message: str, *args: Any) -> None:
        now = monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held = self._held, 0
        self._next = now + self._every
        more = f" ({held} more since the last line)" if held else ""
        self._log.warning(message + "%s", *args, more)


async def _checked(requests: AsyncIterator[Any], refuse: Callable[[], Awaitable[None]]) -> AsyncIterator[Any]:
    async for message in requests:
        if message is MALFORMED:
            await refuse()
        yield message


def guard_malformed(handler: Handler, refuse: Callable[[Any], Awaitable[None]]) -> Handler:
    """`handler` with a tolerant request deserializer, whose behaviour ends the call through
    `refuse(context)` (which aborts) when a request does not parse. Unchanged: handlers that take
    raw bytes (no deserializer) or already read tolerantly, and synchronous ones."""
    deserialize = handler.request_deserializer
    if deserialize is None or getattr(deserialize, "tolerant", False):
        return handler
    streaming_in = handler.request_streaming
    attr = ("stream_" if streaming_in else "unary_") + ("stream" if handler.response_streaming else "unary")
    behaviour: Callable[..., Any] = getattr(handler, attr)
    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(behaviour):

        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            if streaming_in:
                request = _checked(request, lambda: refuse(context))
            elif request is MALFORMED:
                await refuse(context)
            async for response in behaviour(request, context):
                yield response

        wrapped = generator
    elif inspect.iscoroutinefunction(behaviour):

        async def coroutine(request: Any, context: Any) -> Any:
            if streaming_in:
                request = _checked(request, lambda: refuse(context))
            elif request is MALFORMED:
                await refuse(context)
            return await behaviour(request, context)

        wrapped = coroutine
    elif not streaming_in and not handler.response_streaming:
        # synchronous (e.g. the health servicer's List, inherited from the generated base class):
        # in the thread pool, as grpc.aio runs it, once the request has parsed

        async def in_thread(request: Any, context: Any) -> Any:
            if request is MALFORMED:
                await refuse(context)
            return await asyncio.get_running_loop().run_in_executor(None, behaviour, request, context)

        wrapped = in_thread
    else:  # a synchronous stream handler: none is served; left as grpc.aio runs it
        return handler
    replaced = {attr: wrapped, "request_deserializer": tolerant(deserialize)}
    return cast(Handler, cast(Any, handler)._replace(**replaced))


class MalformedRequestInterceptor(_Interceptor):
    """INVALID_ARGUMENT ("malformed request") for every method whose request bytes do not parse.

    Without it grpc.aio's own deserializer raises, the call ends UNKNOWN and a traceback
    is logged for each one. Each such request is counted in
    `engine_malformed_requests_total{grpc_service, grpc_method}` and logged in at most one
    line per `log_every_s` seconds. Placed inside the metrics interceptor, the calls are
    also in grpc_server_handled_total as InvalidArgument. (Score and ScoreStream take raw
    bytes: their decoder refuses malformed bytes itself and counts them in the same metric.)
    """

    def __init__(self, metrics: EngineMetrics, log_every_s: float = 10.0) -> None:
        self._metrics = metrics
        self._log = RateLimitedLog(log, log_every_s)
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    def _refusal(self, method: str) -> Callable[[Any], Awaitable[None]]:
        service, name = _split(method)
        count = self._metrics.malformed_requests.labels(service, name).inc

        async def refuse(context: Any) -> None:
            count()
            self._log.warning(
                "malformed request to %s from %s: answered INVALID_ARGUMENT", method, context.peer()
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)

        return refuse

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, guard_malformed(handler, self._refusal(method)))
            self._guarded[method] = cached
        return cached[1]
