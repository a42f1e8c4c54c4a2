"""Client-side latency at microsecond resolution, mergeable across Locust workers.

Locust keeps response times rounded to whole milliseconds below 100 ms, so its
p99 cannot tell 0.6 ms from 1.4 ms. Every call is therefore also counted here,
in log-spaced buckets (40 per decade: each bucket spans 5.9 %, so a quantile is
off by at most that much), from 10 µs to 100 s. A bucket array is a plain list
of ints: workers send theirs to the master with each stats report and the
master adds them up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

LOWEST_S = 1e-5
PER_DECADE = 40
DECADES = 7
SIZE = PER_DECADE * DECADES + 2  # [0] below LOWEST_S, [-1] at or above LOWEST_S * 10**DECADES
_SCALE = PER_DECADE / math.log(10)
_LOG_LOWEST = math.log(LOWEST_S)


def bucket_of(seconds: float) -> int:
    if seconds < LOWEST_S:
        return 0
    return min(SIZE - 1, 1 + int((math.log(seconds) - _LOG_LOWEST) * _SCALE))


def upper_bound(index: int) -> float:
    """Upper edge (seconds) of bucket `index`; the last bucket reports its lower edge."""
    if index == 0:
        return LOWEST_S
    return LOWEST_S * 10 ** (min(index, SIZE - 2) / PER_DECADE)


class LatencyHistogram:
    """Counts of call latencies by log bucket."""

    __slots__ = ("counts",)

    def __init__(self, counts: Iterable[int] | None = None) -> None:
        self.counts = list(counts) if counts is not None else [0] * SIZE
        if len(self.counts) != SIZE:
            raise ValueError(f"expected {SIZE} buckets, got {len(self.counts)}")

    def record(self, seconds: float) -> None:
        self.counts[bucket_of(seconds)] += 1

    def add(self, counts: Iterable[int]) -> None:
        for i, c in enumerate(counts):
            self.counts[i] += c

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the `q` quantile (seconds), or None when empty."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return upper_bound(i)
        return upper_bound(SIZE - 1)


class LatencyBook:
    """One histogram per call group (`single`, `batch`, ...); `drain()` hands over and resets."""

    def __init__(self) -> None:
        self.groups: dict[str, LatencyHistogram] = {}

    def record(self, group: str, seconds: float) -> None:
        hist = self.groups.get(group)
        if hist is None:
            hist = self.groups[group] = LatencyHistogram()
        hist.record(seconds)

    def drain(self) -> dict[str, list[int]]:
        out = {g: h.counts for g, h in self.groups.items() if any(h.counts)}
        self.groups = {}
        return out

    def merge(self, data: Mapping[str, Iterable[int]]) -> None:
        for group, counts in data.items():
            hist = self.groups.get(group)
            if hist is None:
                hist = self.groups[group] = LatencyHistogram()
            hist.add(counts)

    def clear(self) -> None:
        self.groups = {}
