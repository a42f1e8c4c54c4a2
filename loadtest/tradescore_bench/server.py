"""The servers under test, each a separate process on 127.0.0.1 pinned to its CPUs: the engine
(`engine_server.py`: `engine serve --port 0 ...`) and the gRPC floor (`floor_server.py`); the port
is read from the log line; /metrics scrapes of the engine's batching counters and histograms."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tradescore_locust import server_metrics

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from tradescore_bench.system import ROOT, cpus_text, proc_cpu_seconds, proc_status, proc_thread_cpus

HERE = Path(__file__).resolve().parent
ENGINE_SERVER = HERE / "engine_server.py"
FLOOR_SERVER = HERE / "floor_server.py"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for the engine's /metrics; a rare race is harmless here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def batching_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean rows per model call, mean queue wait and model-call time over a window."""
    if not before or not after:
        return {}
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = d.get("engine_batch_size_count", 0.0)
    waits = d.get("engine_queue_wait_seconds_count", 0.0)
    return {
        "model_calls": batches,
        "mean_batch_rows": d.get("engine_batch_size_sum", 0.0) / batches if batches else math.nan,
        "mean_queue_wait_ms": d.get("engine_queue_wait_seconds_sum", 0.0) / waits * 1e3
        if waits
        else math.nan,
        "mean_model_call_ms": d.get("engine_inference_seconds_sum", 0.0) / batches * 1e3
        if batches
        else math.nan,
    }


class ServerProcess:
    """A server on 127.0.0.1, port 0, pinned to `cpus`; the port is read from its log line
    "serving tradescore.v1.TradeScorer on HOST:PORT"."""

    @staticmethod
    def engine(
        bundle: Path, cpus: set[int], flags: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        """`engine serve --host 127.0.0.1 --port 0 --bundle BUNDLE --metrics-port M FLAGS...`,
        with `env` added to this process's environment."""
        metrics_port = free_port()
        args = [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--bundle",
            str(bundle),
            "--metrics-port",
            str(metrics_port),
        ]
        args += flags
        equivalent = f"taskset -c {cpus_text(cpus)} python -m engine.cli serve {' '.join(args)}"
        command = [sys.executable, str(ENGINE_SERVER), cpus_text(cpus), *args]
        server = ServerProcess(command, equivalent, args, env=env)
        server.metrics_port = metrics_port
        return server

    @staticmethod
    def floor(cpus: set[int], batch_trades: int, event_loop: str = "uvloop") -> ServerProcess:
        """A bare grpc.aio server answering Score and ScoreStream with canned bytes, on
        `event_loop` (`floor_server.py`): what gRPC alone costs."""
        args = [cpus_text(cpus), str(batch_trades), event_loop]
        return ServerProcess(
            [sys.executable, str(FLOOR_SERVER), *args], "tradescore_bench/floor_server.py", args
        )

    def __init__(
        self,
        command: list[str],
        equivalent: str,
        args: list[str],
        start_timeout: float = 90.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = command
        self.metrics_port = 0  # the engine's Prometheus /metrics (0: none)
        self.equivalent = equivalent
        self.args = args
        self.lines: deque[str] = deque(maxlen=200)
        self.launcher = "unknown"
        self._port_found = threading.Event()
        self.port = 0
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="server-log", daemon=True)
        self._reader.start()
        if not self._port_found.wait(start_timeout) or self.port == 0:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("bench-launcher:"):
                self.launcher = line.split(":", 1)[1].strip()
            elif line.startswith("floor:"):
                self.launcher = "bare grpc.aio"
            m = re.search(r"serving \S+ on [\d.]+:(\d+)", line)
            if m and not self._port_found.is_set():
                self.port = int(m.group(1))
                self._port_found.set()
        self._port_found.set()  # the process ended: stop waiting

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def scrape_metrics(self) -> tuple[dict[str, float], server_metrics.Snapshot | None]:
        """One read of the engine's /metrics: its batching counters (empty without them) and its
        latency histograms (`tradescore_locust.server_metrics`; None without them)."""
        if not self.metrics_port:
            return {}, None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}, None
        wanted = (
            "engine_batch_size_sum",
            "engine_batch_size_count",
            "engine_queue_wait_seconds_sum",
            "engine_queue_wait_seconds_count",
            "engine_inference_seconds_sum",
        )
        counters: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                counters[name] = float(value)
        return counters, server_metrics.parse(text)

    def engine_metrics(self) -> dict[str, float]:
        """The engine's batching counters from /metrics (empty without them)."""
        return self.scrape_metrics()[0]

    def describe(self) -> dict[str, Any]:
        return {
            "args": self.args,
            "equivalent_command": self.equivalent,
            "launcher": self.launcher,
            "pid": self.pid,
            "port": self.port,
            "thread_cpus": proc_thread_cpus(self.pid),
            "threads": int(proc_status(self.pid, "Threads") or 0),
        }

    def stop(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "peak_rss": proc_status(self.pid, "VmHWM") if self.proc.poll() is None else ""
        }
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        info["exit_code"] = self.proc.returncode
        info["log_tail"] = list(self.lines)[-8:]
        return info


def model_info(target: str) -> dict[str, Any]:
    import grpc

    from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        info = pb_grpc.TradeScorerStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    return {
        "name": info.name,
        "version": info.version,
        "content_hash": info.content_hash,
        "backend": info.backend,
    }
