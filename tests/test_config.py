"""Settings: flags > ENGINE_* environment > defaults, with clear refusals."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from engine.config import Settings, SettingsError, add_arguments, from_sources
from engine.server import run_loop


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_beat_environment_beats_defaults() -> None:
    env = {"ENGINE_MAX_BATCH_ROWS": "64", "ENGINE_PORT": "6000", "ENGINE_BATCHING": "false"}
    s = from_sources(parse("--port", "7000"), env)
    assert s.port == 7000 and s.max_batch_rows == 64 and s.batching is False
    assert s.max_wait_ms == Settings().max_wait_ms
    assert from_sources(parse("--batching"), env).batching is True


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ENGINE_MAX_BATCH_ROWS": "0"}, "max_batch_rows"),
        ({"ENGINE_PORT": "seven"}, "ENGINE_PORT"),
        ({"ENGINE_WORKERS": "2", "ENGINE_PORT": "0"}, "fixed --port"),
        ({"ENGINE_MAX_TRADES_PER_REQUEST": "9000"}, "max_queue_rows"),
        ({"ENGINE_WATCH": "maybe"}, "ENGINE_WATCH"),
        ({"ENGINE_EVENT_LOOP": "tokio"}, "unknown event loop 'tokio'"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_sources(parse(), env)


@pytest.mark.parametrize("name, module", [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_event_loop_setting_picks_the_loop(name: str, module: str) -> None:
    async def on_the_named_loop() -> int:
        return int(type(asyncio.get_running_loop()).__module__.split(".")[0] == module)

    assert run_loop(Settings(event_loop=name), on_the_named_loop()) == 1
