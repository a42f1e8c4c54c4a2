"""`kill -9` of a serving engine under load loses no acknowledged flag, feedback or event.

A real RabbitMQ node and a real `engine serve` (SQLite flag store, events on). Client threads
score pairs (each request flags two breaks) and confirm one flag of each answer, as fast as they
can; the engine is killed with SIGKILL while they run. A new engine on the same store then
publishes what the dead one had not. What a client got an answer for before the kill is what the
engine promised: every flag id it received must be in the store and reach a consumer (after
deduplicating on the event id), every verdict it saw acknowledged must be in the store.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.flag_store import StoreSpec

from .conftest import EngineProcess
from .rabbit import Broker, bind_consumer, drain, outbox_left
from .test_pairs import T0, pair, view

#: kills an engine under load and starts another, with RabbitMQ and PostgreSQL (slow: not in --fast)
pytestmark = pytest.mark.slow

CLIENTS = 4


def _stored(store: StoreSpec) -> tuple[set[str], dict[str, str]]:
    with contextlib.closing(store.connect()) as db:
        cur = db.cursor()
        cur.execute("SELECT flag_id FROM flags")
        flags = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT flag_id, verdict FROM feedback")
        verdicts = {row[0]: row[1] for row in cur.fetchall()}
    return flags, verdicts


def test_kill_9_under_load_loses_no_flag_feedback_or_event(
    engine_process: Callable[..., EngineProcess], broker: Broker, tmp_path: Path
) -> None:
    bind_consumer(broker)
    store = StoreSpec("sqlite", str(tmp_path / "flags.sqlite"))
    args = ("--flag-store", f"sqlite:{store.target}", "--events-url", broker.url)
    first = engine_process(*args)

    flagged: list[str] = []  # flag ids the clients received
    confirmed: list[str] = []  # verdicts the engine acknowledged
    refusals: list[grpc.StatusCode] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        with grpc.insecure_channel(first.target) as ch:
            stub = pb_grpc.BreakScorerStub(ch)
            n = 0
            while not stop.is_set():
                request = pb.ScorePairsRequest(
                    pairs=[
                        pair(f"drift-{c}-{n}", view(t=T0 + 900), view("risk", status="pending")),
                        pair(f"gone-{c}-{n}", view()),
                    ]
                )
                n += 1
                try:
                    ids = [s.flag_id for s in stub.ScorePairs(request, timeout=5).scores if s.is_break]
                    with lock:
                        flagged.extend(ids)
                    verdict = pb.FeedbackRequest(flag_id=ids[0], verdict=pb.VERDICT_CONFIRMED, operator="ops")
                    stub.SubmitFeedback(verdict, timeout=5)
                    with lock:
                        confirmed.append(ids[0])
                except grpc.RpcError as exc:
                    with lock:
                        refusals.append(exc.code())
                    return  # the engine is gone

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    # the load gets going: 200 verdicts acknowledged (however long that takes here)
    while len(confirmed) < 200 and all(t.is_alive() for t in threads):
        time.sleep(0.05)
    first.proc.kill()  # SIGKILL while the clients are mid-call
    for t in threads:
        t.join(timeout=30)
    stop.set()
    first.proc.communicate(timeout=30)
    # every client's call ended (refused) instead of hanging on the dead engine
    assert not any(t.is_alive() for t in threads), "a client is still waiting on the killed engine"
    with lock:
        got_flags, got_verdicts = list(flagged), list(confirmed)
    assert len(got_verdicts) >= 200, "the load did not get going before the kill"
    assert refusals and all(code == grpc.StatusCode.UNAVAILABLE for code in refusals)

    # nothing acknowledged is missing from the store
    flags, verdicts = _stored(store)
    assert set(got_flags) <= flags
    assert all(verdicts.get(f) == "confirmed" for f in got_verdicts)

    # a new engine on the same store publishes what the dead one left; every flag reaches the consumer
    engine_process(*args)
    wait_until = time.monotonic() + 60
    while outbox_left(store) and time.monotonic() < wait_until:
        time.sleep(0.2)
    assert outbox_left(store) == 0
    received = drain(broker)
    assert set(got_flags) <= set(received)
    assert set(received) <= flags  # no event for a flag that was never recorded
    print(
        f"kill -9 under load: {len(got_flags)} flags and {len(got_verdicts)} verdicts acknowledged before "
        f"the kill, {len(flags)} flags stored; {len(received)} events received, "
        f"{len(received) - len(set(received))} repeated (deduplicated on the event id)"
    )
