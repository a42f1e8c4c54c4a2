"""Locust users: an order-management system on unary `Score`, a gateway on `ScoreStream`.

Each user is one client connection's worth of traffic: it sends `--user-rate`
calls/s with Poisson arrivals (exponential gaps on a schedule, so slow answers
do not silently lower the offered rate: a late user catches up, and a backlog
over a second is dropped and shows as achieved < offered, `accounting.PACING`), or, with
`--user-rate 0`, calls again as soon as it is answered (closed loop, for
capacity runs). Every call draws its request from the trade mix (`mix`).
"""

from __future__ import annotations

import random
import time

import gevent
from locust import User, task
from locust.env import Environment

from .accounting import PACING
from .client import POOL, StreamClient, UnaryClient, normalize_target
from .mix import RequestMix, build_mix, oip_payloads
from .options import Options

#: responses of each client parsed and checked in full (all of them with --check-responses)
CHECKED_RESPONSES = 8
#: a paced user further behind its schedule than this drops the backlog
MAX_BACKLOG_S = 1.0

_MIXES: dict[tuple[str, int], RequestMix] = {}


def request_mix(options: Options) -> RequestMix:
    """This process's pre-serialized requests for the chosen mix (built once per process)."""
    from .mix import MIXES

    key = (options.mix, options.trade_seed)
    if key not in _MIXES:
        _MIXES[key] = build_mix(MIXES[options.mix], seed=options.trade_seed)
    return _MIXES[key]


class _EngineUser(User):
    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.options = Options.read(environment.parsed_options)
        self.mix = request_mix(self.options)
        self._rng = random.Random()
        self._rate = self.options.user_rate
        self._next = 0.0
        self._issued = 0  # schedule points drawn (each one call due at that time)
        self._done = 0  # calls completed (failed or not)
        self._checks = -1 if self.options.check_responses else CHECKED_RESPONSES

    def target(self) -> str:
        if not self.host:
            raise ValueError("no target: give --host HOST:PORT (or dns:///NAME:PORT)")
        return normalize_target(self.host)

    def on_start(self) -> None:
        if self._rate > 0:
            # a random phase: users spawned together do not call together
            self._next = time.monotonic() + self._rng.expovariate(self._rate)
            self._issued = 1
            gevent.sleep(self._next - time.monotonic())

    def on_stop(self) -> None:
        if self._rate <= 0 or self._issued == 0:
            return
        now = time.monotonic()
        due = float(self._issued)
        if self._next > now:
            due -= 1  # the user was waiting for its next call: not due yet
        else:
            due += (now - self._next) * self._rate  # a call outlasted its successors' due times
        PACING.add(due, self._done)
        self._issued = self._done = 0

    def wait_time(self) -> float:
        """Called by Locust after every task: the call just made is done; wait for the next point."""
        if self._rate <= 0:
            return 0.0
        self._done += 1
        now = time.monotonic()
        self._next += self._rng.expovariate(self._rate)
        self._issued += 1
        if self._next < now - MAX_BACKLOG_S:
            # too far behind: the backlog's calls are dropped (they stay due)
            self._issued += round((now - self._next) * self._rate)
            self._next = now
        return max(0.0, self._next - now)


def oip_requests(options: Options, mix: RequestMix) -> tuple[tuple[bytes, ...], ...]:
    """This process's ModelInfer requests for the mix's requests (built once per process)."""
    key = (options.mix, options.trade_seed, options.oip_bundle)
    if key not in _OIP:
        from engine.models.bundle import DEFAULT_BUNDLE

        _OIP[key] = oip_payloads(mix, options.oip_bundle or DEFAULT_BUNDLE)
    return _OIP[key]


_OIP: dict[tuple[str, int, str], tuple[tuple[bytes, ...], ...]] = {}


class OmsUser(_EngineUser):
    """An OMS on unary `Score`, asking `GetModelInfo` when it connects and now and then after.

    With `--oip-share`, that share of its calls go out instead as the Open Inference
    Protocol's `ModelInfer` with the same trades' features (raw FP32), reported as
    `ModelInfer[<trades>]`.
    """

    weight = 4

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        channel = POOL.get(self.target(), self.options.channels)
        self.client = UnaryClient(environment, channel, self.options.timeout_s, self._checks)
        self._oip_share = self.options.oip_share
        self._oip = oip_requests(self.options, self.mix) if self._oip_share > 0 else ()

    def on_start(self) -> None:
        self.client.model_info()
        super().on_start()

    @task(500)
    def score(self) -> None:
        prepared, i = self.mix.pick()
        trades = prepared.trades[i]
        group = "single" if trades == 1 else "batch"
        if self._oip and self._rng.random() < self._oip_share:
            payload = self._oip[self.mix.prepared.index(prepared)][i]
            self.client.infer(payload, trades, f"ModelInfer[{prepared.tier.label}]", group)
            return
        self.client.score(prepared.payloads[i], trades, f"Score[{prepared.tier.label}]", group)

    @task(1)
    def model_info(self) -> None:
        self.client.model_info()


class StreamGatewayUser(_EngineUser):
    """A trading gateway holding one `ScoreStream` open: one message in flight, answered in order."""

    weight = 1

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        channel = POOL.get(self.target(), self.options.channels)
        self.client = StreamClient(environment, channel, self.options.timeout_s, self._checks)

    def on_stop(self) -> None:
        self.client.close()
        super().on_stop()

    @task
    def score(self) -> None:
        prepared, i = self.mix.pick()
        trades = prepared.trades[i]
        group = "single" if trades == 1 else "batch"
        self.client.score(prepared.payloads[i], trades, f"ScoreStream[{prepared.tier.label}]", group)
