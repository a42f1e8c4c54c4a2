"""The Locust `LoadTestShape` that plays the profile named by `--load-profile` (see `profiles`)."""

from __future__ import annotations

from locust import LoadTestShape

from .options import Options
from .profiles import duration, target_users


class ProfileShape(LoadTestShape):
    """The profile named by `--load-profile`, over `--run-time` (or the profile's default length).

    `use_common_options`: `--run-time` sets the length and `-u` the flat profile's users.
    """

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        if self.runner is None:
            return None
        options = Options.read(self.runner.environment.parsed_options)
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]  # Locust: unannotated
        if elapsed >= duration(options):
            return None
        users = target_users(options, elapsed)
        # reach each second's target within about a second; the same tick twice is not re-applied
        return users, float(max(10, users))
