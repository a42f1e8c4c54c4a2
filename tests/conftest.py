"""Shared fixtures: a real engine on a free port, real clients, sample trades."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.config import Settings
from engine.models.bundle import DEFAULT_BUNDLE, MANIFEST, write_manifest
from engine.server import EngineServer

if TYPE_CHECKING:
    from .rabbit import Broker

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server that must be told one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_trade(i: int = 0, **overrides: Any) -> pb.Trade:
    """One valid, realistic trade; `overrides` set or clear fields (None clears)."""
    fields: dict[str, Any] = dict(
        trade_id=f"T{i:06d}",
        account_id="ACC-001",
        counterparty_id="CP0001",
        instrument_id="US0378331005",
        asset_class=pb.ASSET_CLASS_EQUITY,
        side=pb.SIDE_SELL if i % 2 else pb.SIDE_BUY,
        quantity=100.0 + i,
        price=187.5,
        currency="USD",
        trade_date="2026-11-20",
        settlement_date="2026-11-23",
        settlement_venue="DTC",
        inventory_ratio=0.8 + (i % 5) / 10,
        ssi_matched=True,
    )
    for key, value in overrides.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return pb.Trade(**fields)


def resign(bundle: Path, version: str) -> Path:
    """Re-hash a bundle's files into its manifest, as `version` (what a bundle writer does)."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    for key in ("files", "content_hash", "format_version"):
        manifest.pop(key)
    manifest["version"] = version
    write_manifest(bundle, manifest)
    return bundle


def copy_bundle(dest: Path, version: str | None = None) -> Path:
    """A copy of the shipped bundle; with `version`, re-signed as that version."""
    shutil.copytree(DEFAULT_BUNDLE, dest)
    return resign(dest, version) if version is not None else dest


ServerFactory = Callable[..., Awaitable[tuple[EngineServer, grpc.aio.Channel]]]


class HeldBatches:
    """A gate in front of an in-process engine's model: batches of its inference thread wait there.

    `with HeldBatches(engine) as held:` makes every batch the engine's micro-batcher hands to its
    inference thread wait until `held.release()` (or the end of the block): calls stay in
    flight, in the model or queued behind it, for as long as a test needs them there. Start the
    engine with `inline_rows=0`, so that every call takes the thread lane (a batch held on the
    event loop would hold the test too).
    """

    def __init__(self, engine: EngineServer) -> None:
        if engine.batcher is None:
            raise RuntimeError("start the engine first")
        self._batcher = engine.batcher
        self._run = engine.batcher._run
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _held(self, key: Any, rows: Any) -> Any:
        self.entered.set()
        self.gate.wait(30)
        return self._run(key, rows)

    async def wait_entered(self) -> None:
        """Return once a batch waits at the gate."""
        await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 10)

    def release(self) -> None:
        self.gate.set()

    def __enter__(self) -> HeldBatches:
        self._batcher._run = self._held
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._batcher._run = self._run


@pytest.fixture
async def start_engine() -> AsyncIterator[ServerFactory]:
    """Start in-process engines on free ports: `engine, channel = await start_engine(**settings)`."""
    started: list[tuple[EngineServer, grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> tuple[EngineServer, grpc.aio.Channel]:
        settings = Settings(host="127.0.0.1", port=0, **overrides)
        engine = EngineServer(settings, registry=CollectorRegistry())
        port = await engine.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((engine, channel))
        return engine, channel

    yield start
    for engine, channel in started:
        await channel.close(None)
        await engine.stop(grace=1.0)


@pytest.fixture
async def engine_stub(start_engine: ServerFactory) -> tuple[EngineServer, pb_grpc.TradeScorerAsyncStub]:
    engine, channel = await start_engine()
    return engine, pb_grpc.TradeScorerStub(channel)


class EngineProcess:
    """`engine serve` in a subprocess, on a port it picked itself (read from its log)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", *args]
        if "--port" not in args:
            cmd += ["--port", "0"]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("engine exited before serving:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"serving \S+ on [\d.]+:(\d+)", line)
            if m:
                return int(m.group(1))
            if "started" in line and "workers on port" in line:
                return int(re.search(r"port (\d+)", line).group(1))  # type: ignore[union-attr]
        raise RuntimeError("engine did not start in time:\n" + "".join(self.lines))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + (out or "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


@pytest.fixture
def engine_process() -> Iterator[Callable[..., EngineProcess]]:
    procs: list[EngineProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> EngineProcess:
        p = EngineProcess(*args, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


@functools.cache
def _sample_pool() -> list[pb.Trade]:
    from engine.scoring.messages import columns_to_trades
    from engine.training.synthetic import generate_trades

    return columns_to_trades(generate_trades(4000, seed=20261121).trades)


def sample_request(n: int, seed: int = 3, request_id: str = "r") -> pb.ScoreRequest:
    """`n` trades from the engine's own generator (a window of a cached pool chosen by `seed`)."""
    pool = _sample_pool()
    start = (seed * 997) % (len(pool) - n) if n < len(pool) else 0
    return pb.ScoreRequest(request_id=request_id, trades=pool[start : start + n])


def in_process_probabilities(engine: EngineServer, request: pb.ScoreRequest) -> np.ndarray:
    """What ONNX Runtime gives for the same trades, without gRPC or batching."""
    from engine.scoring.messages import trades_to_columns

    model = engine.models.current
    cols = trades_to_columns(request.trades)
    return model.predict(model.plan.compute(cols))


# -- a real PostgreSQL server (Debian's postgresql package; scripts/install-system-deps) -------------


def _postgres_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/install-system-deps (as root)")
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL cluster for the session, on a free port: its base URL (user postgres, trust auth)."""
    import pwd
    import tempfile

    bindir = _postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="tradescore-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the package's postgres user runs it
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*pg_ctl, "-l", str(root / "server.log"), "-w", "-o", options, "start"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


# -- a real RabbitMQ node (tests/rabbit.py) ------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A RabbitMQ node of the test's own, started; stopped (and its port mapper too) at the end."""
    from .rabbit import RABBITMQ, Broker

    if not Path(RABBITMQ).exists():
        pytest.fail("rabbitmq-server is not installed: run scripts/install-system-deps (as root)")
    node = Broker(tmp_path / "rabbitmq")
    node.start()
    try:
        yield node
    finally:
        node.close()
