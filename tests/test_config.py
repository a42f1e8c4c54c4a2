"""Settings: flags > ENGINE_* environment > defaults, with clear refusals."""

from __future__ import annotations

import argparse
import asyncio
import re

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


def test_break_autonomy_defaults_and_overrides() -> None:
    assert Settings().autonomy == {
        "MISSING": ("monitor", 1.0),
        "STATUS": ("propose", 1.0),
        "VALUE": ("propose", 1.0),
        "STATIC_DATA": ("propose", 1.0),
        "NONE": ("monitor", 1.0),
    }
    given = from_sources(None, {"ENGINE_BREAK_AUTONOMY": "static_data=autonomous:0.9, VALUE=monitor"})
    assert given.autonomy["STATIC_DATA"] == ("autonomous", 0.9)
    assert given.autonomy["VALUE"] == ("monitor", 1.0)
    assert given.autonomy["MISSING"] == ("monitor", 1.0)  # not named: keeps its default


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("TYPO=monitor", "CLASS one of"),
        ("STATUS", "CLASS one of"),
        ("STATUS=approve", "MODE is monitor, propose or autonomous"),
        ("STATUS=propose:0.5", "MODE is monitor, propose or autonomous"),
        ("STATUS=autonomous", "needs a confidence"),
        ("STATUS=autonomous:1.5", "must be in (0, 1]"),
    ],
)
def test_bad_break_autonomy_is_refused(spec: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings(break_autonomy=spec)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"flag_store": "mysql://db/flags"}, "want sqlite:PATH"),
        ({"events_url": "amqp://127.0.0.1:5672/"}, "events_url needs flag_store"),
        ({"events_url": "http://broker", "flag_store": "sqlite:f.sqlite"}, "amqp:// or amqps://"),
        ({"event_min_confidence": 1.5}, "event_min_confidence must be in [0, 1]"),
        ({"events_exchange": ""}, "events_exchange must not be empty"),
    ],
)
def test_bad_flag_and_event_settings_are_refused(given: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings(**given)  # type: ignore[arg-type]
