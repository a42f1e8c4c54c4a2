"""What each Locust process counts besides Locust's own stats, for the SLO gates.

- `LATENCIES`: every successful call's latency at microsecond resolution, by group
  (`single`: one trade per call, `batch`: more), see `latency`;
- `USER_SECONDS`: how long users were running, summed over users: with each user
  paced at `--user-rate` calls/s, the offered load is `user-seconds x user-rate` calls,
  counted where the users run (no lag from the master's view of the user count).

Workers hand both to the master with every stats report (`hooks`); a local run
reads them directly.
"""

from __future__ import annotations

import time

from .latency import LatencyBook


class UserClock:
    """User-seconds: ∫ running users dt."""

    def __init__(self) -> None:
        self.active = 0
        self._since = time.monotonic()
        self._seconds = 0.0

    def _advance(self) -> None:
        now = time.monotonic()
        self._seconds += self.active * (now - self._since)
        self._since = now

    def begin(self) -> None:
        self._advance()
        self.active += 1

    def end(self) -> None:
        self._advance()
        self.active = max(0, self.active - 1)

    def drain(self) -> float:
        """User-seconds since the last drain (or start), and start counting afresh."""
        self._advance()
        seconds, self._seconds = self._seconds, 0.0
        return seconds


LATENCIES = LatencyBook()
USER_SECONDS = UserClock()
