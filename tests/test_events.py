"""Break events reach a real RabbitMQ through the flag store's outbox, and a broker outage loses none.

The broker is Debian's rabbitmq-server (scripts/install-system-deps installs it),
started by the test on free ports with its own data folder, stopped and started
again mid-run, and stopped at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.flag_store import StoreSpec

from .conftest import EngineProcess, ServerFactory
from .rabbit import Broker, bind_consumer, drain, outbox_left
from .test_pairs import T0, pair, view

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_every_flag_reaches_the_broker_once_across_an_outage(
    start_engine: ServerFactory, broker: Broker, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    # the downstream consumer's durable queue, bound before anything is published
    bind_consumer(broker)

    if kind == "sqlite":
        store = StoreSpec("sqlite", str(tmp_path / "flags.sqlite"))
        given = f"sqlite:{store.target}"
    else:  # the outbox in a real PostgreSQL database
        given = request.getfixturevalue("postgres_url")
        store = StoreSpec("postgresql", given)
    engine, grpc_channel = await start_engine(flag_store=given, events_url=broker.url)
    stub = pb_grpc.BreakScorerStub(grpc_channel)

    async def flag_some(first: int, calls: int) -> list[str]:
        ids = []
        for c in range(first, first + calls):
            request = pb.ScorePairsRequest(
                pairs=[
                    pair(f"drift-{c}", view(t=T0 + 900), view("risk", status="pending")),
                    pair(f"gone-{c}", view()),
                    pair(f"clean-{c}", view(), view("risk")),
                ]
            )
            scores = (await stub.ScorePairs(request, timeout=10)).scores
            ids += [s.flag_id for s in scores if s.is_break]
        return ids

    before = await flag_some(0, 10)
    deadline = time.monotonic() + 30
    while outbox_left(store) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert outbox_left(store) == 0

    await asyncio.to_thread(broker.stop)  # the broker goes away: scoring goes on, events wait in the store
    during = await flag_some(10, 10)
    assert len(during) == 20 and outbox_left(store) == 20
    await asyncio.to_thread(broker.start)  # same node, same data: the durable queue and its messages are back
    deadline = time.monotonic() + 60
    while outbox_left(store) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert outbox_left(store) == 0, "events still waiting after the broker came back"

    received = drain(broker)
    assert len(before) == 20 and set(received) == set(before) | set(during)  # none lost
    assert len(set(received)) == 40  # and deduplicated on the event id, each flag exactly once
    published = engine.metrics.registry.get_sample_value("engine_events_published_total")
    failures = engine.metrics.registry.get_sample_value("engine_event_publish_failures_total")
    assert published is not None and published >= 40 and failures is not None and failures >= 1


def test_a_killed_engine_loses_no_event(
    engine_process: Callable[..., EngineProcess], broker: Broker, tmp_path: Path
) -> None:
    bind_consumer(broker)
    store = StoreSpec("sqlite", str(tmp_path / "flags.sqlite"))
    args = ("--flag-store", f"sqlite:{store.target}", "--events-url", broker.url)

    broker.stop()  # the events can only wait in the outbox
    first = engine_process(*args)
    ids: list[str] = []
    with grpc.insecure_channel(first.target) as grpc_channel:
        stub = pb_grpc.BreakScorerStub(grpc_channel)
        for c in range(10):
            request = pb.ScorePairsRequest(
                pairs=[
                    pair(f"drift-{c}", view(t=T0 + 900), view("risk", status="pending")),
                    pair(f"gone-{c}", view()),
                ]
            )
            ids += [s.flag_id for s in stub.ScorePairs(request, timeout=30).scores if s.is_break]
    assert len(ids) == 20 and outbox_left(store) == 20
    first.proc.kill()  # SIGKILL: no drain, no goodbye
    first.proc.communicate(timeout=30)  # reaps it and closes its pipe

    broker.start()
    engine_process(*args)  # a new engine on the same store publishes what the dead one left
    deadline = time.monotonic() + 60
    while outbox_left(store) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert outbox_left(store) == 0, "the restarted engine did not publish the dead one's events"
    received = drain(broker)
    assert set(received) == set(ids) and len(set(received)) == 20
