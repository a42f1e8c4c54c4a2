"""The suite's own command-line options (Locust custom arguments) and their typed reading.

Each option can also be set as an environment variable (`LOCUST_LOAD_PROFILE=close`) or in a
Locust config file (`load-profile = close`). In distributed mode the master sends its values
to the workers with every spawn message, so workers need only `--worker --master-host`.

This module does not import Locust (importing it monkey-patches the process with gevent):
the options are one table, which `add_arguments` hands to Locust's parser and
`Options.defaults` reads directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .mix import DEFAULT_SEED, MIXES
from .slo import Thresholds

if TYPE_CHECKING:
    from locust.argument_parser import LocustArgumentParser

PROFILE_NAMES = ("steady", "open", "close", "flat")


@dataclass(frozen=True, slots=True)
class Spec:
    flag: str
    default: Any
    help: str
    type: type | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env_var(self) -> str:
        return "LOCUST_" + self.dest.upper()


SPECS = (
    Spec(
        "--load-profile",
        "steady",
        "steady (midday flow), open (market-open ramp to 3x), close (closing-auction burst, 8x), "
        "flat (-u users at --user-rate each, for capacity runs). Default: steady",
        choices=PROFILE_NAMES,
    ),
    Spec("--rate", 100.0, "midday calls/s, which the profiles are multiples of (default 100)", float),
    Spec(
        "--rate-scale",
        1.0,
        "multiply every profile's rate by this: 1 on a laptop, 10+ against a deployment (default 1)",
        float,
    ),
    Spec(
        "--user-rate",
        10.0,
        "calls/s each simulated client sends (Poisson arrivals); users = rate / user-rate. "
        "0: closed loop, each user calls again as soon as it is answered (flat profile only). Default 10",
        float,
    ),
    Spec(
        "--mix",
        "oms",
        "oms: 97%% single trades, 2%% gateway batches of 50-200, 1%% allocation blocks of 201-500; "
        "single: one trade per call. Default: oms",
        choices=tuple(MIXES),
    ),
    Spec(
        "--oip-share",
        0.0,
        "share of OMS calls sent instead as Open Inference Protocol ModelInfer (KServe v2) with the "
        "same trades' features as raw FP32, as a feature-store client would (default 0)",
        float,
    ),
    Spec(
        "--oip-bundle",
        "",
        "model bundle whose feature spec builds the ModelInfer inputs and names the model "
        "(default: the bundle shipped with the engine; give the one the engine serves)",
    ),
    Spec("--channels", 4, "gRPC channels (TCP connections) per Locust process (default 4)", int),
    Spec("--timeout-ms", 1000.0, "deadline of each call (default 1000)", float),
    Spec(
        "--trade-seed",
        DEFAULT_SEED,
        f"seed of the trade generator (default {DEFAULT_SEED}, the bundle's)",
        int,
    ),
    Spec("--check-responses", False, "parse and check every response (default: the first 8 of each client)"),
    Spec(
        "--metrics-url",
        "",
        "the engine's Prometheus endpoint(s), comma-separated (one per pod), e.g. "
        "http://127.0.0.1:9095/metrics: read before and after the run for the server-side p99 gate",
    ),
    Spec("--slo-p99-ms", 10.0, "gate: client-side p99 of single-trade calls, ms (default 10)", float),
    Spec("--slo-batch-p99-ms", 100.0, "gate: client-side p99 of multi-trade calls, ms (default 100)", float),
    Spec(
        "--slo-server-p99-ms",
        5.0,
        "gate: server-side p99 of single-trade calls from --metrics-url, ms (default 5)",
        float,
    ),
    Spec(
        "--slo-server-batch-p99-ms",
        50.0,
        "gate: server-side p99 of multi-trade calls from --metrics-url, ms (default 50)",
        float,
    ),
    Spec("--slo-error-ratio", 0.001, "gate: failed calls / calls at most this (default 0.001)", float),
    Spec(
        "--slo-rate-ratio",
        0.95,
        "gate: completed calls / calls due at least this (default 0.95; paced users only)",
        float,
    ),
)


def add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("TradeScore", "the engine's load profiles, trade mix and SLO gates")
    for spec in SPECS:
        kwargs: dict[str, Any] = {"default": spec.default, "help": spec.help, "env_var": spec.env_var}
        if isinstance(spec.default, bool):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = spec.type
        if spec.choices is not None:
            kwargs["choices"] = spec.choices
        group.add_argument(spec.flag, **kwargs)


@dataclass(frozen=True, slots=True)
class Options:
    load_profile: str
    rate: float
    rate_scale: float
    user_rate: float
    mix: str
    oip_share: float
    oip_bundle: str
    channels: int
    timeout_s: float
    trade_seed: int
    check_responses: bool
    metrics_urls: tuple[str, ...]
    slo_p99_ms: float
    slo_batch_p99_ms: float
    slo_server_p99_ms: float
    slo_server_batch_p99_ms: float
    slo_error_ratio: float
    slo_rate_ratio: float
    num_users: int | None
    run_time: float | None

    @staticmethod
    def defaults() -> Options:
        return Options.read(None)

    @staticmethod
    def read(parsed: Any) -> Options:
        """From Locust's `environment.parsed_options`; None: every option at its default."""

        def get(name: str) -> Any:
            if parsed is None:
                return next((s.default for s in SPECS if s.dest == name), None)
            return getattr(parsed, name, None)

        urls = tuple(u.strip() for u in str(get("metrics_url") or "").split(",") if u.strip())
        num_users, run_time = get("num_users"), get("run_time")
        return Options(
            load_profile=str(get("load_profile")),
            rate=float(get("rate")),
            rate_scale=float(get("rate_scale")),
            user_rate=float(get("user_rate")),
            mix=str(get("mix")),
            oip_share=float(get("oip_share") or 0.0),
            oip_bundle=str(get("oip_bundle") or ""),
            channels=int(get("channels")),
            timeout_s=float(get("timeout_ms")) / 1000.0,
            trade_seed=int(get("trade_seed")),
            check_responses=bool(get("check_responses")),
            metrics_urls=urls,
            slo_p99_ms=float(get("slo_p99_ms")),
            slo_batch_p99_ms=float(get("slo_batch_p99_ms")),
            slo_server_p99_ms=float(get("slo_server_p99_ms")),
            slo_server_batch_p99_ms=float(get("slo_server_batch_p99_ms")),
            slo_error_ratio=float(get("slo_error_ratio")),
            slo_rate_ratio=float(get("slo_rate_ratio")),
            num_users=int(num_users) if num_users else None,
            run_time=float(run_time) if run_time else None,
        )

    def thresholds(self) -> Thresholds:
        return Thresholds(
            p99_ms=self.slo_p99_ms,
            batch_p99_ms=self.slo_batch_p99_ms,
            server_p99_ms=self.slo_server_p99_ms,
            server_batch_p99_ms=self.slo_server_batch_p99_ms,
            error_ratio=self.slo_error_ratio,
            rate_ratio=self.slo_rate_ratio,
        )

    def problems(self) -> list[str]:
        """What is wrong with these options, in words (empty when they are usable)."""
        out: list[str] = []
        if self.rate <= 0 or self.rate_scale <= 0:
            out.append("--rate and --rate-scale must be > 0")
        if self.user_rate < 0:
            out.append("--user-rate must be >= 0")
        if self.user_rate == 0 and self.load_profile != "flat":
            out.append(f"--load-profile {self.load_profile} paces users: give --user-rate > 0 (0: flat only)")
        if self.channels < 1:
            out.append("--channels must be >= 1")
        if not 0.0 <= self.oip_share <= 1.0:
            out.append("--oip-share must be within 0..1")
        if self.timeout_s <= 0:
            out.append("--timeout-ms must be > 0")
        return out
