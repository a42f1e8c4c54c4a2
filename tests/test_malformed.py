"""Request bytes that do not parse, on every method the engine serves: INVALID_ARGUMENT, counted,
logged in at most one line, never a traceback (#19 item 3)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.interceptors import MALFORMED_MESSAGE
from engine.scoring.trades import SERVICE as SCORER_SERVICE
from tests.conftest import ServerFactory, free_port

#: not a message of any type: a tag whose varint never ends
GARBAGE = b"\xff"
TIMEOUT = 10.0
#: calls per method: more than one, so that a log line per call would show
CALLS = 3


def _served_methods(target: str) -> list[tuple[str, str, bool, bool]]:
    """(service, method, client streaming, server streaming) of every method the server at `target`
    lists through its reflection service (a blocking client: run it off the event loop)."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        out = []
        for name in database.get_services():
            for m in pool.FindServiceByName(name).methods:
                out.append((name, m.name, m.client_streaming, m.server_streaming))
        return out


async def _call(channel: grpc.aio.Channel, path: str, streaming_in: bool, streaming_out: bool) -> Any:
    """Send GARBAGE as the one request message; the responses (raw bytes), or the error raised."""
    if not streaming_in and not streaming_out:
        return [await channel.unary_unary(path, None, None)(GARBAGE, timeout=TIMEOUT)]
    if not streaming_in:
        return [r async for r in channel.unary_stream(path, None, None)(GARBAGE, timeout=TIMEOUT)]
    if not streaming_out:
        return [await channel.stream_unary(path, None, None)(iter([GARBAGE]), timeout=TIMEOUT)]
    call = channel.stream_stream(path, None, None)(iter([GARBAGE]), timeout=TIMEOUT)
    return [r async for r in call]


async def test_every_method_answers_malformed_bytes_invalid_argument(
    start_engine: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine, channel = await start_engine(probe_port=free_port())
    target = f"127.0.0.1:{engine.port}"
    methods = await asyncio.get_running_loop().run_in_executor(None, _served_methods, target)
    services = {service for service, *_ in methods}
    # the engine's three services, health and reflection: every one is tried below
    assert {
        SCORER_SERVICE,
        "tradescore.v1.BreakScorer",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert len(methods) >= 16  # 3 + 3 + 6 + health's 3 + reflection's 1
    probe = grpc.aio.insecure_channel(f"127.0.0.1:{engine.probe_port}")
    registry = engine.metrics.registry
    caplog.set_level(logging.INFO)
    try:
        for service, method, streaming_in, streaming_out in methods:
            path = f"/{service}/{method}"
            channels = [channel] + (
                [probe] if service.startswith(("grpc.health.", "grpc.reflection.")) else []
            )
            for ch in channels:
                for _ in range(CALLS):
                    try:
                        responses = await _call(ch, path, streaming_in, streaming_out)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, exc)
                        if (service, method) != (SCORER_SERVICE, "Score"):  # its decoder says where
                            assert exc.details() == MALFORMED_MESSAGE, (path, exc.details())
                        continue
                    # ScoreStream answers each message; a refused one gets its error, the stream goes on
                    assert (service, method) == (SCORER_SERVICE, "ScoreStream"), (path, responses)
                    (response,) = responses
                    error = pb.ScoreResponse.FromString(response).error
                    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], error
                    assert "malformed" in error.message
            counted = registry.get_sample_value(
                "engine_malformed_requests_total", {"grpc_service": service, "grpc_method": method}
            )
            assert counted == CALLS * len(channels), (path, counted)
    finally:
        await probe.close(None)
    # gRPC's own counts: InvalidArgument, not Unknown
    for service, method, *_ in methods:
        if service.startswith("tradescore.") or service == "grpc.health.v1.Health":
            unknown = registry.get_sample_value(
                "grpc_server_handled_total",
                {
                    "grpc_service": service,
                    "grpc_method": method,
                    "grpc_code": "Unknown",
                    "grpc_type": _grpc_type(registry, service, method),
                },
            )
            assert not unknown, (service, method)
    # the log: no traceback, and at most one line about malformed requests (rate limited)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]


def _grpc_type(registry: Any, service: str, method: str) -> str:
    for metric in registry.collect():
        if metric.name == "grpc_server_started":
            for sample in metric.samples:
                if (
                    sample.labels.get("grpc_service") == service
                    and sample.labels.get("grpc_method") == method
                ):
                    return str(sample.labels["grpc_type"])
    return "unary"


async def test_a_valid_request_still_parses_through_the_tolerant_deserializer(
    start_engine: ServerFactory,
) -> None:
    engine, channel = await start_engine()
    info = pb.ModelInfo.FromString(
        await channel.unary_unary(f"/{SCORER_SERVICE}/GetModelInfo", None, None)(
            pb.GetModelInfoRequest().SerializeToString(), timeout=TIMEOUT
        )
    )
    assert info.name
    counted = engine.metrics.registry.get_sample_value(
        "engine_malformed_requests_total", {"grpc_service": SCORER_SERVICE, "grpc_method": "GetModelInfo"}
    )
    assert counted == 0
