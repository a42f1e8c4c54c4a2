"""The flag store: every flagged record pair, durably, and operators' verdicts on them.

A flag is written (and the write committed, fsync'd) before the response that
carries its `flag_id` is sent: a flag a client has seen is never lost. Each
row also holds the flag's event payload with `published_at` left empty — the
outbox that a publisher drains to a message broker — and the model inputs it
was scored on, so that confirmed and rejected flags become labelled training
rows (`export_labels`).

One thread owns the SQLite connection (WAL, synchronous=FULL). Writes queue to
it and are committed in groups: all the writes waiting when a commit starts
share that commit, so a burst of flagged calls pays one fsync, not one each.
Callers await an asyncio future; the event loop never touches the database.

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
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from engine.errors import EngineError

log = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA_VERSION = "1"
VERDICTS = ("confirmed", "rejected")
MAX_NOTE_CHARS = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flags (
    flag_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    pair_key TEXT NOT NULL,
    source_a TEXT NOT NULL,
    source_b TEXT NOT NULL,
    break_class TEXT NOT NULL,
    break_score REAL NOT NULL,
    threshold REAL NOT NULL,
    likely_right TEXT NOT NULL,
    confidence REAL NOT NULL,
    autonomy TEXT NOT NULL,
    auto_approvable INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    features TEXT NOT NULL,
    event TEXT NOT NULL,
    publish INTEGER NOT NULL,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS flags_unpublished ON flags (created_at) WHERE published_at IS NULL AND publish = 1;
CREATE TABLE IF NOT EXISTS feedback (
    flag_id TEXT PRIMARY KEY REFERENCES flags (flag_id),
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected')),
    operator TEXT NOT NULL,
    note TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
"""


class FlagStoreUnavailable(EngineError):
    """The flag store could not record what was asked (disk full, file gone): nothing was sent."""

    code = grpc.StatusCode.UNAVAILABLE


class FlagNotFound(EngineError):
    """No flag with this id was ever recorded here."""

    code = grpc.StatusCode.NOT_FOUND


class VerdictConflict(EngineError):
    """The flag already has a different verdict; the first one stands."""

    code = grpc.StatusCode.ALREADY_EXISTS


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
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


def store_path(spec: str) -> Path | None:
    """ "sqlite:PATH" (or "sqlite:///PATH") -> PATH; "" -> None (no store). ValueError otherwise."""
    if not spec:
        return None
    for prefix in ("sqlite:///", "sqlite:"):
        if spec.startswith(prefix):
            rest = spec[len(prefix) :]
            if rest:
                return Path(("/" if prefix == "sqlite:///" else "") + rest)
    raise ValueError(f"flag store {spec!r}: want sqlite:PATH (e.g. sqlite:/var/lib/tradescore/flags.sqlite)")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: flag store schema {version}, this engine reads {SCHEMA_VERSION}")
    return conn


def ensure_schema(path: Path) -> None:
    """Create the store's file and tables if they are not there (ValueError: another schema)."""
    _connect(path).close()


class FlagStore:
    """Flags and verdicts in one SQLite file, written by one thread with group commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = _connect(path)  # fails here, at start-up, when the file cannot be used
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
        self._conn.close()

    def _submit(self, run: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        assert self._loop is not None, "start() the flag store first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(run, future))
        return future

    def _writer(self) -> None:
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
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for j in batch:
                    self._conn.execute("SAVEPOINT job")
                    try:
                        results.append((j, j.run(self._conn), None))
                        self._conn.execute("RELEASE job")
                    except (EngineError, sqlite3.IntegrityError) as exc:
                        # this job's own refusal or constraint: the others in the group still commit
                        self._conn.execute("ROLLBACK TO job")
                        self._conn.execute("RELEASE job")
                        if isinstance(exc, sqlite3.IntegrityError):
                            exc = FlagStoreUnavailable(f"the flag store refused this write: {exc}")
                        results.append((j, None, exc))
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                log.error("flag store %s: write of %d jobs failed", self.path, len(batch), exc_info=exc)
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
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

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(f"INSERT INTO flags VALUES ({', '.join('?' * 16)}, NULL)", rows)

        await self._submit(run)
        if self.on_commit is not None:
            self.on_commit()

    # -- feedback ------------------------------------------------------------------------------

    async def feedback(self, flag_id: str, verdict: str, operator: str, note: str) -> Verdict:
        """Record `verdict` on `flag_id` once: the same verdict again is a duplicate, another a conflict."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}")

        def run(conn: sqlite3.Connection) -> Verdict:
            if conn.execute("SELECT 1 FROM flags WHERE flag_id = ?", (flag_id,)).fetchone() is None:
                raise FlagNotFound(f"no flag {flag_id!r} was recorded by this engine's flag store")
            now = time.time()
            inserted = conn.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?) ON CONFLICT (flag_id) DO NOTHING",
                (flag_id, verdict, operator, note, now),
            ).rowcount
            if inserted:
                return Verdict(flag_id, verdict, operator, note, now, duplicate=False)
            first = conn.execute(
                "SELECT verdict, operator, note, recorded_at FROM feedback WHERE flag_id = ?", (flag_id,)
            ).fetchone()
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
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            rows = conn.execute(
                "SELECT flag_id, event FROM flags WHERE published_at IS NULL AND publish = 1 "
                "ORDER BY created_at LIMIT ?",
                (limit,),
            ).fetchall()
        return [(flag_id, json.loads(event)) for flag_id, event in rows]


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def export_labels(path: Path, out: Path, feature_names: Sequence[str]) -> int:
    """Write every flag with a verdict as a labelled training row (CSV); returns the row count.

    Columns: flag_id, pair_key, break_class, model_version, the model inputs
    (one column each, `feature_names` order), `is_break` (1 confirmed, 0
    rejected), operator, recorded_at (unix seconds).
    """
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT f.flag_id, f.pair_key, f.break_class, f.model_version, f.features, v.verdict, "
            "v.operator, v.recorded_at FROM flags f JOIN feedback v USING (flag_id) ORDER BY v.recorded_at"
        ).fetchall()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["flag_id", "pair_key", "break_class", "model_version", *feature_names, "is_break",
                         "operator", "recorded_at"])  # fmt: skip
        for flag_id, key, cls, version, features, verdict, operator, recorded_at in rows:
            values = json.loads(features)
            if len(values) != len(feature_names):
                raise ValueError(
                    f"flag {flag_id}: {len(values)} features stored, {len(feature_names)} expected"
                )
            writer.writerow(
                [flag_id, key, cls, version, *values, int(verdict == "confirmed"), operator, recorded_at]
            )
    return len(rows)
