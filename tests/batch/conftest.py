"""Fixtures of the batch tests: real Dask clusters, generated extracts, one discovery reused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.models.bundle import DEFAULT_BUNDLE

#: small enough to keep every test fast, large enough for hotspots to stand out
EXTRACT_ROWS = 12_000
HOTSPOTS = ("desk=RATES-NY:4", "counterparty=CP0007:5", "business_date=2026-10-16:4")
DASK = Path(sys.executable).with_name("dask")


def quiet(_: str) -> None:
    """A printer that drops progress lines."""


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """A real distributed cluster: a scheduler and two worker processes (LocalCluster), one thread each."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        yield client


@dataclass(frozen=True)
class DaskProcesses:
    address: str


@pytest.fixture
def dask_processes(tmp_path: Path) -> Iterator[DaskProcesses]:
    """`dask scheduler` and two `dask worker` processes, the standard commands; stopped at the end."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [
        subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
             "--scheduler-file", str(scheduler_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [str(DASK), "worker", address, "--nthreads", "1", "--name", f"w{i}", "--no-dashboard",
                     "--local-directory", str(tmp_path / f"w{i}")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield DaskProcesses(address)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two systems' extracts (A Parquet, B CSV) with planted breaks and hotspots, their truth and mapping."""
    from engine.batch.extracts import Hotspot, generate_extracts

    out = tmp_path_factory.mktemp("extracts") / "x"
    generate_extracts(out, EXTRACT_ROWS, seed=7, hotspots=[Hotspot.parse(h) for h in HOTSPOTS], log=quiet)
    return out


@dataclass(frozen=True)
class Discovery:
    out: Path
    summary: dict[str, Any]


def run_discovery(client: Any, extracts: Path, out: Path, **options: Any) -> Discovery:
    from engine.batch.discover import Source, discover
    from engine.batch.mapping import load_mapping
    from engine.batch.options import Options

    spec = load_mapping(extracts / "mapping.yaml")
    opts = Options(bundle=str(DEFAULT_BUNDLE), **options)
    summary = discover(
        spec, Source(str(extracts / "a")), Source(str(extracts / "b")), out, client, opts, quiet
    )
    return Discovery(out, summary)


@pytest.fixture(scope="session")
def discovery(cluster: Any, extracts: Path, tmp_path_factory: pytest.TempPathFactory) -> Discovery:
    """One discovery of the extracts on the two-worker cluster, with the bundle's pair model."""
    return run_discovery(
        cluster, extracts, tmp_path_factory.mktemp("discovery") / "out", partition_rows=5_000
    )


def engine(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`engine ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is not installed: run scripts/install-system-deps (as root)")
    return found


def devtools_url(stderr_line: str) -> str | None:
    m = re.search(r"DevTools listening on (ws://\S+)", stderr_line)
    return m.group(1) if m else None
