"""The flag store: every flagged record pair, durably, and operators' verdicts on them.

A flag is written (and the write committed, fsync'd) before the response that
carries its `flag_id` is sent: a flag a client has seen is never lost. Each
row also holds the flag's event payload with `published_at` left empty — the
outbox that a publisher drains to a message broker — and the model inputs it
was scored on, so that confirmed and rejected flags become labelled training
rows (`export_labels`).

Two databases, by `--flag-store`: `sqlite:PATH` (one file; WAL,
synchronous=FULL; workers on one host may share it) or
`postgresql://user:pass@host:port/db` (psycopg 3; replicas on many hosts share
it). One thread owns the store's connection. Writes queue to it and are
committed in groups: all the writes waiting when a commit starts share that
commit, so a burst of flagged calls pays one fsync, not one each. Callers await
an asyncio future; the event loop never touches the database.

    flags     flag_id (PK), created_at, pair_key, sources, break class, score,
              threshold, believed side, confidence, autonomy, model version,
              features (JSON), event (JSON), publish (its event is to be published),
              published_at (NULL: not yet published; engine.events drains it)
    feedback  flag_id (PK, one verdict per flag), verdict, operator, note, recorded_at
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from engine.batching import name_os_thread
from engine.config import split_store
from engine.errors import EngineError, FlagNotFound, FlagStoreUnavailable, VerdictConflict

log = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA_VERSION = "1"
VERDICTS = ("confirmed", "rejected")
MAX_NOTE_CHARS = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flags (
    flag_id TEXT PRIMARY KEY,
    created_at {real} NOT NULL,
    pair_key TEXT NOT NULL,
    source_a TEXT NOT NULL,
    source_b TEXT NOT NULL,
    break_class TEXT NOT NULL,
    break_score {real} NOT NULL,
    threshold {real} NOT NULL,
    likely_right TEXT NOT NULL,
    confidence {real} NOT NULL,
    autonomy TEXT NOT NULL,
    auto_approvable INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    features TEXT NOT NULL,
    event TEXT NOT NULL,
    publish INTEGER NOT NULL,
    published_at {real}
);
CREATE INDEX IF NOT EXISTS flags_unpublished ON flags (created_at) WHERE published_at IS NULL AND publish = 1;
CREATE TABLE IF NOT EXISTS feedback (
    flag_id TEXT PRIMARY KEY REFERENCES flags (flag_id),
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected')),
    operator TEXT NOT NULL,
    note TEXT NOT NULL,
    recorded_at {real} NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Flag:
    """One flagged pair, as recorded."""

    flag_id: str
    created_at: float
    pair_key: str
    source_a: str
    source_b: str
    break_class: str
    break_score: float
    threshold: float
    likely_right: str
    confidence: float
    autonomy: str
    auto_approvable: bool
    model_version: str
    features: Sequence[float]
    event: dict[str, Any]
    #: whether the outbox publishes its event (--event-min-confidence)
    publish: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    flag_id: str
    verdict: str
    operator: str
    note: str
    recorded_at: float
    duplicate: bool


@dataclass(slots=True)
class _Job:
    run: Callable[[Any], Any]  # given a cursor inside the group's transaction
    future: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Which database holds the flags: `sqlite` (`target` a path) or `postgresql` (`target` a URL)."""

    kind: str
    target: str

    @property
    def integrity_errors(self) -> tuple[type[Exception], ...]:
        if self.kind == "sqlite":
            return (sqlite3.IntegrityError,)
        import psycopg

        return (psycopg.IntegrityError,)

    def sql(self, text: str) -> str:
        """`text` with `?` placeholders, in this driver's style."""
        return text if self.kind == "sqlite" else text.replace("?", "%s")

    def connect(self) -> Any:
        """A connection in autocommit mode (transactions are explicit), with the schema in place."""
        if self.kind == "sqlite":
            path = Path(self.target)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn: Any = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            real = "REAL"
        else:
            import psycopg

            conn = psycopg.connect(self.target, autocommit=True, connect_timeout=10)
            real = "DOUBLE PRECISION"
        try:
            cur = conn.cursor()
            if self.kind == "postgresql":  # one schema creation at a time across replicas
                cur.execute("SELECT pg_advisory_lock(727020001)")
            for statement in _SCHEMA.format(real=real).split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute(
                self.sql(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING"
                ),
                (SCHEMA_VERSION,),
            )
            cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            (version,) = cur.fetchone()
            if self.kind == "postgresql":
                cur.execute("SELECT pg_advisory_unlock(727020001)")
        except BaseException:
            conn.close()
            raise
        if version != SCHEMA_VERSION:
            conn.close()
            raise ValueError(f"{self}: flag store schema {version}, this engine reads {SCHEMA_VERSION}")
        return conn

    def __str__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:{self.target}"
        return re.sub(r"//[^@/]*@", "//***@", self.target)  # no password in logs


def parse_store(spec: str) -> StoreSpec | None:
    """ "sqlite:PATH", "sqlite:///PATH" or "postgresql://..." -> a StoreSpec; "" -> None; else ValueError
    (the syntax is `engine.config.split_store`'s)."""
    parts = split_store(spec)
    return StoreSpec(*parts) if parts is not None else None


def ensure_schema(spec: StoreSpec) -> None:
    """Create the store's tables if they are not there (ValueError: another schema version)."""
    spec.connect().close()


class FlagStore:
    """Flags and verdicts in the store `spec` names, written by one thread with group commits."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self._conn = spec.connect()  # fails here, at start-up, when the store cannot be used
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: called after each commit that wrote flags (the outbox publisher's wake-up)
        self.on_commit: Callable[[], None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="flag-store", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _rollback_or_drop(self, cur: Any) -> None:
        """After a failed group: roll back, or drop a connection that cannot even do that."""
        try:
            if cur is not None:
                cur.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection is gone; the next group reconnects
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _submit(self, run: Callable[[Any], T]) -> asyncio.Future[T]:
        assert self._loop is not None, "start() the flag store first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(run, future))
        return future

    def _writer(self) -> None:
        name_os_thread("flag-store")
        loop = self._loop
        assert loop is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while True:  # every write already waiting shares this commit
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)
                    break
                batch.append(more)
            results: list[tuple[_Job, Any, BaseException | None]] = []
            own_errors: tuple[type[Exception], ...] = (EngineError, *self.spec.integrity_errors)
            cur = None
            try:
                if self._conn is None:  # the last connection broke: try a new one
                    self._conn = self.spec.connect()
                cur = self._conn.cursor()
                cur.execute("BEGIN IMMEDIATE" if self.spec.kind == "sqlite" else "BEGIN")
                for j in batch:
                    cur.execute("SAVEPOINT job")
                    try:
                        results.append((j, j.run(cur), None))
                        cur.execute("RELEASE SAVEPOINT job")
                    except own_errors as exc:
                        # this job's own refusal or constraint: the others in the group still commit
                        cur.execute("ROLLBACK TO SAVEPOINT job")
                        cur.execute("RELEASE SAVEPOINT job")
                        if not isinstance(exc, EngineError):
                            exc = FlagStoreUnavailable(f"the flag store refused this write: {exc}")
                        results.append((j, None, exc))
                cur.execute("COMMIT")
            except Exception as exc:  # noqa: BLE001 - the database, a reconnect, anything: fail this group only
                log.error("flag store %s: write of %d jobs failed", self.spec, len(batch), exc_info=exc)
                self._rollback_or_drop(cur)
                failure = FlagStoreUnavailable(f"the flag store could not record this: {exc}")
                results = [(j, None, failure) for j in batch]
            for j, value, error in results:
                loop.call_soon_threadsafe(_settle, j.future, value, error)

    # -- flags -------------------------------------------------------------------------------

    async def record(self, flags: Sequence[Flag]) -> None:
        """Write `flags`; returns once they are committed to disk."""
        rows = [
            (f.flag_id, f.created_at, f.pair_key, f.source_a, f.source_b, f.break_class, f.break_score,
             f.threshold, f.likely_right, f.confidence, f.autonomy, int(f.auto_approvable), f.model_version,
             json.dumps([float(x) for x in f.features]), json.dumps(f.event, sort_keys=True), int(f.publish))
            for f in flags
        ]  # fmt: skip

        insert = self.spec.sql(f"INSERT INTO flags VALUES ({', '.join('?' * 16)}, NULL)")

        def run(cur: Any) -> None:
            cur.executemany(insert, rows)

        await self._submit(run)
        if self.on_commit is not None:
            self.on_commit()

    # -- feedback ------------------------------------------------------------------------------

    async def feedback(self, flag_id: str, verdict: str, operator: str, note: str) -> Verdict:
        """Record `verdict` on `flag_id` once: the same verdict again is a duplicate, another a conflict."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}")

        sql = self.spec.sql

        def run(cur: Any) -> Verdict:
            cur.execute(sql("SELECT 1 FROM flags WHERE flag_id = ?"), (flag_id,))
            if cur.fetchone() is None:
                raise FlagNotFound(f"no flag {flag_id!r} was recorded by this engine's flag store")
            now = time.time()
            cur.execute(
                sql("INSERT INTO feedback VALUES (?, ?, ?, ?, ?) ON CONFLICT (flag_id) DO NOTHING"),
                (flag_id, verdict, operator, note, now),
            )
            if cur.rowcount:
                return Verdict(flag_id, verdict, operator, note, now, duplicate=False)
            cur.execute(
                sql("SELECT verdict, operator, note, recorded_at FROM feedback WHERE flag_id = ?"), (flag_id,)
            )
            first = cur.fetchone()
            if first[0] != verdict:
                raise VerdictConflict(
                    f"flag {flag_id!r} was already {first[0]} by {first[1]!r}; the first verdict stands"
                )
            return Verdict(flag_id, first[0], first[1], first[2], first[3], duplicate=True)

        result: Verdict = await self._submit(run)
        return result

    # -- reading (any thread; a connection of its own) -------------------------------------------------

    def unpublished(self, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """The oldest flags whose events wait to be published: (flag_id, event)."""
        with contextlib.closing(self.spec.connect()) as conn:
            rows = waiting_events(conn.cursor(), self.spec, limit)
        return [(flag_id, json.loads(event)) for flag_id, _, event in rows]


def waiting_events(cur: Any, spec: StoreSpec, limit: int) -> list[tuple[str, str, str]]:
    """The oldest events the outbox has still to publish: (flag_id, break class, event JSON)."""
    cur.execute(
        spec.sql(
            "SELECT flag_id, break_class, event FROM flags WHERE published_at IS NULL AND publish = 1 "
            "ORDER BY created_at, flag_id LIMIT ?"
        ),
        (limit,),
    )
    return [tuple(row) for row in cur.fetchall()]


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


@dataclass(frozen=True, slots=True)
class Decided:
    """A flag with its verdict: a labelled training row."""

    flag_id: str
    pair_key: str
    break_class: str
    model_version: str
    features: list[float]
    confirmed: bool
    operator: str
    recorded_at: float


def decided_flags(spec: StoreSpec) -> list[Decided]:
    """Every flag that has a verdict, in the order the verdicts came."""
    with contextlib.closing(spec.connect()) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT f.flag_id, f.pair_key, f.break_class, f.model_version, f.features, v.verdict, "
            "v.operator, v.recorded_at FROM flags f JOIN feedback v USING (flag_id) "
            "ORDER BY v.recorded_at, f.flag_id"
        )
        rows = cur.fetchall()
    return [
        Decided(fid, key, cls, version, json.loads(features), verdict == "confirmed", operator, float(at))
        for fid, key, cls, version, features, verdict, operator, at in rows
    ]


def export_labels(spec: StoreSpec, out: Path, feature_names: Sequence[str]) -> int:
    """Write every flag with a verdict as a labelled training row (CSV); returns the row count.

    Columns: flag_id, pair_key, break_class, model_version, the model inputs
    (one column each, `feature_names` order), `is_break` (1 confirmed, 0
    rejected), operator, recorded_at (unix seconds).
    """
    rows = decided_flags(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["flag_id", "pair_key", "break_class", "model_version", *feature_names, "is_break",
                         "operator", "recorded_at"])  # fmt: skip
        for r in rows:
            if len(r.features) != len(feature_names):
                raise ValueError(
                    f"flag {r.flag_id}: {len(r.features)} features stored, {len(feature_names)} expected"
                )
            writer.writerow([r.flag_id, r.pair_key, r.break_class, r.model_version, *r.features,
                             int(r.confirmed), r.operator, r.recorded_at])  # fmt: skip
    return len(rows)
