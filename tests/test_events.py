"""Break events reach a real RabbitMQ through the flag store's outbox, and a broker outage loses none.

The broker is Debian's rabbitmq-server (scripts/install-system-deps installs it),
started by the test on free ports with its own data folder, stopped and started
again mid-run, and stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.flags import StoreSpec

from .conftest import EngineProcess, ServerFactory
from .test_pairs import T0, pair, view

pytestmark = pytest.mark.slow

RABBITMQ = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EXCHANGE = "tradescore.events"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A private RabbitMQ node: its own ports, data folder and Erlang port mapper."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.epmd_port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text("loopback_users = none\n")
        self.env = {
            **os.environ,
            "HOME": str(root),
            "RABBITMQ_NODENAME": f"tradescore-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(root / "plugins-expand"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout: float = 60.0) -> None:
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [RABBITMQ], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited: {(self.root / 'server.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(Exception):
                self.channel().connection.close()
                return
            time.sleep(0.5)
        raise RuntimeError("rabbitmq-server did not accept connections in time")

    def stop(self) -> None:
        """Stop the node (SIGTERM to its process group; SIGKILL if it lingers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, timeout=10)

    def channel(self) -> Any:
        import pika

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 2
        return pika.BlockingConnection(params).channel()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(RABBITMQ).exists():
        pytest.fail("rabbitmq-server is not installed: run scripts/install-system-deps (as root)")
    node = Broker(tmp_path / "rabbitmq")
    node.start()
    try:
        yield node
    finally:
        node.close()


def drain(broker: Broker, queue: str) -> list[str]:
    """Every message id waiting on `queue` (acknowledged as read)."""
    channel = broker.channel()
    ids: list[str] = []
    try:
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return ids
            assert properties.content_type == "application/json" and properties.delivery_mode == 2
            assert method.routing_key.startswith("sync_break.") and body.startswith(b"{")
            ids.append(properties.message_id)
    finally:
        channel.connection.close()


def outbox_left(store: StoreSpec) -> int:
    with contextlib.closing(store.connect()) as db:
        cur = db.cursor()
        cur.execute("SELECT count(*) FROM flags WHERE published_at IS NULL AND publish = 1")
        (n,) = cur.fetchone()
    return int(n)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_every_flag_reaches_the_broker_once_across_an_outage(
    start_engine: ServerFactory, broker: Broker, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    # the downstream consumer's durable queue, bound before anything is published
    channel = broker.channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True)
    channel.queue_declare("case-management", durable=True)
    channel.queue_bind("case-management", EXCHANGE, "sync_break.#")
    channel.connection.close()

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

    received = drain(broker, "case-management")
    assert len(before) == 20 and set(received) == set(before) | set(during)  # none lost
    assert len(set(received)) == 40  # and deduplicated on the event id, each flag exactly once
    published = engine.metrics.registry.get_sample_value("engine_events_published_total")
    failures = engine.metrics.registry.get_sample_value("engine_event_publish_failures_total")
    assert published is not None and published >= 40 and failures is not None and failures >= 1


def test_a_killed_engine_loses_no_event(
    engine_process: Callable[..., EngineProcess], broker: Broker, tmp_path: Path
) -> None:
    channel = broker.channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True)
    channel.queue_declare("case-management", durable=True)
    channel.queue_bind("case-management", EXCHANGE, "sync_break.#")
    channel.connection.close()
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
    received = drain(broker, "case-management")
    assert set(received) == set(ids) and len(set(received)) == 20
