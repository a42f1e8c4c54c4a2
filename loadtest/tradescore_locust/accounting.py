"""What each Locust process counts besides Locust's own stats, for the SLO gates.

- `LATENCIES`: every successful call's latency at microsecond resolution, by group
  (`single`: one trade per call, `batch`: more), see `latency`;
- `PACING`: of the calls paced users were due to send (their Poisson schedule
  points up to the moment they stopped), how many they completed. Counting the
  schedule's own points, not `users x rate x time`, keeps the ratio exact on short
  runs, where a Poisson count alone strays by ±1/sqrt(calls) (±6 % at 300 calls).

Workers hand both to the master with every stats report (`hooks`); a local run
reads them directly.
"""

from __future__ import annotations

from .latency import LatencyBook


class Pacing:
    """Calls due and calls completed, summed over the users that have stopped."""

    def __init__(self) -> None:
        self.due = 0.0
        self.done = 0

    def add(self, due: float, done: int) -> None:
        self.due += due
        self.done += done

    def drain(self) -> tuple[float, int]:
        out = (self.due, self.done)
        self.due, self.done = 0.0, 0
        return out


LATENCIES = LatencyBook()
PACING = Pacing()
