"""uvicorn, embedded: the HTTP/JSON front door on the engine's own event loop, in the same process.

Chosen by measurement (`loadtest/http_server_choice.py`: one JSON handler, 64 connections, the
server pinned to one core; figures in docs/design-figures.md): uvicorn with httptools took the
least server CPU per call, then granian's embedded server (with Rust threads of its own beside
the loop, and its embedded mode marked experimental by granian), aiohttp, uvicorn with h11 and
hypercorn. uvicorn's protocol runs on the loop it is given (uvloop here), so a REST call's decode,
batching and answer happen where a gRPC call's do, sharing the micro-batcher's inline lane.

uvicorn is used as a library: `startup` with a socket of ours (SO_REUSEPORT with `--workers`,
port 0 for tests), `shutdown` at drain; its own signal handling (`serve`) is not used, the
engine's handles SIGTERM. TLS: the gRPC port's files (`--tls-cert`, `--tls-key`,
`--tls-client-ca`), reloaded for new connections when they change, as on the gRPC port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING

import uvicorn

from engine.http.app import FrontDoor
from engine.security import BearerTokens, CertificateFiles

if TYPE_CHECKING:
    from engine.server import EngineServer

log = logging.getLogger(__name__)

#: how often the TLS files are looked at for a new connection, at most
TLS_RECHECK_S = 1.0


class _RotatingTls:
    """An SSLContext whose certificates follow `CertificateFiles`: the handshake's SNI callback
    (called for every client hello) swaps in a context built from the files once they changed."""

    def __init__(self, files: CertificateFiles) -> None:
        self._files = files
        self._checked = time.monotonic()
        self._version = files.version()
        self.context = self._build()
        self._current = self.context

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._files.cert, self._files.key)
        if self._files.client_ca is not None:
            context.load_verify_locations(cafile=self._files.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["http/1.1"])
        context.sni_callback = self._pick
        return context

    def _pick(self, connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        now = time.monotonic()
        if now - self._checked >= TLS_RECHECK_S:
            self._checked = now
            version = self._files.version()
            if version != self._version:
                self._version = version
                try:
                    self._current = self._build()
                except (OSError, ssl.SSLError) as exc:
                    log.warning("HTTP TLS: %s; still serving the previous certificate", exc)
        if self._current is not context:
            connection.context = self._current


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """The front door's listener: start on (host, port), stop with a grace period."""

    def __init__(
        self,
        app: FrontDoor,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        certificates: CertificateFiles | None = None,
        keepalive_s: float = 30.0,
    ) -> None:
        self.app = app
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._certificates = certificates
        self._config = uvicorn.Config(
            app,
            http="httptools",
            loop="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_keep_alive=int(max(1, keepalive_s)),
        )
        self._server: uvicorn.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        config = self._config
        config.load()
        if self._certificates is not None:
            config.ssl = _RotatingTls(self._certificates).context
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        sock = bind(self._host, self._port, self._reuse_port)
        self.port = int(sock.getsockname()[1])
        await server.startup(sockets=[sock])
        if server.should_exit:
            raise OSError(f"cannot serve HTTP on {self._host}:{self._port}")
        self._server = server
        # uvicorn's once-a-second tick keeps its Date header current
        self._ticker = asyncio.get_running_loop().create_task(server.main_loop(), name="http-ticker")
        return self.port

    async def stop(self, grace: float) -> None:
        """Refuse new connections and requests; let requests in flight finish within `grace`."""
        self.app.draining = True
        server = self._server
        if server is None:
            return
        server.should_exit = True
        server.config.timeout_graceful_shutdown = max(1, int(grace + 0.999))
        if self._ticker is not None:
            await self._ticker
        await server.shutdown()


def http_front_door(engine: EngineServer, tokens: BearerTokens | None) -> HttpServer:
    """The front door of a started `EngineServer`: its services, admission, metrics, tokens and TLS."""
    from engine.http.openapi import document_bytes

    s = engine.settings
    if engine.scorer is None or engine.breaks is None or engine.oip is None or engine.calls is None:
        raise RuntimeError("start the engine's services first")
    app = FrontDoor(
        engine.models,
        engine.scorer,
        engine.breaks,
        engine.oip,
        engine.calls,
        engine.metrics,
        max_body_bytes=s.max_message_bytes,
        tokens=tokens,
        openapi=document_bytes,
    )
    return HttpServer(
        app,
        s.host,
        s.http_port,
        reuse_port=s.workers > 1,
        certificates=engine.certificates,
        keepalive_s=s.keepalive_time_s,
    )
