"""What the benchmark reads from the operating system: CPU sets and pinning, /proc CPU times of
a process, of its threads (schedstat, ns) and of every other process on the machine, and the
machine itself (CPU model, versions, commit) for the report."""

from __future__ import annotations

import importlib
import importlib.metadata
import multiprocessing as mp
import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpus_text(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def pin_process(cpus: set[int]) -> None:
    """Pin every thread of this process (numpy may already have started some) to `cpus`."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # the thread has exited meanwhile
            pass


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads, live and exited)."""
    with open(f"/proc/{pid}/stat") as fh:
        after_comm = fh.read().rsplit(")", 1)[1].split()
    return (int(after_comm[11]) + int(after_comm[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def thread_cpu_ns(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, nanoseconds on a CPU so far) for every live thread of `pid`
    (schedstat: ns precision, where utime/stime tick at 10 ms)."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                ns = int(fh.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                comm = fh.read().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[int(tid)] = (comm, float(ns))
    return out


THREAD_GROUPS = ("inference", "event_loop", "grpc_core_threads", "other_python_threads")


def thread_group(pid: int, tid: int, comm: str) -> str:
    """Which of THREAD_GROUPS a thread of server `pid` belongs to: the engine's inference threads
    (named "inference-N"), the event loop (main thread), gRPC core's C threads (event_engine,
    timer, lifeguard), other Python threads (grpc.aio's poller; the bare server's executor)."""
    if tid == pid:
        return "event_loop"
    if comm.startswith("inference"):
        return "inference"
    if comm.startswith(("event_engine", "grpc", "lifeguard")):
        return "grpc_core_threads"
    return "other_python_threads"


def thread_groups(
    pid: int, before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU time between two `thread_cpu_ns` readings by THREAD_GROUPS."""
    groups = dict.fromkeys(THREAD_GROUPS, 0.0)
    for tid, (comm, cpu) in after.items():
        groups[thread_group(pid, tid, comm)] += cpu - before.get(tid, (comm, 0.0))[1]
    return groups


def proc_thread_cpus(pid: int) -> list[int]:
    """Union of the CPU affinity of every thread of `pid`."""
    cpus: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpus |= os.sched_getaffinity(int(tid))
        except ProcessLookupError:
            pass
    return sorted(cpus)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Busy and steal seconds of a CPU set, from /proc/stat (all processes, the kernel included)."""

    busy: float
    steal: float

    @staticmethod
    def read(cpus: set[int]) -> CpuTimes:
        busy = steal = 0
        with open("/proc/stat") as fh:
            for line in fh:
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                    continue
                user, nice, system, _idle, _iowait, irq, softirq, st = (int(v) for v in values[:8])
                busy += user + nice + system + irq + softirq
                steal += st
        return CpuTimes(busy / CLK_TCK, steal / CLK_TCK)

    def until(self, later: CpuTimes, seconds: float, cpus: int) -> dict[str, float]:
        """Utilisation between two readings, as a share of `cpus` CPUs (1.0 = all busy)."""
        return {
            "busy": (later.busy - self.busy) / seconds / cpus,
            "steal": (later.steal - self.steal) / seconds / cpus,
        }


def others_cpu_seconds() -> float:
    """CPU seconds used so far by every process that is not this benchmark or one of its
    descendants (the servers, the clients, py-spy): other users of the machine, kernel threads
    included. Exact per-process accounting, unlike the per-CPU tick counts of /proc/stat, which
    misattribute short bursts. Children reaped in between show up in their parent's cutime."""
    procs: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                after = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = sum(int(v) for v in after[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
        procs[int(entry)] = (int(after[1]), cpu)
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    return sum(cpu for pid, (_, cpu) in procs.items() if pid not in mine)


def proc_status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "protobuf": _version("protobuf"),
        "engine": _version("tradescore-engine"),
        "commit": git("rev-parse", "HEAD"),
        "worktree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def _child_main(measure: Callable[[Any], dict[str, Any]], job: Any, conn: Connection) -> None:
    try:
        conn.send(measure(job))
    except BaseException as exc:  # noqa: BLE001 - report any failure to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_in_child(
    measure: Callable[[Any], dict[str, Any]], job: Any, name: str, timeout_s: float
) -> dict[str, Any]:
    """`measure(job)` in a fresh (spawned) process named `name`: its result, or RuntimeError when it
    raised or did not answer within `timeout_s` (then it is killed). `measure` must be importable
    (a module-level function) and pin itself."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(measure, job, child), name=name)
    proc.start()
    child.close()
    if not parent.poll(timeout_s):
        proc.kill()
        raise RuntimeError(f"{name} did not finish in {timeout_s:.0f} s")
    result: dict[str, Any] = parent.recv()
    proc.join(10)
    if "error" in result:
        raise RuntimeError(f"{name} failed: {result['error']}")
    return result
