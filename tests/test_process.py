"""`engine` as users run it: a real process, signals, workers, the CLI."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.features.columns import TradeColumns
from engine.scoring.messages import trades_to_columns
from engine.trade_files import write_table
from tests.conftest import EngineProcess, copy_bundle, make_trade, resign

pytestmark = pytest.mark.slow

Start = Callable[..., EngineProcess]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_sigterm_drains_in_flight_calls_then_exits_zero(engine_process: Start) -> None:
    """A call in flight at SIGTERM is served to its end; a call made during the drain is refused
    by the live process; then the process exits 0.

    The call in flight is a ScoreStream opened before the signal (the engine is serving it:
    its first answer is back). During the drain the stream still gets answers; a new unary
    call is refused; once the stream ends, the engine stops. Each step waits for the one
    before it (no sleeps). `test_drain.py` holds a unary call's batch in the model with a gate
    and checks the same refusal in process.
    """
    server = engine_process("--grace-seconds", "30")
    statuses: list[int] = []
    not_serving = threading.Event()
    watching = threading.Event()
    outbox: queue.Queue[pb.ScoreRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ScoreRequest]:
        while (item := outbox.get()) is not None:
            yield item

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.TradeScorerStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

        def watch_health() -> None:
            try:
                for update in watch:
                    statuses.append(update.status)
                    watching.set()
                    if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        not_serving.set()
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=watch_health)
        watcher.start()
        stream = stub.ScoreStream(requests(), timeout=60)
        outbox.put(pb.ScoreRequest(request_id="before", trades=[make_trade(0)]))
        answers = iter(stream)
        first = next(answers)
        # the health watch has its first answer (the status before the signal) before the signal
        assert watching.wait(30), "health watch never answered"
        server.signal(signal.SIGTERM)
        assert not_serving.wait(30), "health never went NOT_SERVING"
        # health goes NOT_SERVING just before the server stops taking calls: a new call, while
        # the stream is still open, is refused once it has (calls before that are answered)
        refused: grpc.RpcError | None = None
        deadline = time.monotonic() + 30
        while refused is None and time.monotonic() < deadline:
            try:
                stub.Score(pb.ScoreRequest(trades=[make_trade(1)]), timeout=10)
            except grpc.RpcError as exc:
                refused = exc
        assert refused is not None, "new calls were still answered 30 s into the drain"
        outbox.put(pb.ScoreRequest(request_id="during", trades=[make_trade(2), make_trade(3)]))
        during = next(answers)  # the call in flight is still served
        outbox.put(None)
        rest = list(answers)
        code, log = server.wait(timeout=60)
        watcher.join(timeout=10)
    assert first.request_id == "before" and len(first.scores) == 1
    assert during.request_id == "during" and len(during.scores) == 2 and not during.HasField("error")
    assert rest == []
    # gRPC core ends a call that reaches a server which stopped taking calls: CANCELLED on a
    # connection that was open before (the GOAWAY had not reached the client), UNAVAILABLE on one
    # made after; either way the call is refused, not held and not scored
    assert refused.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), refused
    assert code == 0, log
    assert "draining" in log
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING


def test_sighup_reloads_the_bundle(engine_process: Start, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "bundle", version="7.0.0")
    server = engine_process("--bundle", str(bundle))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.TradeScorerStub(channel)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).version == "7.0.0"
        resign(bundle, "7.0.1")
        server.signal(signal.SIGHUP)
        # the engine says when the new bundle is the one served; every call after that line gets it
        assert server.proc.stdout is not None
        while not any("model reloaded:" in line for line in server.lines):
            line = server.proc.stdout.readline()
            assert line, "the engine exited:\n" + "".join(server.lines)
            server.lines.append(line)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).version == "7.0.1"
        assert stub.Score(pb.ScoreRequest(trades=[make_trade(0)]), timeout=5).model_version == "7.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_workers_share_one_port(engine_process: Start) -> None:
    port = _free_port()
    server = engine_process("--workers", "2", "--port", str(port))
    # both workers log their own "serving" line on the shared port
    deadline = time.monotonic() + 60
    assert server.proc.stdout is not None
    while sum("serving tradescore.v1.TradeScorer" in line for line in server.lines) < 2:
        assert time.monotonic() < deadline, "".join(server.lines)
        server.lines.append(server.proc.stdout.readline())
    for _ in range(4):  # new connections land on either worker; every one is served
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            r = pb_grpc.TradeScorerStub(channel).Score(pb.ScoreRequest(trades=[make_trade(0)]), timeout=10)
            assert len(r.scores) == 1
    server.signal(signal.SIGTERM)
    code, log = server.wait(timeout=30)
    assert code == 0, log


def test_cli_help_explains_every_command() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for command in ("serve", "score", "info", "health", "train", "export", "generate"):
        assert command in top.stdout
        sub = cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "usage: engine " + command in sub.stdout
    assert "ENGINE_MAX_BATCH_ROWS" in cli("serve", "--help").stdout


def test_cli_score_info_health_against_a_server(engine_process: Start, tmp_path: Path) -> None:
    server = engine_process()
    health = cli("health", "--target", server.target)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")

    sample = cli(
        "score", "--sample", "30", "--target", server.target, "--format", "jsonl", "--batch-size", "7"
    )
    assert sample.returncode == 0, sample.stderr
    rows = [json.loads(line) for line in sample.stdout.splitlines()]
    assert len(rows) == 30 and all(0.0 <= r["fail_probability"] <= 1.0 for r in rows)

    cols: TradeColumns = trades_to_columns([make_trade(i) for i in range(5)])
    path = tmp_path / "trades.csv"
    write_table(cols.to_table(), path)
    scored = cli("score", "--file", str(path), "--target", server.target, "--stream")
    assert scored.returncode == 0, scored.stderr
    assert [line.split("\t")[0] for line in scored.stdout.splitlines()] == [f"T{i:06d}" for i in range(5)]

    remote = json.loads(cli("info", "--target", server.target).stdout)
    local = json.loads(cli("info").stdout)
    assert remote["version"] == local["version"] and remote["content_hash"] == local["content_hash"]

    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace("2026-11-23", "2026-11-01", 1))
    refused = cli("score", "--file", str(bad), "--target", server.target)
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "settlement_date" in refused.stderr


def test_serve_refuses_bad_settings_and_bad_bundles(tmp_path: Path) -> None:
    bad = cli("serve", "--max-batch-rows", "0")
    assert bad.returncode == 2 and "max_batch_rows" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = cli("serve", "--port", "0", "--bundle", str(empty), timeout=60)
    assert missing.returncode != 0 and "manifest.json" in missing.stderr


def test_health_without_a_target_follows_the_engines_environment() -> None:
    from engine.cli import local_health_target

    assert local_health_target({}) == "127.0.0.1:50051"
    assert local_health_target({"ENGINE_PORT": "6000"}) == "127.0.0.1:6000"
    assert local_health_target({"ENGINE_PORT": "6000", "ENGINE_PROBE_PORT": "6001"}) == "127.0.0.1:6001"
    assert local_health_target({"ENGINE_PORT": "6000", "ENGINE_PROBE_PORT": "0"}) == "127.0.0.1:6000"
