"""TLS, mutual TLS, certificate rotation, bearer tokens and the plaintext probe port, on real servers.

Certificates are made at test time (trustme: a throwaway CA per test). Every
channel here uses a subchannel pool of its own, so each one opens a new
connection (a new TLS handshake) instead of sharing one with an earlier channel.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.config import Settings, SettingsError
from engine.security import TOKEN_RECHECK_S, SecurityError

from .conftest import ServerFactory, free_port, sample_request

OWN_POOL = [("grpc.use_local_subchannel_pool", 1)]


def _write_server_files(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.write_bytes(cert.private_key_pem.bytes())
    return cert_path, key_path


def _secure(port: int, ca: trustme.CA, client: trustme.LeafCert | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=b"".join(b.bytes() for b in client.cert_chain_pems) if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=OWN_POOL)


async def _scores(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    response = await pb_grpc.TradeScorerStub(channel).Score(sample_request(3), timeout=10, metadata=metadata)
    return len(response.scores)


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pb_grpc.TradeScorerStub(channel).Score(sample_request(1), timeout=5)
    return err.value.code()


async def test_tls_port_serves_tls_only(start_engine: ServerFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _write_server_files(ca, tmp_path)
    engine, plaintext = await start_engine(tls_cert=str(cert), tls_key=str(key))
    async with _secure(engine.port, ca) as channel:
        assert await _scores(channel) == 3
    assert await _refused(plaintext) == grpc.StatusCode.UNAVAILABLE
    async with _secure(engine.port, trustme.CA()) as stranger:  # a server this CA never signed
        assert await _refused(stranger) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_wants_a_client_certificate_from_the_ca(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    ca, clients = trustme.CA(), trustme.CA()
    cert, key = _write_server_files(ca, tmp_path)
    (tmp_path / "clients.pem").write_bytes(clients.cert_pem.bytes())
    clients_pem = str(tmp_path / "clients.pem")
    engine, _ = await start_engine(tls_cert=str(cert), tls_key=str(key), tls_client_ca=clients_pem)
    async with _secure(engine.port, ca, clients.issue_cert("oms-gateway")) as channel:
        assert await _scores(channel) == 3
    async with _secure(engine.port, ca) as anonymous:
        assert await _refused(anonymous) == grpc.StatusCode.UNAVAILABLE
    async with _secure(engine.port, ca, trustme.CA().issue_cert("impostor")) as impostor:
        assert await _refused(impostor) == grpc.StatusCode.UNAVAILABLE


async def test_rotated_certificates_serve_new_connections_and_a_broken_pair_is_not_used(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = _write_server_files(old_ca, tmp_path)
    engine, _ = await start_engine(tls_cert=str(cert), tls_key=str(key))
    reloads = engine.metrics.tls_reloads
    async with _secure(engine.port, old_ca) as before:
        assert await _scores(before) == 3

        # a rotation caught half-way: the new key beside the old certificate
        staged = tmp_path / "staged"
        staged.mkdir()
        new_cert, new_key = _write_server_files(new_ca, staged)
        key.write_bytes(new_key.read_bytes())
        async with _secure(engine.port, old_ca) as during:
            assert await _scores(during) == 3  # the last good pair serves on
        assert reloads.labels("failure")._value.get() >= 1

        cert.write_bytes(new_cert.read_bytes())
        async with _secure(engine.port, new_ca) as after:
            assert await _scores(after) == 3
        assert reloads.labels("success")._value.get() == 1
        async with _secure(engine.port, old_ca) as stale:  # new connections present the new certificate
            assert await _refused(stale) == grpc.StatusCode.UNAVAILABLE
        assert await _scores(before) == 3  # a connection made before the rotation keeps working


async def test_bearer_tokens_guard_every_call_but_health_and_reflection(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# OMS gateway\ns3cret-one\n\ns3cret-two\n")
    engine, channel = await start_engine(auth_tokens_file=str(tokens))
    stub = pb_grpc.TradeScorerStub(channel)
    request = sample_request(2)
    for metadata, why in (((), "missing"), ((("authorization", "Bearer nope"),), "not accepted")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Score(request, timeout=5, metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and why in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(request, timeout=5, metadata=(("authorization", "Basic s3cret-one"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def one() -> object:
        yield request

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.ScoreStream(one(), timeout=5):  # type: ignore[arg-type]
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for token in ("s3cret-one", "s3cret-two"):
        assert await _scores(channel, (("authorization", f"Bearer {token}"),)) == 3
    breaks = pb_grpc.BreakScorerStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await breaks.SubmitFeedback(pb.FeedbackRequest(flag_id="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # probes and tools need no token
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name async for r in listing for s in r.list_services_response.service}
    assert "tradescore.v1.TradeScorer" in names

    refused = engine.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_service": "tradescore.v1.TradeScorer", "grpc_method": "Score", "grpc_type": "unary",
         "grpc_code": "Unauthenticated"},
    )  # fmt: skip
    assert refused == 3

    # the file is re-read when it changes
    tokens.write_text("s3cret-three\n")
    await asyncio.sleep(TOKEN_RECHECK_S + 0.1)
    assert await _scores(channel, (("authorization", "Bearer s3cret-three"),)) == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(request, timeout=5, metadata=(("authorization", "Bearer s3cret-one"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_probe_port_answers_health_in_plaintext_and_nothing_else(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert, key = _write_server_files(ca, tmp_path)
    (tmp_path / "clients.pem").write_bytes(ca.cert_pem.bytes())
    probe_port = free_port()
    clients_pem = str(tmp_path / "clients.pem")
    engine, _ = await start_engine(
        tls_cert=str(cert), tls_key=str(key), tls_client_ca=clients_pem, probe_port=probe_port
    )
    assert engine.probe_port == probe_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{probe_port}", options=OWN_POOL) as probe:
        for service in ("", "tradescore.v1.TradeScorer"):
            reply = await health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert await _refused(probe) == grpc.StatusCode.UNIMPLEMENTED
        stopping = asyncio.ensure_future(engine.stop(grace=2.0))
        started = time.monotonic()
        while time.monotonic() - started < 2.0:  # draining: probes are told, until the port closes
            try:
                check = health_pb2.HealthCheckRequest()
                reply = await health_pb2_grpc.HealthStub(probe).Check(check, timeout=1)
            except grpc.aio.AioRpcError:
                break
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the probe port never reported the drain")
        await stopping


def test_settings_refuse_half_a_tls_configuration(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="go together"):
        Settings(tls_cert="server.pem")
    with pytest.raises(SettingsError, match="needs tls_cert"):
        Settings(tls_client_ca="clients.pem")
    with pytest.raises(SettingsError, match="differ"):
        Settings(port=50051, probe_port=50051)


async def test_unusable_certificates_or_tokens_stop_the_start(
    start_engine: ServerFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert, key = _write_server_files(ca, tmp_path)
    mismatched = tmp_path / "mismatched.key"
    mismatched.write_bytes(trustme.CA().issue_cert("x").private_key_pem.bytes())
    with pytest.raises(SecurityError, match="TLS"):
        await start_engine(tls_cert=str(cert), tls_key=str(mismatched))
    with pytest.raises(SecurityError, match="TLS"):
        await start_engine(tls_cert=str(tmp_path / "absent.pem"), tls_key=str(key))
    empty = tmp_path / "tokens"
    empty.write_text("# nobody\n")
    with pytest.raises(SecurityError, match="no token"):
        await start_engine(auth_tokens_file=str(empty))
