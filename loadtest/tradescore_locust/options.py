"""The suite's own command-line options (Locust custom arguments) and their typed reading.

Each option can also be set as an environment variable (`LOCUST_LOAD_PROFILE=close`) or in a
Locust config file (`load-profile = close`). In distributed mode the master sends its values
to the workers with every spawn message, so workers need only `--worker --master-host`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from locust.argument_parser import LocustArgumentParser

from .mix import DEFAULT_SEED, MIXES

PROFILE_NAMES = ("steady", "open", "close", "flat")


def add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("TradeScore", "the engine's load profiles, trade mix and SLO gates")
    group.add_argument(
        "--load-profile",
        choices=PROFILE_NAMES,
        default="steady",
        env_var="LOCUST_LOAD_PROFILE",
        help="steady (midday flow), open (market-open ramp to 3x), close (closing-auction burst, 8x), "
        "flat (-u users at --user-rate each, for capacity runs). Default: steady",
    )
    group.add_argument(
        "--rate",
        type=float,
        default=100.0,
        env_var="LOCUST_RATE",
        help="midday calls/s, which the profiles are multiples of (default 100: ~700 trades/s, OMS mix)",
    )
    group.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        env_var="LOCUST_RATE_SCALE",
        help="multiply every profile's rate by this: 1 on a laptop, 10+ against a deployment (default 1)",
    )
    group.add_argument(
        "--user-rate",
        type=float,
        default=10.0,
        env_var="LOCUST_USER_RATE",
        help="calls/s each simulated client sends (Poisson arrivals); users = rate / user-rate. "
        "0: closed loop, each user calls again as soon as it is answered (flat profile only). Default 10",
    )
    group.add_argument(
        "--mix",
        choices=tuple(MIXES),
        default="oms",
        env_var="LOCUST_MIX",
        help="oms: 97%% single trades, 2%% gateway batches of 50-200, 1%% allocation blocks of 201-500; "
        "single: one trade per call. Default: oms",
    )
    group.add_argument(
        "--channels",
        type=int,
        default=4,
        env_var="LOCUST_CHANNELS",
        help="gRPC channels (TCP connections) per Locust process, shared by its users (default 4)",
    )
    group.add_argument(
        "--timeout-ms",
        type=float,
        default=1000.0,
        env_var="LOCUST_TIMEOUT_MS",
        help="deadline of each call (default 1000)",
    )
    group.add_argument(
        "--trade-seed",
        type=int,
        default=DEFAULT_SEED,
        env_var="LOCUST_TRADE_SEED",
        help=f"seed of the engine's trade generator (default {DEFAULT_SEED}, the shipped bundle's)",
    )
    group.add_argument(
        "--check-responses",
        action="store_true",
        default=False,
        env_var="LOCUST_CHECK_RESPONSES",
        help="parse and check every response (default: the first 8 of each client, then only their size)",
    )
    group.add_argument(
        "--metrics-url",
        default="",
        env_var="LOCUST_METRICS_URL",
        help="the engine's Prometheus endpoint(s), comma-separated (one per pod), e.g. "
        "http://127.0.0.1:9095/metrics: read before and after the run for the server-side p99 gate",
    )
    group.add_argument(
        "--slo-p99-ms",
        type=float,
        default=10.0,
        env_var="LOCUST_SLO_P99_MS",
        help="gate: client-side p99 of single-trade calls, ms (default 10)",
    )
    group.add_argument(
        "--slo-batch-p99-ms",
        type=float,
        default=100.0,
        env_var="LOCUST_SLO_BATCH_P99_MS",
        help="gate: client-side p99 of multi-trade calls, ms (default 100)",
    )
    group.add_argument(
        "--slo-server-p99-ms",
        type=float,
        default=5.0,
        env_var="LOCUST_SLO_SERVER_P99_MS",
        help="gate: server-side p99 from --metrics-url, ms (default 5)",
    )
    group.add_argument(
        "--slo-error-ratio",
        type=float,
        default=0.001,
        env_var="LOCUST_SLO_ERROR_RATIO",
        help="gate: failed calls / calls at most this (default 0.001)",
    )
    group.add_argument(
        "--slo-rate-ratio",
        type=float,
        default=0.95,
        env_var="LOCUST_SLO_RATE_RATIO",
        help="gate: completed calls / offered calls at least this (default 0.95; paced users only)",
    )


@dataclass(frozen=True, slots=True)
class Options:
    load_profile: str
    rate: float
    rate_scale: float
    user_rate: float
    mix: str
    channels: int
    timeout_s: float
    trade_seed: int
    check_responses: bool
    metrics_urls: tuple[str, ...]
    slo_p99_ms: float
    slo_batch_p99_ms: float
    slo_server_p99_ms: float
    slo_error_ratio: float
    slo_rate_ratio: float
    num_users: int | None
    run_time: float | None

    @staticmethod
    def read(parsed: Any) -> Options:
        """From Locust's `environment.parsed_options` (None: the defaults, e.g. a library-run Environment)."""
        if parsed is None:
            from locust.argument_parser import get_parser

            parser = get_parser()
            add_arguments(parser)
            parsed = parser.parse_args([])
        urls = tuple(u.strip() for u in str(parsed.metrics_url or "").split(",") if u.strip())
        run_time = getattr(parsed, "run_time", None)
        return Options(
            load_profile=str(parsed.load_profile),
            rate=float(parsed.rate),
            rate_scale=float(parsed.rate_scale),
            user_rate=float(parsed.user_rate),
            mix=str(parsed.mix),
            channels=int(parsed.channels),
            timeout_s=float(parsed.timeout_ms) / 1000.0,
            trade_seed=int(parsed.trade_seed),
            check_responses=bool(parsed.check_responses),
            metrics_urls=urls,
            slo_p99_ms=float(parsed.slo_p99_ms),
            slo_batch_p99_ms=float(parsed.slo_batch_p99_ms),
            slo_server_p99_ms=float(parsed.slo_server_p99_ms),
            slo_error_ratio=float(parsed.slo_error_ratio),
            slo_rate_ratio=float(parsed.slo_rate_ratio),
            num_users=int(parsed.num_users) if getattr(parsed, "num_users", None) else None,
            run_time=float(run_time) if run_time else None,
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
        if self.timeout_s <= 0:
            out.append("--timeout-ms must be > 0")
        return out
