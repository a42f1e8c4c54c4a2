"""One settings object for the server: command-line flags > ENGINE_* environment > defaults.

Every field of `Settings` is one flag of `engine serve` (`--max-batch-rows`) and
one environment variable (`ENGINE_MAX_BATCH_ROWS`); the help text lives here,
beside the default, and nowhere else.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.labels import BAND_NAMES, BREAK_CLASSES

ENV_PREFIX = "ENGINE_"
#: the model bundle shipped in the package (engine/models/default), served when none is named
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "default"
#: values of Settings.event_loop
EVENT_LOOPS = ("uvloop", "asyncio")
#: values of Settings.model_backend: what evaluates the trade model (engine.models.bundle)
BACKENDS = ("onnx", "compiled")
#: values of Settings.explain_band
EXPLAIN_BANDS = (*BAND_NAMES, "OFF")


#: values of an autonomy mode in --break-autonomy
AUTONOMY_MODES = ("monitor", "propose", "autonomous")
#: a class --break-autonomy does not name: a record missing on one side, or a break whose fields
#: all agree, is only flagged (which side is right is a guess); the rest are proposed
DEFAULT_AUTONOMY: dict[str, tuple[str, float]] = {
    cls: ("monitor" if cls in ("MISSING", "NONE") else "propose", 1.0) for cls in BREAK_CLASSES
}


def parse_autonomy(spec: str) -> dict[str, tuple[str, float]]:
    """ "STATUS=propose,STATIC_DATA=autonomous:0.9" -> {class: (mode, confidence threshold)}.

    Every break class gets a mode: the ones not named keep `DEFAULT_AUTONOMY`'s.
    SettingsError names what it cannot read.
    """
    policy = dict(DEFAULT_AUTONOMY)
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        cls, sep, mode = (x.strip() for x in part.partition("="))
        cls = cls.upper()
        if not sep or cls not in policy:
            raise SettingsError(
                f"break_autonomy: {part!r}: want CLASS=MODE with CLASS one of {', '.join(BREAK_CLASSES)}"
            )
        name, _, threshold = mode.partition(":")
        name = name.lower()
        if name not in AUTONOMY_MODES or (threshold and name != "autonomous"):
            raise SettingsError(
                f"break_autonomy: {part!r}: MODE is monitor, propose or autonomous:CONFIDENCE"
            )
        if name == "autonomous":
            try:
                level = float(threshold)
            except ValueError:
                raise SettingsError(
                    f"break_autonomy: {part!r}: autonomous needs a confidence, e.g. autonomous:0.9"
                ) from None
            if not 0.0 < level <= 1.0:
                raise SettingsError(f"break_autonomy: {part!r}: the confidence must be in (0, 1]")
            policy[cls] = (name, level)
        else:
            policy[cls] = (name, 1.0)
    return policy


def split_store(spec: str) -> tuple[str, str] | None:
    """ "sqlite:PATH", "sqlite:///PATH" or "postgresql://..." -> (kind, target); "" -> None; else
    ValueError. The flag store's syntax (`engine.flag_store.parse_store` makes a StoreSpec of it)."""
    if not spec:
        return None
    if spec.startswith(("postgresql://", "postgres://")):
        return "postgresql", spec
    for prefix in ("sqlite:///", "sqlite:"):
        if spec.startswith(prefix):
            rest = spec[len(prefix) :]
            if rest:
                return "sqlite", ("/" if prefix == "sqlite:///" else "") + rest
    raise ValueError(
        f"flag store {spec!r}: want sqlite:PATH (e.g. sqlite:/var/lib/tradescore/flags.sqlite) "
        "or postgresql://user:password@host:5432/database"
    )


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


class SettingsError(ValueError):
    """A setting has a value it cannot take."""


#: calls gRPC admits beyond --max-concurrent-rpcs (engine.admission): probes, reflection,
#: metadata, and scoring calls that are being refused
CONTROL_HEADROOM = 64


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _opt("0.0.0.0", "interface to listen on")
    port: int = _opt(50051, "gRPC port (0 picks a free port; needs --workers 1)")
    bundle: Path = _opt(DEFAULT_BUNDLE, "model bundle folder (default: the bundle shipped in the package)")
    workers: int = _opt(1, "server processes sharing the port through SO_REUSEPORT")
    max_batch_rows: int = _opt(
        1024,
        "largest batch, in trades, sent to ONNX Runtime in one call; larger batches cost less CPU per "
        "trade, but a call waits for the whole batch it lands in",
    )
    max_wait_ms: float = _opt(
        2.0,
        "while the engine is saturated (since the last small call, its event loop never waited for "
        "the network, or the process kept a core busy), how long a batch of small calls (see "
        "--inline-rows) waits for more; a call that finds the engine idle is scored at once, and "
        "larger calls never wait (they go to an inference thread as soon as one is free). 0: no "
        "wait, a saturated engine's small calls are batched only when they queue together",
    )
    inline_rows: int = _opt(
        16,
        "calls of at most this many trades are scored on the event loop, never behind a larger "
        "call, in batches of at most this many trades; larger calls go to an inference thread "
        "(0: every call does)",
    )
    batching: bool = _opt(True, "coalesce trades from concurrent calls into shared batches", bool_flag=True)
    max_queue_rows: int = _opt(
        4096, "trades allowed to wait for inference; beyond it calls get RESOURCE_EXHAUSTED at once"
    )
    max_trades_per_request: int = _opt(
        1000, "most trades one ScoreRequest may carry (and rows one Open Inference Protocol ModelInfer)"
    )
    max_inflight_batches: int = _opt(1, "batches running in ONNX Runtime at the same time")
    intra_op_threads: int = _opt(1, "ONNX Runtime threads per inference call")
    model_backend: str = _opt(
        "onnx",
        "what evaluates the trade model: onnx (ONNX Runtime on the bundle's model.onnx) or compiled "
        "(the bundle's model.lgb.txt compiled to machine code at load, or taken from the kernel "
        "cache; several times the trades per core). A compiled model must match ONNX Runtime "
        "within 1e-6 on the golden rows and 100,000 random rows at every load, else the bundle is "
        "refused (at start: exit 1; on reload: the last good one keeps serving). The pair model "
        "stays on ONNX Runtime",
    )
    max_concurrent_rpcs: int = _opt(
        1000,
        "scoring calls (Score, ScoreStream, ModelInfer; a stream counts as one) in progress at once; "
        "beyond it RESOURCE_EXHAUSTED at once. Health, reflection and metadata calls have "
        f"{CONTROL_HEADROOM} slots more, so probes are answered under overload",
    )
    max_streams_per_connection: int = _opt(
        100,
        "ScoreStream / ScorePairsStream calls one client connection may hold open at once; beyond "
        "it RESOURCE_EXHAUSTED (they count toward --max-concurrent-rpcs too)",
    )
    keepalive_time_s: float = _opt(
        30.0,
        "ping a client connection after this long without data while it has calls open; one that "
        "does not answer within --keepalive-timeout-s is closed and its calls cancelled",
    )
    keepalive_timeout_s: float = _opt(10.0, "how long a keepalive ping may go unanswered")
    min_client_ping_interval_s: float = _opt(
        10.0, "clients may send keepalive pings at most this often; pinging faster gets GOAWAY too_many_pings"
    )
    stream_window: int = _opt(128, "requests of one ScoreStream in flight before the engine stops reading it")
    grace_seconds: float = _opt(10.0, "on SIGTERM, how long in-flight calls may take to finish")
    watch: bool = _opt(False, "reload the bundle when its manifest.json changes", bool_flag=True)
    watch_interval_s: float = _opt(2.0, "how often --watch looks at the bundle's manifest")
    max_message_bytes: int = _opt(16 * 1024 * 1024, "largest gRPC message accepted or sent")
    max_connection_age_s: float = _opt(
        0.0,
        "close client connections after this many seconds (GOAWAY; clients reconnect and re-resolve, "
        "so new pods behind a headless Service get traffic); 0: never",
    )
    max_connection_age_grace_s: float = _opt(
        10.0, "after --max-connection-age-s, how long calls on the old connection may still take"
    )
    event_loop: str = _opt(
        "uvloop",
        "uvloop (libuv: less CPU per call) or asyncio (the standard library's loop, for comparison)",
    )
    explain_band: str = _opt(
        "HIGH",
        "trades scored in this risk band or above come back with reasons (their features' TreeSHAP "
        "contributions, computed in the explain-0 thread: CPU per explained trade, measured by "
        "loadtest/bench.py --scenarios explain_cost), unless the request's explain says otherwise: "
        "LOW (every trade), MEDIUM, HIGH, CRITICAL, or OFF (only requests with explain = EXPLAIN_ALL)",
    )
    break_autonomy: str = _opt(
        "",
        "what the engine may do about each class of sync break: CLASS=MODE pairs, comma separated, "
        f"CLASS one of {', '.join(BREAK_CLASSES)}; MODE monitor (flag only), propose (flag and "
        "propose corrections) or autonomous:C (corrections of breaks with confidence >= C are "
        "marked auto_approvable). Classes not named: MISSING and NONE monitor, the rest propose",
    )
    flag_store: str = _opt(
        "",
        "where flagged record pairs and operators' verdicts are kept, durably: sqlite:PATH (the "
        "file is created) or postgresql://user:password@host:5432/database (the tables are "
        "created). Empty: nowhere (breaks carry no flag_id, SubmitFeedback is refused)",
    )
    events_url: str = _opt(
        "",
        "publish an event for each flagged pair to this AMQP broker (amqp://user:pass@host:5672/vhost), "
        "through the flag store's outbox: needs --flag-store. Empty: no events",
    )
    events_exchange: str = _opt("tradescore.events", "the durable topic exchange events go to")
    event_min_confidence: float = _opt(
        0.0, "publish only flags whose believed side has at least this confidence (0: every flag)"
    )
    tls_cert: str = _opt(
        "",
        "PEM certificate chain of the gRPC port; with --tls-key the port serves TLS only. Both files "
        "are looked at again for each new connection and used once they changed and load",
    )
    tls_key: str = _opt("", "PEM private key of --tls-cert")
    tls_client_ca: str = _opt(
        "", "PEM CA bundle: clients must present a certificate it signed (mutual TLS); needs --tls-cert"
    )
    auth_tokens_file: str = _opt(
        "",
        "file of accepted bearer tokens, one per line: every call but health checks and reflection "
        "must send metadata 'authorization: Bearer TOKEN', else UNAUTHENTICATED; re-read on change",
    )
    probe_port: int = _opt(
        0,
        "also serve grpc.health.v1 and reflection, and nothing else, in plaintext on this port "
        "(for Kubernetes' gRPC probes when the gRPC port is TLS); 0: off",
    )
    http_port: int = _opt(
        0,
        "also serve the REST/JSON front door on this port: /v1 routes for TradeScorer and BreakScorer, "
        "the Open Inference Protocol's /v2 REST API, /openapi.json; same limits, tokens, TLS, "
        "batcher and metrics as the gRPC port. 0: off",
    )
    metrics_port: int = _opt(0, "serve Prometheus /metrics on this port (0: off)")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")

    def __post_init__(self) -> None:
        positive = (
            "max_batch_rows",
            "max_queue_rows",
            "max_trades_per_request",
            "max_inflight_batches",
            "intra_op_threads",
            "workers",
            "stream_window",
            "max_message_bytes",
            "max_concurrent_rpcs",
            "max_streams_per_connection",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if min(self.keepalive_time_s, self.keepalive_timeout_s, self.min_client_ping_interval_s) <= 0:
            raise SettingsError("keepalive and client ping intervals must be > 0")
        if self.max_connection_age_s < 0 or self.max_connection_age_grace_s < 0:
            raise SettingsError("max_connection_age_s and max_connection_age_grace_s must be >= 0")
        if self.inline_rows < 0:
            raise SettingsError("inline_rows must be >= 0")
        if self.max_wait_ms < 0 or self.grace_seconds < 0 or self.watch_interval_s <= 0:
            raise SettingsError("max_wait_ms and grace_seconds must be >= 0, watch_interval_s > 0")
        if self.max_trades_per_request > self.max_queue_rows:
            raise SettingsError("max_trades_per_request must not exceed max_queue_rows")
        if self.http_port and self.http_port in (self.port, self.probe_port, self.metrics_port):
            raise SettingsError("http_port must differ from port, probe_port and metrics_port")
        if not all(0 <= p < 65536 for p in (self.port, self.metrics_port, self.probe_port, self.http_port)):
            raise SettingsError("ports must be within 0..65535")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.probe_port and self.probe_port == self.port:
            raise SettingsError("probe_port must differ from port")
        if self.workers > 1 and self.port == 0:
            raise SettingsError("--workers > 1 needs a fixed --port to share")
        if self.model_backend not in BACKENDS:
            raise SettingsError(f"model_backend must be one of {', '.join(BACKENDS)}")
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(f"unknown event loop {self.event_loop!r}: one of {', '.join(EVENT_LOOPS)}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"unknown log level {self.log_level!r}")
        if self.explain_band.upper() not in EXPLAIN_BANDS:
            raise SettingsError(f"explain_band must be one of {', '.join(EXPLAIN_BANDS)}")
        parse_autonomy(self.break_autonomy)
        try:
            split_store(self.flag_store)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.events_url:
            if not self.flag_store:
                raise SettingsError("events_url needs flag_store: events are published from its outbox")
            if not self.events_url.startswith(("amqp://", "amqps://")):
                raise SettingsError("events_url must be an amqp:// or amqps:// URL")
        if not self.events_exchange:
            raise SettingsError("events_exchange must not be empty")
        if not 0.0 <= self.event_min_confidence <= 1.0:
            raise SettingsError("event_min_confidence must be in [0, 1]")

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def autonomy(self) -> dict[str, tuple[str, float]]:
        """--break-autonomy as {break class: (mode, confidence threshold)}, every class present."""
        return parse_autonomy(self.break_autonomy)


def _parse(kind: type, raw: str, name: str) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: cannot read {raw!r} as {kind.__name__}") from exc


_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str, "Path": Path}


def _kind(f: Any) -> type:
    return _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; unset flags stay None so the environment can fill them."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} [env {env}; default {default}]"
        if f.metadata.get("bool_flag"):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=f.name, type=_kind(f), default=None, help=help_text, metavar=f.name.upper()
            )


def from_sources(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags (where given), else ENGINE_* variables, else the defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        given = getattr(args, f.name, None) if args is not None else None
        if given is not None:
            values[f.name] = given
        elif ENV_PREFIX + f.name.upper() in env:
            values[f.name] = _parse(_kind(f), env[ENV_PREFIX + f.name.upper()], ENV_PREFIX + f.name.upper())
    return Settings(**values)
