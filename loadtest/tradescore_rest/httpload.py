"""A small HTTP/1.1 load generator on raw asyncio sockets: closed loop (N connections, each sends its
next request when the last answer arrived) or open loop (calls sent at a fixed rate, latency taken from
each call's scheduled send time). Requests are pre-built bytes; an answer is read up to its
Content-Length and only its status is parsed, so one client core drives several times what a Python
HTTP client library would (httpx: about 2,000 calls/s per core here).

Runs in a child process pinned to the client CPUs (`run_load` starts it): the parent only reads the
result. Keep-alive throughout; a connection the server closes is opened again.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any


@dataclass(frozen=True)
class HttpLoad:
    host: str
    port: int
    #: complete request messages (request line, headers, body), sent in turn
    requests: Sequence[bytes]
    seconds: float
    warmup: float = 1.0
    connections: int = 64
    #: calls/s offered (open loop); 0: closed loop over `connections`
    rate: float = 0.0
    cpus: frozenset[int] = frozenset({1})


@dataclass
class LoadResult:
    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    client_cpu: float = 0.0  # CPU seconds of the load process over the window
    late: int = 0  # open loop: calls sent more than 1 ms after their scheduled time

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def _parse(self) -> None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"content-length:")
        length = 0
        if i >= 0:
            j = head.find(b"\r\n", i)
            length = int(head[i + 15 : j if j >= 0 else len(head)])
        if len(buf) < end + 4 + length:
            return
        status = int(buf[9:12])
        if b"\r\nconnection: close" in head:
            # the server closes after this answer (Flask's werkzeug): the next call reconnects
            # instead of writing to a socket the server no longer reads
            self.closed = True
        del buf[: end + 4 + length]
        if not self.waiter.done():
            self.waiter.set_result(status)

    async def call(self, request: bytes) -> int:
        if self.transport is None or self.closed or self.transport.is_closing():
            raise ConnectionError("closed")  # HTTP/1.0 servers (Flask's) close after each answer
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await asyncio.wait_for(self.waiter, 30.0)
        except TimeoutError:
            raise ConnectionError("no answer in 30 s") from None


async def _connect(spec: HttpLoad) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, spec.host, spec.port)
    return protocol


async def _drive(spec: HttpLoad, marks: Connection | None = None) -> LoadResult:
    result = LoadResult()
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    start = clock() + spec.warmup
    stop = start + spec.seconds
    requests = list(spec.requests)
    n_req = len(requests)

    def record(t0: float, t1: float, status: int) -> None:
        if start <= t0 < stop:
            result.calls += 1
            result.latencies.append(t1 - t0)
            result.statuses[status] += 1

    async def closed(k: int) -> None:
        conn = await _connect(spec)
        i = k
        while clock() < stop:
            t0 = clock()
            try:
                status = await conn.call(requests[i % n_req])
            except ConnectionError:
                if not conn.closed and start <= t0 < stop:
                    result.errors += 1
                conn = await _connect(spec)
                continue
            record(t0, clock(), status)
            if conn.closed:
                if conn.transport is not None:
                    conn.transport.close()
                conn = await _connect(spec)
            i += 1
        if conn.transport is not None:
            conn.transport.close()

    pool: asyncio.Queue[_Connection] = asyncio.Queue()

    async def one(i: int, scheduled: float) -> None:
        conn = pool.get_nowait() if not pool.empty() else await _connect(spec)
        try:
            status = await conn.call(requests[i % n_req])
        except ConnectionError:
            if start <= scheduled < stop:
                result.errors += 1
            return
        record(scheduled, clock(), status)
        if not conn.closed:
            pool.put_nowait(conn)
        elif conn.transport is not None:
            conn.transport.close()

    async def opened() -> None:
        for _ in range(spec.connections):
            pool.put_nowait(await _connect(spec))
        interval = 1.0 / spec.rate
        t = clock()
        i = 0
        tasks: set[asyncio.Task[None]] = set()
        while t < stop:
            now = clock()
            if t > now:
                await asyncio.sleep(t - now)
            elif now - t > 0.001 and start <= t:
                result.late += 1
            task = loop.create_task(one(i, t))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            t += interval
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    cpu0 = None

    async def mark() -> None:
        nonlocal cpu0
        await asyncio.sleep(max(0.0, start - clock()))
        cpu0 = time.process_time()
        if marks is not None:
            marks.send("start")
        await asyncio.sleep(max(0.0, stop - clock()))
        if marks is not None:
            marks.send("stop")

    marker = loop.create_task(mark())
    if spec.rate > 0:
        await opened()
    else:
        await asyncio.gather(*(closed(k) for k in range(spec.connections)))
    await marker
    result.client_cpu = time.process_time() - (cpu0 or 0.0)
    result.seconds = spec.seconds
    return result


def _main(spec: HttpLoad, conn: Connection) -> None:
    os.sched_setaffinity(0, set(spec.cpus))
    import uvloop

    result = uvloop.run(_drive(spec, conn))
    conn.send(result)
    conn.close()


def run_load(spec: HttpLoad, on_mark: Callable[[str], None] | None = None) -> LoadResult:
    """Run `spec` in a child process pinned to `spec.cpus`; its result. `on_mark("start")` and
    `on_mark("stop")` are called (in this process) when the measured window opens and closes."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_main, args=(spec, child), daemon=True)
    proc.start()
    child.close()
    try:
        while True:
            got = parent.recv()
            if isinstance(got, str):
                if on_mark is not None:
                    on_mark(got)
                continue
            result: LoadResult = got
            break
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return result


def post(
    path: str,
    body: bytes,
    host: str = "127.0.0.1",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> bytes:
    """One HTTP/1.1 POST request message."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def summary(result: LoadResult) -> dict[str, Any]:
    return {
        "calls_per_s": round(result.rate, 1),
        "p50_ms": round(result.percentile(0.5) * 1000, 3),
        "p99_ms": round(result.percentile(0.99) * 1000, 3),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": result.errors,
        "client_cpu_share": round(result.client_cpu / result.seconds, 3) if result.seconds else 0.0,
        "late_sends": result.late,
    }
