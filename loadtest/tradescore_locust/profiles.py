"""Load profiles: how the offered call rate moves through a run (the shape itself: `shapes`).

Intraday volume is U-shaped (/work/shared/DOMAIN.md, "Volume and peaks"): about
120 million DTCC transactions a day, ≈ 5,000/s averaged over a 6.5-hour US
session, with the open and above all the closing auction several times the
midday rate; DOMAIN.md's default scale for one broker-dealer's engine is a
steady midday flow, an opening ramp to ~3× it and a closing-auction burst of
~8× for a few minutes. The profiles below are those three shapes, written as
multiples of the midday rate (`--rate` × `--rate-scale` calls/s) at fractions
of the run, so one shape runs in two minutes on a laptop and in an hour against
a deployment (`--run-time` stretches it; without it each profile has a default
length).

With the default `--rate 100` and the OMS mix (≈ 7 trades per call) the midday
flow is ≈ 700 trades/s — a large broker-dealer's share of the industry's
5,000/s — the open peaks at ≈ 2,100 and the close at ≈ 5,600 trades/s.

The offered rate becomes users: each user sends `--user-rate` calls/s with
Poisson arrivals, so `users = ceil(rate / user_rate)`, re-evaluated every second.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from .options import Options


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    #: (fraction of the run, multiple of the midday rate), piecewise linear between points
    points: tuple[tuple[float, float], ...]
    default_seconds: float

    def multiple(self, fraction: float) -> float:
        xs = [p[0] for p in self.points]
        i = bisect.bisect_right(xs, fraction)
        if i == 0:
            return self.points[0][1]
        if i >= len(self.points):
            return self.points[-1][1]
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        return y0 + (y1 - y0) * (fraction - x0) / (x1 - x0)

    @property
    def peak(self) -> float:
        return max(m for _, m in self.points)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("steady", "midday flow: the midday rate throughout", ((0.0, 1.0), (1.0, 1.0)), 120.0),
        Profile(
            "open",
            "market open: pre-open trickle (0.3x), the opening ramp to 3x, a plateau, then a decay to 1.2x",
            ((0.0, 0.3), (0.1, 0.3), (0.25, 3.0), (0.5, 3.0), (1.0, 1.2)),
            180.0,
        ),
        Profile(
            "close",
            "closing auction: midday (1x), the afternoon pick-up to 2x, the auction burst at 8x "
            "for 15% of the run, then the post-close trickle (0.3x)",
            ((0.0, 1.0), (0.4, 1.0), (0.7, 2.0), (0.73, 8.0), (0.88, 8.0), (0.9, 0.3), (1.0, 0.3)),
            180.0,
        ),
        Profile("flat", "-u users at --user-rate each, or closed loop with --user-rate 0", (), 60.0),
    )
}


def duration(options: Options) -> float:
    return options.run_time or PROFILES[options.load_profile].default_seconds


def target_users(options: Options, elapsed: float) -> int:
    """Users the profile wants `elapsed` seconds into the run."""
    profile = PROFILES[options.load_profile]
    if profile.name == "flat":
        return max(1, options.num_users or 1)
    rate = options.rate * options.rate_scale * profile.multiple(elapsed / duration(options))
    return max(1, math.ceil(rate / options.user_rate - 1e-9))


def describe(options: Options, trades_per_call: float) -> str:
    """One line a person can check before trusting a run: the profile's rates, users and length."""
    profile = PROFILES[options.load_profile]
    seconds = duration(options)
    if profile.name == "flat":
        users = max(1, options.num_users or 1)
        pace = f"{options.user_rate:g} calls/s each" if options.user_rate > 0 else "closed loop"
        return f"profile flat: {users} users, {pace}, {seconds:g} s"
    midday = options.rate * options.rate_scale
    peak = midday * profile.peak
    return (
        f"profile {profile.name}: {profile.description}; midday {midday:,.0f} calls/s "
        f"(~{midday * trades_per_call:,.0f} trades/s), peak {peak:,.0f} calls/s "
        f"(~{peak * trades_per_call:,.0f} trades/s, {math.ceil(peak / options.user_rate)} users), "
        f"{seconds:g} s"
    )
