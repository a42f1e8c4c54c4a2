"""Break events: the flag store's outbox, published to a message broker (AMQP 0-9-1: RabbitMQ).

A flag is in the flag store (committed to disk) before its response is sent;
its event waits there, `published_at` empty, until the broker has confirmed it.
This thread takes the oldest waiting events, publishes each as a persistent
message on a durable topic exchange with publisher confirms, and only then
marks them published. So:

- a broker outage loses nothing: events wait in the store and go out, oldest
  first, once the broker is back (reconnects back off from 0.2 s to 5 s);
- a crash loses nothing: what was not marked is published again after the restart;
- an event may be delivered twice (confirmed, then the crash came before the
  mark): each carries its `event_id` as the AMQP `message_id`, and a consumer
  that deduplicates on it sees every flag exactly once.

Messages: exchange `--events-exchange` (topic, durable), routing key
`sync_break.<class>` (`sync_break.status`, `sync_break.missing`, ...), body the
event as JSON (UTF-8), `content_type` application/json, `type`
tradescore.sync_break.flagged, `delivery_mode` 2 (persistent).

pika's BlockingConnection runs in this one thread; the event loop never waits
on the broker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from engine.batching import name_os_thread
from engine.flag_store import StoreSpec, waiting_events
from engine.metrics import EngineMetrics

log = logging.getLogger(__name__)

EVENT_TYPE = "tradescore.sync_break.flagged"
BATCH = 200
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.2, 5.0


class OutboxPublisher:
    """Publishes the flag store's waiting events to an AMQP exchange, at least once, in order."""

    def __init__(
        self,
        store: StoreSpec,
        url: str,
        exchange: str,
        *,
        metrics: EngineMetrics | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.store = store
        self.url = url
        self.exchange = exchange
        self.poll_s = poll_s
        self._metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New events are in the store (called after each commit that wrote flags)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current batch; what is left waits in the store for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        name_os_thread("outbox")
        import pika
        import pika.exceptions

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5.0
        params.blocked_connection_timeout = 10.0
        connection: Any = None
        channel: Any = None
        backoff = MIN_BACKOFF_S
        db: Any = None
        try:
            while not self._stop.is_set():
                try:
                    if db is None:
                        db = self.store.connect()
                    if channel is None:
                        connection = pika.BlockingConnection(params)
                        channel = connection.channel()
                        channel.confirm_delivery()
                        channel.exchange_declare(self.exchange, "topic", durable=True)
                        self.connected = True
                        log.info("outbox: connected to %s, exchange %s", params.host, self.exchange)
                    waiting = self._refresh_pending(db)
                    if not waiting:
                        self._wake.wait(self.poll_s)
                        self._wake.clear()
                        continue
                    sent = self._publish(db, channel, pika)
                    if self._metrics is not None:
                        self._metrics.events_published.inc(sent)
                    backoff = MIN_BACKOFF_S
                except (pika.exceptions.AMQPError, OSError) as exc:
                    if self._metrics is not None:
                        self._metrics.event_publish_failures.inc()
                    log.warning("outbox: broker unavailable (%r); retrying in %.1f s", exc, backoff)
                    self.connected = False
                    if connection is not None and connection.is_open:
                        with contextlib.suppress(Exception):
                            connection.close()
                    connection, channel = None, None
                    self._stop.wait(backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
                except Exception as exc:  # noqa: BLE001 - the store (or anything else): log, wait, retry
                    log.error("outbox: flag store %s unreadable (%r); retrying", self.store, exc)
                    if db is not None:
                        with contextlib.suppress(Exception):
                            db.close()
                    db = None
                    self._stop.wait(MAX_BACKOFF_S)
        finally:
            if connection is not None and connection.is_open:
                with contextlib.suppress(Exception):
                    connection.close()
            if db is not None:
                db.close()

    def _refresh_pending(self, db: Any) -> int:
        cur = db.cursor()
        cur.execute("SELECT count(*) FROM flags WHERE published_at IS NULL AND publish = 1")
        (waiting,) = cur.fetchone()
        if self._metrics is not None:
            self._metrics.outbox_pending.set(waiting)
        return int(waiting)

    def _publish(self, db: Any, channel: Any, pika: Any) -> int:
        """Publish the oldest waiting events (each confirmed by the broker), then mark them; the count."""
        cur = db.cursor()
        rows = waiting_events(cur, self.store, BATCH)
        done: list[str] = []
        try:
            for flag_id, break_class, event in rows:
                properties = pika.BasicProperties(
                    message_id=flag_id,
                    content_type="application/json",
                    type=EVENT_TYPE,
                    delivery_mode=2,
                    timestamp=int(time.time()),
                )
                # with confirms on, this returns once the broker has the message (raises if refused)
                channel.basic_publish(
                    self.exchange, f"sync_break.{break_class.lower()}", event.encode("utf-8"), properties
                )
                done.append(flag_id)
        finally:
            if done:  # what the broker confirmed is marked even when a later publish failed
                marks = ", ".join("?" * len(done))  # one statement in autocommit mode: all or none
                cur.execute(
                    self.store.sql(f"UPDATE flags SET published_at = ? WHERE flag_id IN ({marks})"),
                    (time.time(), *done),
                )
        return len(done)
