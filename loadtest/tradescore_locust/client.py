"""A gevent-friendly gRPC client for the engine that reports every call to Locust.

Built so that the load generator is not the bottleneck:

- gRPC runs on gevent (`grpc.experimental.gevent.init_gevent()`, called by the
  locustfile before any channel exists), so a blocking call parks only its
  greenlet, and thousands of users share one OS thread;
- channels are made lazily by the first user of each process, i.e. after
  Locust's `--processes` fork: no gRPC object crosses a fork;
- a process keeps a small pool of channels (`--channels`, each its own TCP
  connection: a local subchannel pool) shared by its users: one HTTP/2
  connection per user costs more CPU than it buys;
- requests are sent as the bytes `mix.build_mix` serialized once, through
  multicallables without serializers; answers stay bytes (only the first few of
  each client are parsed and checked, or all with `--check-responses`).

Each call is reported to Locust's `request` event: request_type `grpc`, name
`<RPC>[<trades per call>]`, response time in ms, the response's size, and on
failure a `GrpcStatusError` carrying the gRPC status code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.queue
import grpc
import numpy as np
from locust.env import Environment

from engine._proto.tradescore.v1 import tradescore_pb2 as pb

from .accounting import LATENCIES

SERVICE = "tradescore.v1.TradeScorer"
SCORE = f"/{SERVICE}/Score"
SCORE_STREAM = f"/{SERVICE}/ScoreStream"
GET_MODEL_INFO = f"/{SERVICE}/GetModelInfo"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
EMPTY = pb.GetModelInfoRequest().SerializeToString()

#: how long the first user of a process waits for its channels to connect (then calls say why not)
CONNECT_WAIT_S = 3.0
log = logging.getLogger(__name__)

#: grpc.StatusCode by the integer google.rpc.Code carried in a ScoreStream `RequestError`
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class GrpcStatusError(Exception):
    """A call that ended with a gRPC status other than OK (Locust groups failures by this text)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> GrpcStatusError:
        if isinstance(error, grpc.Call):
            return cls(error.code(), error.details() or "")
        return cls(grpc.StatusCode.UNKNOWN, str(error))


class ResponseError(Exception):
    """An OK response that does not hold one score per trade sent."""


def normalize_target(host: str) -> str:
    """Locust's `--host` as a gRPC target: `grpc://h:p` and `http://h:p` become `h:p`; `dns:///...` stays."""
    for prefix in ("grpc://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
    return host.rstrip("/")


class ChannelPool:
    """This process's channels to one target, made on first use (after any fork)."""

    def __init__(self) -> None:
        self._target: str | None = None
        self._channels: list[grpc.Channel] = []
        self._next = 0

    def get(self, target: str, size: int) -> grpc.Channel:
        if target != self._target or not self._channels:
            self.close()
            options = [
                # every channel its own connection: the global subchannel pool would share one
                ("grpc.use_local_subchannel_pool", 1),
                # a headless Service resolves to every pod: spread calls, not connections
                ("grpc.lb_policy_name", "round_robin"),
            ]
            self._channels = [grpc.insecure_channel(target, options=options) for _ in range(max(1, size))]
            self._target = target
            # connect now, so that no measured call pays for the TCP and HTTP/2 handshakes
            deadline = time.monotonic() + CONNECT_WAIT_S
            for channel in self._channels:
                try:
                    wait = max(0.0, deadline - time.monotonic())
                    grpc.channel_ready_future(channel).result(timeout=wait)
                except grpc.FutureTimeoutError:
                    log.warning("%s: not connected within %.0f s", target, CONNECT_WAIT_S)
                    break
        channel = self._channels[self._next % len(self._channels)]
        self._next += 1
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels = []
        self._target = None


POOL = ChannelPool()


def _check(response: pb.ScoreResponse, trades: int) -> None:
    if len(response.scores) != trades:
        raise ResponseError(f"{len(response.scores)} scores for {trades} trades")
    for score in response.scores:
        if not 0.0 <= score.fail_probability <= 1.0 or score.risk_band == pb.RISK_BAND_UNSPECIFIED:
            raise ResponseError(f"bad score for trade {score.trade_id!r}: {score}")


class _Reporter:
    def __init__(self, environment: Environment, checks: int) -> None:
        self._fire: Callable[..., Any] = environment.events.request.fire
        self._checks_left = checks

    def should_check(self) -> bool:
        if self._checks_left == 0:
            return False
        if self._checks_left > 0:
            self._checks_left -= 1
        return True

    def report(
        self, name: str, group: str | None, start: float, length: int, exception: Exception | None
    ) -> None:
        elapsed = time.perf_counter() - start
        if exception is None and group is not None:
            LATENCIES.record(group, elapsed)
        self._fire(
            request_type="grpc",
            name=name,
            response_time=elapsed * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )


def _check_info(raw: bytes) -> None:
    if not pb.ModelInfo.FromString(raw).version:
        raise ResponseError("GetModelInfo without a model version")


def _check_infer(raw: bytes, rows: int) -> None:
    from engine._proto.inference import grpc_predict_v2_pb2 as oip

    response = oip.ModelInferResponse.FromString(raw)
    names = [o.name for o in response.outputs]
    if names != ["fail_probability", "risk_band"] or [len(c) for c in response.raw_output_contents] != [
        4 * rows,
        4 * rows,
    ]:
        raise ResponseError(
            f"outputs {names} with {len(response.raw_output_contents)} raw contents for {rows} rows"
        )
    probabilities = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    if not ((probabilities >= 0.0) & (probabilities <= 1.0)).all():
        raise ResponseError("a fail probability outside [0, 1]")


class UnaryClient(_Reporter):
    """`Score`, `GetModelInfo` and the Open Inference Protocol's `ModelInfer` over a shared
    channel, bytes in, bytes out."""

    def __init__(
        self, environment: Environment, channel: grpc.Channel, timeout_s: float, checks: int
    ) -> None:
        super().__init__(environment, checks)
        # no (de)serializers: bytes go out and come back as they are
        self._score = channel.unary_unary(SCORE, request_serializer=None, response_deserializer=None)
        self._info = channel.unary_unary(GET_MODEL_INFO, request_serializer=None, response_deserializer=None)
        self._infer = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        self._timeout = timeout_s

    def score(self, payload: bytes, trades: int, name: str, group: str) -> None:
        self._call(
            self._score, payload, name, group, lambda raw: _check(pb.ScoreResponse.FromString(raw), trades)
        )

    def infer(self, payload: bytes, rows: int, name: str, group: str) -> None:
        """One `ModelInfer` call (raw FP32 features of `rows` trades), reported as `name`."""
        self._call(self._infer, payload, name, group, lambda raw: _check_infer(raw, rows))

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes],
        payload: bytes,
        name: str,
        group: str | None,
        check: Callable[[bytes], None],
    ) -> None:
        """One unary call, reported; its answer `check`ed while checks are left."""
        start = time.perf_counter()
        try:
            raw: bytes = method(payload, timeout=self._timeout)
        except grpc.RpcError as e:
            self.report(name, group, start, 0, GrpcStatusError.from_rpc(e))
            return
        error: Exception | None = None
        if self.should_check():
            try:
                check(raw)
            except Exception as e:  # any parse failure is this call's failure
                error = e if isinstance(e, ResponseError) else ResponseError(f"unreadable response: {e}")
        self.report(name, group, start, len(raw), error)

    def model_info(self) -> None:
        self._call(self._info, EMPTY, "GetModelInfo", None, _check_info)


_CLOSE: Any = object()


class StreamClient(_Reporter):
    """One `ScoreStream` held open: each message is sent and its response awaited (one in flight).

    The stream is (re)opened on first use and after it breaks; a message refused
    inside an open stream (a `RequestError`) is reported with its status code
    while the stream stays open.
    """

    def __init__(
        self, environment: Environment, channel: grpc.Channel, timeout_s: float, checks: int
    ) -> None:
        super().__init__(environment, checks)
        self._open = channel.stream_stream(SCORE_STREAM, request_serializer=None, response_deserializer=None)
        self._timeout = timeout_s
        self._outbox: gevent.queue.SimpleQueue[bytes] | None = None
        self._responses: Iterator[bytes] | None = None
        self._call: grpc.Call | None = None

    def _requests(self, outbox: gevent.queue.SimpleQueue[bytes]) -> Iterator[bytes]:
        while True:
            item = outbox.get()
            if item is _CLOSE:
                return
            yield item

    def _ensure_open(self) -> tuple[gevent.queue.SimpleQueue[bytes], Iterator[bytes]]:
        if self._outbox is None or self._responses is None:
            outbox: gevent.queue.SimpleQueue[bytes] = gevent.queue.SimpleQueue()
            call = self._open(self._requests(outbox))
            self._outbox, self._responses, self._call = outbox, iter(call), call
        return self._outbox, self._responses

    def score(self, payload: bytes, trades: int, name: str, group: str) -> None:
        outbox, responses = self._ensure_open()
        start = time.perf_counter()
        outbox.put(payload)
        broken: GrpcStatusError | None = None
        raw = b""
        try:
            with gevent.Timeout(self._timeout):
                raw = next(responses)
        except gevent.Timeout:
            broken = GrpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "no stream response in time")
        except grpc.RpcError as e:
            broken = GrpcStatusError.from_rpc(e)
        except StopIteration:
            broken = GrpcStatusError(grpc.StatusCode.UNKNOWN, "stream ended by the server")
        if broken is not None:
            self.close()  # this message's answer is lost: later answers would not line up
            self.report(name, group, start, 0, broken)
            return
        # parsed every time: a refused message is an OK message holding a RequestError
        error: Exception | None = None
        try:
            response = pb.ScoreResponse.FromString(raw)
            if response.HasField("error"):
                code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
                error = GrpcStatusError(code, response.error.message)
            elif self.should_check():
                _check(response, trades)
        except Exception as e:  # any parse failure is this message's failure
            error = e if isinstance(e, ResponseError) else ResponseError(f"unreadable response: {e}")
        self.report(name, group, start, len(raw), error)

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put(_CLOSE)
        if self._call is not None:
            self._call.cancel()
        self._outbox = self._responses = self._call = None
