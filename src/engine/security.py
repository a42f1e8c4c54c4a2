"""Transport security and caller authentication: TLS / mutual TLS from files, bearer tokens.

- **TLS** (`--tls-cert`, `--tls-key`): the gRPC port serves TLS only. The files
  are looked at again on every new connection (gRPC core asks
  `CertificateFiles.fetch` before each handshake): when either changed, the
  new pair is checked (the key must belong to the certificate, `ssl`'s own
  loader) and used for that connection and the next; connections already open
  keep theirs. A pair that does not load (a rotation caught half-written) is
  not used: the last good one goes on serving, and
  `engine_tls_reloads_total{outcome="failure"}` counts it.
- **Mutual TLS** (`--tls-client-ca`): clients must present a certificate that
  CA bundle signed; the bundle is reloaded with the pair.
- **Bearer tokens** (`--auth-tokens-file`): every call but health checks and
  reflection must carry `authorization: Bearer <token>` metadata with one of
  the file's tokens (one per line; `#` comments), compared in constant time;
  anything else ends with UNAUTHENTICATED before the handler runs. The file is
  re-read when it changes (looked at no more than once a second).
- **Probes**: Kubernetes' gRPC probes speak plaintext and carry no token or
  client certificate. Health checks and reflection never need a token; with
  TLS, `--probe-port` serves them (and nothing else) in plaintext on a port
  of their own.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from engine.metrics import EngineMetrics

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

log = logging.getLogger(__name__)

Handler = Any  # grpc.RpcMethodHandler
#: how often the token file's modification time is looked at, at most
TOKEN_RECHECK_S = 1.0


class SecurityError(ValueError):
    """Certificates, keys or the token file cannot be used."""


def _stamp(paths: Iterable[Path]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is replaced or rewritten: inode, size, modification time."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Pem:
    cert: bytes
    key: bytes
    client_ca: bytes | None


class CertificateFiles:
    """The server's certificate chain, key and (mutual TLS) client CA bundle, reloaded on change."""

    def __init__(
        self, cert: Path, key: Path, client_ca: Path | None, metrics: EngineMetrics | None = None
    ) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._metrics = metrics
        self._paths = [p for p in (cert, key, client_ca) if p is not None]
        try:
            self._stamp = _stamp(self._paths)
        except OSError as exc:
            raise SecurityError(f"TLS: {exc}") from exc
        self._pem = self._load()  # SecurityError: the server does not start

    def _load(self) -> _Pem:
        """Read and check the files: the key must match the certificate, the CA bundle parse."""
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                context.load_verify_locations(cafile=self.client_ca)
            return _Pem(
                self.cert.read_bytes(),
                self.key.read_bytes(),
                self.client_ca.read_bytes() if self.client_ca is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise SecurityError(f"TLS: {self.cert} / {self.key}: {exc}") from exc

    def _config(self, pem: _Pem) -> Any:
        pairs = [(pem.key, pem.cert)]
        return grpc.ssl_server_certificate_configuration(pairs, root_certificates=pem.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials whose certificates follow the files."""
        return grpc.dynamic_ssl_server_credentials(
            self._config(self._pem), self.fetch, require_client_authentication=self.client_ca is not None
        )

    def version(self) -> tuple[tuple[int, int, int], ...] | None:
        """What changes when any of the files changes (None while one is not readable)."""
        try:
            return _stamp(self._paths)
        except OSError:
            return None

    def fetch(self) -> Any:
        """gRPC core, before each new connection's handshake: a new configuration, or None (unchanged)."""
        try:
            stamp = _stamp(self._paths)
        except OSError as exc:  # a file briefly gone during a rotation: keep serving the last pair
            self._outcome("failure", f"TLS files not readable: {exc}")
            return None
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            pem = self._load()
        except SecurityError as exc:
            self._outcome("failure", f"{exc}; still serving the previous certificate")
            return None
        self._pem = pem
        self._outcome("success", f"TLS: reloaded {self.cert}")
        return self._config(pem)

    def _outcome(self, outcome: str, message: str) -> None:
        (log.info if outcome == "success" else log.warning)("%s", message)
        if self._metrics is not None:
            self._metrics.tls_reloads.labels(outcome).inc()


class BearerTokens:
    """The accepted tokens of `--auth-tokens-file`, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._checked = time.monotonic()
        try:
            self._stamp = _stamp([path])
        except OSError as exc:
            raise SecurityError(f"auth tokens: {exc}") from exc
        self._tokens = self._read()
        if not self._tokens:
            raise SecurityError(f"auth tokens: {path} holds no token")

    def _read(self) -> tuple[bytes, ...]:
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityError(f"auth tokens: {self.path}: {exc}") from exc
        return tuple(t.encode() for t in (line.strip() for line in lines) if t and not t.startswith("#"))

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < TOKEN_RECHECK_S:
            return
        self._checked = now
        try:
            stamp = _stamp([self.path])
            if stamp != self._stamp:
                self._stamp = stamp
                tokens = self._read()
                if tokens:
                    self._tokens = tokens
                    log.info("auth tokens: reloaded %s (%d tokens)", self.path, len(tokens))
                else:
                    log.warning("auth tokens: %s holds no token; keeping the previous ones", self.path)
        except (OSError, SecurityError) as exc:
            log.warning("auth tokens: %s; keeping the previous ones", exc)

    def accepts(self, header: str | bytes | None) -> bool:
        """Whether an `authorization` metadata value carries one of the tokens."""
        self._refresh()
        if header is None:
            return False
        raw = header.encode() if isinstance(header, str) else header
        scheme, _, token = raw.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        ok = False
        for accepted in self._tokens:  # every one compared: the time does not tell which matched
            ok |= hmac.compare_digest(token.strip(), accepted)
        return ok


def _refusing(handler: Handler, message: str) -> Handler:
    """A copy of `handler` (same kind, same (de)serializers) that ends the call with UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    if handler.unary_unary is not None:
        return handler._replace(unary_unary=refuse)
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=refuse)
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=refuse_stream)
    return handler._replace(stream_stream=refuse_stream)


class TokenAuthInterceptor(_Interceptor):
    """UNAUTHENTICATED for calls without an accepted bearer token, except to methods whose full name
    ('/package.Service/Method') starts with one of `open_prefixes`."""

    def __init__(self, tokens: BearerTokens, open_prefixes: Iterable[str]) -> None:
        self._tokens = tokens
        self._open = tuple(open_prefixes)
        self._refusing: dict[tuple[str, str], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        if method.startswith(self._open):
            return await continuation(handler_call_details)
        header = None
        for name, value in handler_call_details.invocation_metadata or ():
            if name == "authorization":
                header = value
                break
        handler = await continuation(handler_call_details)
        if handler is None or self._tokens.accepts(header):
            return handler
        reason = "missing" if header is None else "not accepted"
        cached = self._refusing.get((method, reason))
        if cached is None or cached[0] is not handler:
            cached = (handler, _refusing(handler, f"bearer token {reason} (metadata 'authorization')"))
            self._refusing[(method, reason)] = cached
        return cached[1]
