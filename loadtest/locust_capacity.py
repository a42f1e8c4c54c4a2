"""How many calls/s one Locust process can drive: the load generator's own ceiling.

    .venv/bin/python loadtest/locust_capacity.py                   # echo server, then the engine
    .venv/bin/python loadtest/locust_capacity.py --server echo --users 64 --seconds 20
    .venv/bin/python loadtest/locust_capacity.py --help

Starts a server pinned to `--server-cpus` — `echo`: a bare `grpc.aio` server
answering `Score` / `ScoreStream` with canned bytes (no engine code: the
cheapest gRPC Python server there is), or `engine`: `engine serve` — then runs
the suite's locustfile headless, pinned to `--client-cpus`, with the `flat`
profile in closed loop (`--user-rate 0`, one-trade calls), and measures over
the steady part of the run: calls/s (from Locust's stats history), the Locust
process tree's CPU time and the server's (utime + stime from /proc), so

- client µs/call = Locust CPU seconds / calls: stable however busy the machine;
- client ceiling = 1e6 / client µs/call: the calls/s one Locust process drives
  when it has a whole core to itself, whichever side is saturated in this run;
- `bound`: which side was at ≥ 90 % of its CPUs.

A Locust process is one OS thread (gevent): more than one core needs
`--processes N` (passed through), or more machines (master + workers).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
TICK = os.sysconf("SC_CLK_TCK")

_ECHO = r"""
import asyncio, sys
import grpc
from engine._proto.tradescore.v1 import tradescore_pb2 as pb

ANSWER = pb.ScoreResponse(
    request_id="r", model_name="echo", model_version="0",
    scores=[pb.TradeScore(trade_id="T0000001", fail_probability=0.1, risk_band=1)],
).SerializeToString()
INFO = pb.ModelInfo(name="echo", version="0").SerializeToString()

async def score(request, context):
    return ANSWER

async def info(request, context):
    return INFO

async def stream(requests, context):
    async for _ in requests:
        yield ANSWER

async def main():
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("tradescore.v1.TradeScorer", {
        "Score": grpc.unary_unary_rpc_method_handler(score),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(info),
        "ScoreStream": grpc.stream_stream_rpc_method_handler(stream),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo: serving tradescore.v1.TradeScorer on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def cpu_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def tree_cpu_seconds(root_pid: int) -> float:
    """utime + stime of a process and all its descendants still alive."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(p for p, parent in parents.items() if parent == pid)
    return total


class Server:
    def __init__(self, kind: str, cpus: set[int]) -> None:
        if kind == "echo":
            cmd = [sys.executable, "-c", _ECHO]
        else:
            cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        self.port = 0
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"serving \S+ on [\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.stop()
            raise RuntimeError(f"{kind} server did not start:\n" + "".join(lines))
        # keep reading its output so a chatty server never blocks on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def last_history_row(path: Path) -> tuple[float, int] | None:
    """(timestamp, cumulative calls) of the newest Aggregated row of Locust's stats history."""
    try:
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    except OSError:
        return None
    if not rows:
        return None
    return float(rows[-1]["Timestamp"]), int(rows[-1]["Total Request Count"])


def measure(args: argparse.Namespace, kind: str, workdir: Path) -> dict[str, Any]:
    server_cpus, client_cpus = cpu_set(args.server_cpus), cpu_set(args.client_cpus)
    server = Server(kind, server_cpus)
    prefix = workdir / f"capacity-{kind}"
    cmd = [
        shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        f"127.0.0.1:{server.port}",
        "--load-profile",
        "flat",
        "--users",
        str(args.users),
        "--user-rate",
        "0",
        "--mix",
        "single",
        "--channels",
        str(args.channels),
        "--run-time",
        f"{round(args.warmup + args.seconds + 3)}s",
        "--csv",
        str(prefix),
        "--slo-p99-ms",
        "1000",
    ]
    if args.processes:
        cmd += ["--processes", str(args.processes)]
    cmd.append(args.user_class)
    try:
        locust = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            preexec_fn=lambda: os.sched_setaffinity(0, client_cpus),
        )
        history = Path(f"{prefix}_stats_history.csv")
        time.sleep(args.warmup)
        first = last_history_row(history)
        c0, s0, t0 = tree_cpu_seconds(locust.pid), tree_cpu_seconds(server.proc.pid), time.monotonic()
        time.sleep(args.seconds)
        last = last_history_row(history)
        c1, s1, t1 = tree_cpu_seconds(locust.pid), tree_cpu_seconds(server.proc.pid), time.monotonic()
        _, err = locust.communicate(timeout=120)
    finally:
        server.stop()
    if first is None or last is None or last[1] <= first[1]:
        raise RuntimeError(f"Locust reported no calls (exit {locust.returncode}):\n{err[-3000:]}")
    elapsed = t1 - t0
    calls_per_s = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
    client_cores = (c1 - c0) / elapsed
    server_cores = (s1 - s0) / elapsed
    client_us = client_cores * 1e6 / calls_per_s
    server_us = server_cores * 1e6 / calls_per_s
    client_full = client_cores >= 0.9 * len(client_cpus)
    server_full = server_cores >= 0.9 * len(server_cpus)
    bound = "client" if client_full and not server_full else "server" if server_full else "neither"
    if client_full and server_full:
        bound = "both"
    return {
        "server": kind,
        "user_class": args.user_class,
        "users": args.users,
        "channels": args.channels,
        "processes": args.processes or 1,
        "calls_per_s": round(calls_per_s),
        "client_cores": round(client_cores, 3),
        "server_cores": round(server_cores, 3),
        "client_us_per_call": round(client_us, 1),
        "server_us_per_call": round(server_us, 1),
        "client_ceiling_calls_per_s": round(1e6 * len(client_cpus) / client_us),
        "bound": bound,
        "locust_exit_code": locust.returncode,
    }


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        **{name: version(name) for name in ("locust", "gevent", "grpcio")},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", choices=("echo", "engine", "both"), default="both")
    p.add_argument("--users", type=int, default=48, help="closed-loop users (default 48)")
    p.add_argument("--channels", type=int, default=4, help="gRPC channels per Locust process (default 4)")
    p.add_argument("--processes", type=int, default=0, help="Locust --processes (default: one process)")
    p.add_argument("--user-class", choices=("OmsUser", "StreamGatewayUser"), default="OmsUser")
    p.add_argument("--seconds", type=float, default=15.0, help="measured window (default 15)")
    p.add_argument("--warmup", type=float, default=6.0, help="seconds before the window (default 6)")
    p.add_argument("--server-cpus", default="0", help="CPUs of the server (default 0)")
    p.add_argument("--client-cpus", default="1", help="CPUs of Locust (default 1)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = ("echo", "engine") if args.server == "both" else (args.server,)
    results = []
    host = machine()
    with tempfile.TemporaryDirectory(prefix="locust-capacity-") as tmp:
        for kind in kinds:
            res = measure(args, kind, Path(tmp))
            results.append(res)
            print(
                f"{kind:>6}: {res['calls_per_s']:>6,} calls/s  Locust {res['client_cores']:.2f} cores "
                f"({res['client_us_per_call']:.0f} us/call, ceiling {res['client_ceiling_calls_per_s']:,} "
                f"calls/s)  server {res['server_cores']:.2f} cores "
                f"({res['server_us_per_call']:.0f} us/call)  bound: {res['bound']}",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"argv": sys.argv[1:], "machine": host, "results": results}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
