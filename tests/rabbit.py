"""A private RabbitMQ node for tests (Debian's rabbitmq-server; scripts/install-system-deps), and
helpers to read what reached it and what still waits in a flag store's outbox."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from engine.flag_store import StoreSpec

from .conftest import free_port

RABBITMQ = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EXCHANGE = "tradescore.events"


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


#: the queue a case-management system would read every break event from
CONSUMER_QUEUE = "case-management"


def bind_consumer(broker: Broker) -> None:
    """The engine's exchange and a durable queue bound to every break event, as a consumer sets them up."""
    channel = broker.channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True)
    channel.queue_declare(CONSUMER_QUEUE, durable=True)
    channel.queue_bind(CONSUMER_QUEUE, EXCHANGE, "sync_break.#")
    channel.connection.close()


def drain(broker: Broker, queue: str = CONSUMER_QUEUE) -> list[str]:
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
