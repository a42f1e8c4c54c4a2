"""The load generator: one client process's calls (closed loop, open loop, or ScoreStream messages)
over pre-serialized requests with grpc.aio, timed on a barrier-started window; answers stay bytes
(the first few are parsed and checked)."""

from __future__ import annotations

import asyncio
import gc
import math
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier

import numpy as np
import numpy.typing as npt

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from tradescore_bench.system import pin_process

F64 = npt.NDArray[np.float64]
SCORE_METHOD = "/tradescore.v1.TradeScorer/Score"
STREAM_METHOD = "/tradescore.v1.TradeScorer/ScoreStream"
OIP_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    target: str
    mode: str  # "closed", "open" or "stream"
    requests: list[bytes]
    trades_per_call: int
    concurrency: int  # closed loop: calls in flight in this process
    rate: float  # open loop: calls/s offered by this process
    phase_s: float  # open loop: offset of this process's schedule
    channels: int
    warmup_s: float
    duration_s: float
    timeout_s: float
    cpus: set[int]
    parse_responses: bool
    first: int  # index of this process's first request
    window: int = 64  # stream: messages in flight per stream
    method: str = SCORE_METHOD  # the unary method called (OIP_METHOD: the Open Inference Protocol case)


@dataclass(slots=True)
class WorkerResult:
    latencies_s: F64 = field(default_factory=lambda: np.empty(0))  # ok calls in the window
    # when each of those was recorded (perf_counter, CLOCK_MONOTONIC: comparable across processes):
    # its answer for closed loops and streams, its scheduled send for the open loop
    recorded_at_s: F64 = field(default_factory=lambda: np.empty(0))
    error_latencies_s: F64 = field(default_factory=lambda: np.empty(0))  # failed calls in the window
    service_s: F64 = field(default_factory=lambda: np.empty(0))  # open loop: from the actual send
    send_lag_s: F64 = field(default_factory=lambda: np.empty(0))  # open loop: actual - scheduled send
    ok: int = 0
    sent: int = 0  # open loop: calls actually sent inside the window
    scheduled: int = 0  # open loop: calls scheduled inside the window
    errors: dict[str, int] = field(default_factory=dict)
    error_details: dict[str, str] = field(default_factory=dict)  # code -> the first message seen
    warmup_calls: int = 0
    warmup_errors: dict[str, int] = field(default_factory=dict)
    checked: int = 0  # responses parsed and checked
    window_s: float = 0.0
    cpu_s: float = 0.0
    error: str = ""


class _Load:
    """One client process's calls: closed or open loop over pre-serialized requests."""

    def __init__(self, spec: LoadSpec) -> None:
        """Call from inside the event loop that runs `run` (grpc.aio channels bind to it)."""
        import grpc

        self.spec = spec
        self.grpc = grpc
        options = [
            ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        self.channels = [
            grpc.aio.insecure_channel(spec.target, options=options) for _ in range(spec.channels)
        ]
        # no serializers: the requests are bytes already, responses stay bytes
        self.calls = [ch.unary_unary(spec.method, None, None) for ch in self.channels]
        self.streams = [ch.stream_stream(STREAM_METHOD, None, None) for ch in self.channels]
        self.window = (math.inf, math.inf)
        self.stop = False
        self.result = WorkerResult()
        self._lat: list[float] = []
        self._at: list[float] = []
        self._err_lat: list[float] = []
        self._svc: list[float] = []
        self._lag: list[float] = []
        self._errors: Counter[str] = Counter()
        self._warm_errors: Counter[str] = Counter()
        self._checks_left = 8
        self._min_size = 0

    def _check(self, raw: bytes) -> str | None:
        """None when `raw` is a full, sane answer; else an error label (counted like a status code)."""
        if self.spec.method == OIP_METHOD:
            bad = check_oip_response(raw, self.spec.trades_per_call)
            if bad is None:
                self.result.checked += 1
                self._min_size = len(raw) // 2
            return bad
        resp = pb.ScoreResponse.FromString(raw)
        if resp.HasField("error") or len(resp.scores) != self.spec.trades_per_call:
            return "BAD_RESPONSE_COUNT"
        if not all(0.0 <= s.fail_probability <= 1.0 and s.risk_band > 0 for s in resp.scores):
            return "BAD_RESPONSE_VALUE"
        self.result.checked += 1
        self._min_size = len(raw) // 2  # later answers must be of the same order of size
        return None

    async def _call(self, k: int, request: bytes) -> str | None:
        """One call; None when it succeeded, else the status code name."""
        try:
            raw = await self.calls[k % len(self.calls)](request, timeout=self.spec.timeout_s)
        except self.grpc.aio.AioRpcError as exc:
            code = str(exc.code().name)
            self.result.error_details.setdefault(code, str(exc.details())[:200])
            return code
        if self.spec.parse_responses or self._checks_left > 0:
            self._checks_left -= 1
            return self._check(raw)
        if len(raw) < self._min_size:
            return "SHORT_RESPONSE"
        return None

    def _record(self, when: float, latency: float, error: str | None) -> None:
        lo, hi = self.window
        if lo <= when < hi:
            if error is None:
                self.result.ok += 1
                self._lat.append(latency)
                self._at.append(when)
            else:
                self._errors[error] += 1
                self._err_lat.append(latency)
        elif when < lo:
            self.result.warmup_calls += 1
            if error is not None:
                self._warm_errors[error] += 1

    async def _closed_worker(self, k: int) -> None:
        reqs = self.spec.requests
        i = self.spec.first + k
        clock = time.perf_counter
        while not self.stop:
            request = reqs[i % len(reqs)]
            i += self.spec.concurrency
            t0 = clock()
            error = await self._call(k, request)
            t1 = clock()
            self._record(t1, t1 - t0, error)

    async def _stream_worker(self, k: int) -> None:
        """One ScoreStream: up to `window` messages in flight; latency from write to its answer."""
        reqs = self.spec.requests
        call = self.streams[k % len(self.streams)](None)  # requests are written below
        room = asyncio.Semaphore(self.spec.window)
        sent: deque[float] = deque()
        clock = time.perf_counter

        async def writer() -> None:
            i = self.spec.first + k
            while not self.stop:
                await room.acquire()
                sent.append(clock())
                await call.write(reqs[i % len(reqs)])
                i += 1
            await call.done_writing()

        task = asyncio.get_running_loop().create_task(writer())
        try:
            while True:
                raw = await call.read()
                if not isinstance(raw, bytes):  # grpc.aio.EOF: the server closed the stream
                    break
                t1 = clock()
                t0 = sent.popleft()
                room.release()
                error = None
                if self.spec.parse_responses or self._checks_left > 0:
                    self._checks_left -= 1
                    error = self._check(raw)
                self._record(t1, t1 - t0, error)
        except self.grpc.aio.AioRpcError as exc:
            code = str(exc.code().name)
            self.result.error_details.setdefault(code, str(exc.details())[:200])
            self._record(clock(), 0.0, code)
        finally:
            task.cancel()

    async def _open_call(self, k: int, scheduled: float) -> None:
        sent = time.perf_counter()
        error = await self._call(k, self.spec.requests[(self.spec.first + k) % len(self.spec.requests)])
        done = time.perf_counter()
        lo, hi = self.window
        if lo <= scheduled < hi:
            self.result.scheduled += 1
            self.result.sent += lo <= sent < hi
            self._lag.append(sent - scheduled)
            if error is None:
                self._svc.append(done - sent)
        self._record(scheduled, done - scheduled, error)

    def _open_sender(self, loop: asyncio.AbstractEventLoop, pending: set[asyncio.Task[None]]) -> None:
        """The schedule, kept by a thread: time.sleep is precise to tens of microseconds where the
        event loop's timers are only good to a millisecond; each due call is handed to the loop.
        Behind schedule, calls go out at once (open loop: no call is ever skipped)."""

        def start(k: int, scheduled: float) -> None:
            task = loop.create_task(self._open_call(k, scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)

        interval = 1.0 / self.spec.rate
        next_t = time.perf_counter() + self.spec.phase_s
        k = 0
        while not self.stop:
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(start, k, next_t)
            k += 1
            next_t += interval

    async def run(self, barrier: Barrier) -> WorkerResult:
        loop = asyncio.get_running_loop()
        spec = self.spec
        for ch in self.channels:
            await asyncio.wait_for(ch.channel_ready(), 30)
        pending: set[asyncio.Task[None]] = set()
        if spec.mode == "closed":
            runners = [loop.create_task(self._closed_worker(k)) for k in range(spec.concurrency)]
        elif spec.mode == "stream":
            runners = [loop.create_task(self._stream_worker(k)) for k in range(spec.concurrency)]
        else:
            sys.setswitchinterval(0.0005)  # the sender thread must get the GIL back promptly
            sender = threading.Thread(target=self._open_sender, args=(loop, pending), daemon=True)
            sender.start()
            runners = [loop.create_task(asyncio.to_thread(sender.join))]
        await asyncio.sleep(spec.warmup_s)
        for task in runners:
            if task.done():
                task.result()  # a crashed runner: raise it here
        await loop.run_in_executor(None, barrier.wait, 120.0)  # every client and the parent start together
        # no collector pauses in the load generator while it measures (they would read as latency)
        gc.collect()
        gc.freeze()
        gc.disable()
        start = time.perf_counter()
        self.window = (start, start + spec.duration_s)
        cpu0 = time.process_time()
        ended = asyncio.Event()  # SIGTERM ends the window early (a paused load, see stop_load)
        loop.add_signal_handler(signal.SIGTERM, ended.set)
        try:
            await asyncio.wait_for(ended.wait(), max(0.0, self.window[1] - time.perf_counter()))
        except TimeoutError:
            pass
        self.window = (start, min(self.window[1], time.perf_counter()))
        self.result.cpu_s = time.process_time() - cpu0
        self.result.window_s = time.perf_counter() - start
        self.stop = True
        gc.enable()
        await asyncio.gather(*runners)
        if pending:
            await asyncio.wait(pending, timeout=spec.timeout_s + 1.0)
        for ch in self.channels:
            await ch.close(None)
        r = self.result
        r.latencies_s = np.asarray(self._lat)
        r.recorded_at_s = np.asarray(self._at)
        r.error_latencies_s = np.asarray(self._err_lat)
        r.service_s = np.asarray(self._svc)
        r.send_lag_s = np.asarray(self._lag)
        r.errors = dict(self._errors)
        r.warmup_errors = dict(self._warm_errors)
        return r


async def _drive(spec: LoadSpec, barrier: Barrier) -> WorkerResult:
    return await _Load(spec).run(barrier)


def client_main(spec: LoadSpec, barrier: Barrier, conn: Connection) -> None:
    pin_process(spec.cpus)
    try:
        conn.send(asyncio.run(_drive(spec, barrier)))
    except BaseException as exc:  # noqa: BLE001 - report any failure to the parent
        barrier.abort()
        conn.send(WorkerResult(error=f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def check_oip_response(raw: bytes, rows: int) -> str | None:
    """None when `raw` is a ModelInferResponse with `rows` probabilities and risk bands, raw."""
    from engine._proto.inference import grpc_predict_v2_pb2 as oip

    resp = oip.ModelInferResponse.FromString(raw)
    contents = resp.raw_output_contents
    if [o.name for o in resp.outputs] != ["fail_probability", "risk_band"] or [len(c) for c in contents] != [
        4 * rows,
        4 * rows,
    ]:
        return "BAD_RESPONSE_COUNT"
    probs, bands = np.frombuffer(contents[0], "<f4"), np.frombuffer(contents[1], "<i4")
    if not (((probs >= 0) & (probs <= 1)).all() and ((bands >= 1) & (bands <= 4)).all()):
        return "BAD_RESPONSE_VALUE"
    return None
