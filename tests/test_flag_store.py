"""The flag store (durable flags and verdicts) alone, and BreakScorer's flags and SubmitFeedback served."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.errors import FlagNotFound, FlagStoreUnavailable, VerdictConflict
from engine.features.pairs import PAIR_FEATURES
from engine.flag_store import Flag, FlagStore, StoreSpec, export_labels, parse_store

from .conftest import ServerFactory
from .test_pairs import T0, pair, view


def flag(i: int) -> Flag:
    return Flag(
        flag_id=f"F{i:04d}", created_at=1.0 + i, pair_key=f"POS-{i}", source_a="trading", source_b="risk",
        break_class="STATUS", break_score=0.7, threshold=0.42, likely_right="PAIR_SIDE_A", confidence=0.9,
        autonomy="AUTONOMY_MODE_PROPOSE", auto_approvable=False, model_version="v1",
        features=[float(i)] * len(PAIR_FEATURES), event={"event_id": f"F{i:04d}"},
    )  # fmt: skip


def test_parse_store_reads_sqlite_and_postgresql_specs() -> None:
    assert parse_store("") is None
    assert parse_store("sqlite:data/f.sqlite") == StoreSpec("sqlite", "data/f.sqlite")
    assert parse_store("sqlite:///var/lib/f.sqlite") == StoreSpec("sqlite", "/var/lib/f.sqlite")
    pg = parse_store("postgresql://ops:secret@db:5432/flags")
    assert pg == StoreSpec("postgresql", "postgresql://ops:secret@db:5432/flags")
    assert "secret" not in str(pg)  # logged without its password
    for bad in ("mysql://db/x", "sqlite:", "f.sqlite"):
        with pytest.raises(ValueError, match="want sqlite:PATH"):
            parse_store(bad)


@pytest.fixture(params=["sqlite", "postgresql"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """A fresh store of each kind: a SQLite file, and a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return StoreSpec("sqlite", str(tmp_path / "flags.sqlite"))
    url: str = request.getfixturevalue("postgres_url")
    return StoreSpec("postgresql", url)


def count(spec: StoreSpec, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(spec.connect()) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        return [tuple(row) for row in cur.fetchall()]


async def test_flags_and_verdicts_survive_a_reopen(spec: StoreSpec, tmp_path: Path) -> None:
    store = FlagStore(spec)
    store.start()
    await store.record([])  # the writer has run (and named its thread: top -H shows it)
    tasks = Path("/proc/self/task")
    assert "flag-store" in {(t / "comm").read_text().strip() for t in tasks.iterdir()}
    # concurrent writers share group commits; every one of them is on disk when its await returns
    await asyncio.gather(*(store.record([flag(i)]) for i in range(50)))
    first = await store.feedback("F0001", "confirmed", "ops-anna", "settled on B, A stale")
    assert not first.duplicate and first.verdict == "confirmed"
    again = await store.feedback("F0001", "confirmed", "ops-bob", "")
    assert again.duplicate and again.operator == "ops-anna" and again.recorded_at == first.recorded_at
    with pytest.raises(VerdictConflict, match="already confirmed by 'ops-anna'"):
        await store.feedback("F0001", "rejected", "ops-bob", "")
    with pytest.raises(FlagNotFound):
        await store.feedback("nope", "rejected", "ops-bob", "")
    with pytest.raises(FlagStoreUnavailable):  # a flag id recorded twice is refused, alone
        await asyncio.gather(store.record([flag(2)]))
    await store.feedback("F0002", "rejected", "ops-anna", "")  # the group it shared still committed
    await store.close()

    assert count(spec, "SELECT count(*) FROM flags") == [(50,)]
    assert count(spec, "SELECT count(*) FROM flags WHERE published_at IS NULL") == [(50,)]
    assert count(spec, "SELECT flag_id, verdict FROM feedback ORDER BY flag_id") == [
        ("F0001", "confirmed"),
        ("F0002", "rejected"),
    ]
    reopened = FlagStore(spec)
    reopened.start()
    assert (await reopened.feedback("F0001", "confirmed", "x", "")).duplicate
    assert [fid for fid, _ in reopened.unpublished(limit=3)] == ["F0000", "F0001", "F0002"]
    await reopened.close()

    out = tmp_path / "labels.csv"
    assert export_labels(spec, out, PAIR_FEATURES) == 2
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["flag_id"], r["is_break"]) for r in rows] == [("F0001", "1"), ("F0002", "0")]
    assert float(rows[0][PAIR_FEATURES[0]]) == 1.0 and rows[1]["operator"] == "ops-anna"


async def test_breaks_get_flag_ids_and_take_feedback(start_engine: ServerFactory, tmp_path: Path) -> None:
    store = tmp_path / "state" / "flags.sqlite"
    engine, channel = await start_engine(flag_store=f"sqlite:{store}")
    stub = pb_grpc.BreakScorerStub(channel)
    request = pb.ScorePairsRequest(
        pairs=[
            pair("clean", view(), view("risk")),
            pair("drift", view(t=T0 + 900), view("risk", status="pending")),
        ]
    )
    clean, drift = (await stub.ScorePairs(request, timeout=10)).scores
    assert not clean.flag_id and len(drift.flag_id) == 32
    with contextlib.closing(sqlite3.connect(store)) as conn:  # on disk before the response was sent
        row = conn.execute("SELECT pair_key, break_class, likely_right, event FROM flags").fetchall()
    assert [r[:3] for r in row] == [("drift", "STATUS", "PAIR_SIDE_A")]
    assert f'"event_id": "{drift.flag_id}"' in row[0][3] and '"sources": ["trading", "risk"]' in row[0][3]

    def ask(**fields: object) -> pb.FeedbackRequest:
        base: dict[str, object] = {
            "flag_id": drift.flag_id,
            "verdict": pb.VERDICT_CONFIRMED,
            "operator": "ops-anna",
        }
        return pb.FeedbackRequest(**{**base, **fields})  # type: ignore[arg-type]

    first = await stub.SubmitFeedback(ask(note="B was stale"), timeout=10)
    assert first.verdict == pb.VERDICT_CONFIRMED and not first.duplicate and first.recorded_at.seconds > 0
    assert (await stub.SubmitFeedback(ask(), timeout=10)).duplicate
    refusals = [
        (ask(verdict=pb.VERDICT_REJECTED), grpc.StatusCode.ALREADY_EXISTS),
        (ask(flag_id="unknown"), grpc.StatusCode.NOT_FOUND),
        (ask(flag_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        (ask(verdict=pb.VERDICT_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT),
        (ask(operator=" "), grpc.StatusCode.INVALID_ARGUMENT),
        (ask(note="x" * 5000), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for bad, code in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.SubmitFeedback(bad, timeout=10)
        assert exc.value.code() == code, bad

    out = tmp_path / "labels.csv"
    command = ["export-labels", "--flag-store", f"sqlite:{store}", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "engine.cli", *command], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"wrote 1 labelled flags to {out}"
    with out.open() as fh:
        (label,) = csv.DictReader(fh)
    assert label["flag_id"] == drift.flag_id and label["is_break"] == "1" and label["break_class"] == "STATUS"
    assert float(label["status_mismatch"]) == 1.0


async def test_feedback_without_a_flag_store_is_refused(start_engine: ServerFactory) -> None:
    _, channel = await start_engine()
    stub = pb_grpc.BreakScorerStub(channel)
    drift = pair("drift", view(t=T0 + 900), view("risk", status="pending"))
    (score,) = (await stub.ScorePairs(pb.ScorePairsRequest(pairs=[drift]), timeout=10)).scores
    assert score.is_break and not score.flag_id
    request = pb.FeedbackRequest(flag_id="x", verdict=pb.VERDICT_CONFIRMED, operator="ops")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.SubmitFeedback(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_flags_and_feedback_on_postgresql_served(
    start_engine: ServerFactory, postgres_url: str
) -> None:
    _, channel = await start_engine(flag_store=postgres_url)
    stub = pb_grpc.BreakScorerStub(channel)
    drift = pair("drift", view(t=T0 + 900), view("risk", status="pending"))
    (score,) = (await stub.ScorePairs(pb.ScorePairsRequest(pairs=[drift]), timeout=10)).scores
    assert score.flag_id
    spec = StoreSpec("postgresql", postgres_url)
    assert count(spec, "SELECT pair_key, break_class FROM flags") == [("drift", "STATUS")]
    request = pb.FeedbackRequest(flag_id=score.flag_id, verdict=pb.VERDICT_REJECTED, operator="ops-anna")
    assert not (await stub.SubmitFeedback(request, timeout=10)).duplicate
    assert (await stub.SubmitFeedback(request, timeout=10)).duplicate
    assert count(spec, "SELECT verdict, operator FROM feedback") == [("rejected", "ops-anna")]
