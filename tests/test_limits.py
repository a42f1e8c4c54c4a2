"""Limits, each enforced with a clear status: message size, trades per call, streams per connection,
keepalive (vanished clients, clients that ping too often). Real servers, real clients."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc

from .conftest import ServerFactory, sample_request

OWN_POOL = [("grpc.use_local_subchannel_pool", 1)]


async def test_a_message_over_max_message_bytes_is_refused(start_engine: ServerFactory) -> None:
    _, channel = await start_engine(max_message_bytes=64 * 1024)
    stub = pb_grpc.TradeScorerStub(channel)
    big = sample_request(900)
    assert big.ByteSize() > 64 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(big, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.value.details() or "")
    assert len((await stub.Score(sample_request(50), timeout=10)).scores) == 50  # the server is fine


async def test_more_trades_than_the_limit_are_refused_before_decoding(start_engine: ServerFactory) -> None:
    _, channel = await start_engine(max_trades_per_request=100)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pb_grpc.TradeScorerStub(channel).Score(sample_request(101), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "trades" in (err.value.details() or "") and "100" in (err.value.details() or "")


async def test_streams_per_connection_are_limited(start_engine: ServerFactory) -> None:
    engine, channel = await start_engine(max_streams_per_connection=2)
    stub = pb_grpc.TradeScorerStub(channel)
    request = sample_request(2)
    release = asyncio.Event()

    async def held() -> AsyncIterator[pb.ScoreRequest]:
        yield request
        await release.wait()

    async def first_answer(call: grpc.aio.StreamStreamCall[pb.ScoreRequest, pb.ScoreResponse]) -> int:
        response = await call.read()
        assert isinstance(response, pb.ScoreResponse)
        return len(response.scores)

    streams = [stub.ScoreStream(held()) for _ in range(2)]
    assert [await first_answer(c) for c in streams] == [2, 2]
    third = stub.ScoreStream(held())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await third.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many streams open on this connection (limit 2)" in (err.value.details() or "")
    # another connection is not affected; unary calls on this one neither
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine.port}", options=OWN_POOL) as other:
        elsewhere = pb_grpc.TradeScorerStub(other).ScoreStream(held())
        assert await first_answer(elsewhere) == 2
        assert len((await stub.Score(request, timeout=5)).scores) == 2
        release.set()
        for call in (*streams, elsewhere):
            assert await call.code() == grpc.StatusCode.OK
    # closed streams free their places
    again = stub.ScoreStream(iter([request]))
    assert [len(r.scores) async for r in again] == [2]
    assert engine.calls is not None and engine.calls.active == 0


CLIENT = textwrap.dedent(
    """
    import sys, time, grpc
    from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
    from tests.conftest import sample_request

    def requests():
        yield sample_request(2)
        time.sleep(3600)  # the stream stays open; this process will be stopped, then killed

    with grpc.insecure_channel(sys.argv[1]) as channel:
        for response in pb_grpc.TradeScorerStub(channel).ScoreStream(requests()):
            print("answered", len(response.scores), flush=True)
    """
)


@pytest.mark.slow
async def test_keepalive_frees_the_streams_of_a_client_that_stopped_answering(
    start_engine: ServerFactory,
) -> None:
    engine, _ = await start_engine(keepalive_time_s=0.5, keepalive_timeout_s=0.5)
    assert engine.calls is not None
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{engine.port}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        line = await asyncio.to_thread(client.stdout.readline)
        assert line.strip() == "answered 2"
        assert engine.calls.active == 1
        # frozen: its kernel still acknowledges TCP, but nothing answers HTTP/2 pings
        client.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        while engine.calls.active and time.monotonic() - started < 10:
            await asyncio.sleep(0.05)
        assert engine.calls.active == 0, "the stream of a client that stopped answering is still open"
        print(f"keepalive: the frozen client's stream was freed after {time.monotonic() - started:.2f} s")
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()


@pytest.mark.slow
async def test_a_client_that_pings_too_often_is_sent_away(start_engine: ServerFactory) -> None:
    engine, _ = await start_engine(min_client_ping_interval_s=5.0)
    eager = [
        *OWN_POOL,
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{engine.port}", options=eager) as channel:
        stub = pb_grpc.TradeScorerStub(channel)
        request = sample_request(2)

        async def quiet() -> AsyncIterator[pb.ScoreRequest]:
            yield request
            await asyncio.sleep(30)

        call = stub.ScoreStream(quiet())
        first = await call.read()
        assert isinstance(first, pb.ScoreResponse) and len(first.scores) == 2
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "Too many pings"  # the server's GOAWAY ENHANCE_YOUR_CALM too_many_pings
    assert engine.calls is not None and engine.calls.active == 0


async def test_cancelled_streams_and_closed_connections_give_back_what_they_held(
    start_engine: ServerFactory,
) -> None:
    engine, channel = await start_engine(max_streams_per_connection=1)
    calls, batcher = engine.calls, engine.batcher
    assert calls is not None and batcher is not None
    stub = pb_grpc.TradeScorerStub(channel)
    request = sample_request(200)

    async def endless() -> AsyncIterator[pb.ScoreRequest]:
        while True:
            yield request
            await asyncio.sleep(0)

    async def settled() -> bool:
        """Every call and queued trade given back (waited on: the suite's timeout ends a leak)."""
        while calls.active or batcher.queued_rows:
            await asyncio.sleep(0.02)
        return True

    # a stream cancelled by its client while requests are in flight
    call = stub.ScoreStream(endless())
    assert isinstance(await call.read(), pb.ScoreResponse)
    call.cancel()
    assert await settled(), "a cancelled stream kept its place or its queued trades"
    # its place on the connection is free again
    again = stub.ScoreStream(iter([request]))
    assert [len(r.scores) async for r in again] == [200]

    # a connection closed under an open stream
    other = grpc.aio.insecure_channel(f"127.0.0.1:{engine.port}", options=OWN_POOL)
    dropped = pb_grpc.TradeScorerStub(other).ScoreStream(endless())
    assert isinstance(await dropped.read(), pb.ScoreResponse)
    await other.close(grace=None)
    assert await settled(), "a closed connection's stream kept its place or its queued trades"
    assert len((await stub.Score(request, timeout=10)).scores) == 200


@pytest.mark.slow
async def test_a_client_that_does_not_read_holds_at_most_its_stream_window(
    start_engine: ServerFactory,
) -> None:
    engine, channel = await start_engine(stream_window=8)
    calls, batcher = engine.calls, engine.batcher
    assert calls is not None and batcher is not None
    request = sample_request(50)
    sent = 0

    async def flood() -> AsyncIterator[pb.ScoreRequest]:
        nonlocal sent
        while True:
            sent += 1
            yield request

    call = pb_grpc.TradeScorerStub(channel).ScoreStream(flood())
    first = await call.read()  # then read nothing more
    assert isinstance(first, pb.ScoreResponse)
    # the engine answers until the answers fill HTTP/2's flow-control windows, then its writes
    # wait, it stops reading (its read-ahead is the stream window) and the client cannot send
    # (however long that takes on a loaded machine: the suite's timeout ends a client never stopped)
    counts: list[int] = []
    queued: list[int] = []
    while len(counts) < 4 or counts[-1] != counts[-4]:
        await asyncio.sleep(0.25)
        counts.append(sent)
        queued.append(batcher.queued_rows)
    assert max(queued) <= 8 * 50, queued  # never more than the stream window's trades queued
    print(f"a client that does not read: {sent} requests sent before flow control stopped it")
    call.cancel()
    while calls.active or batcher.queued_rows:  # the cancelled stream gives back what it held
        await asyncio.sleep(0.02)
