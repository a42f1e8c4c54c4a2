"""Pipelined bidirectional streams: read ahead, answer in order (ScoreStream and ScorePairsStream).

A reader task takes requests off the stream while earlier ones are still being
scored, up to `window` of them, so that one stream fills the micro-batcher the
way many unary calls would; the answers go out in request order. A refused
request (an EngineError while preparing or scoring it) gets its own error
response and the stream goes on. When the caller goes away, what it will
never read is dropped (its queued rows are cancelled, so the batcher skips them).

The two sides hand requests over through a deque and wake each other only when
one of them waits (a future made then), not through an asyncio.Queue: a message
costs a deque append and pop, not a queue's bookkeeping on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import EngineError, InvalidInput

Req = TypeVar("Req")
Prep = TypeVar("Prep")
Out = TypeVar("Out")


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def pipelined(
    requests: AsyncIterator[Req],
    *,
    prepare: Callable[[Req], Prep],
    answer: Callable[[Req, Prep], Awaitable[Out]],
    refused: Callable[[Req, EngineError], Out],
    count_refusal: Callable[[EngineError], None],
    drop: Callable[[Prep], object],
    window: int,
) -> AsyncIterator[Out]:
    """Answers to `requests`, in order: `answer(request, prepare(request))`, or `refused(request, error)`.

    `prepare` runs as each request arrives (it queues the request's rows and
    raises EngineError to refuse it); `answer` awaits the rows' results and
    builds the response; `drop` cancels a prepared request nobody will read.
    """
    loop = asyncio.get_running_loop()
    ready: deque[tuple[Req, Prep | EngineError]] = deque()
    writer_waits: asyncio.Future[None] | None = None  # the answering side waits for a request
    reader_waits: asyncio.Future[None] | None = None  # the reading side waits for room
    read_all = False

    async def read() -> None:
        nonlocal reader_waits, read_all
        try:
            async for request in requests:
                try:
                    item: Prep | EngineError = prepare(request)
                except EngineError as exc:
                    count_refusal(exc)
                    item = exc
                ready.append((request, item))
                _wake(writer_waits)
                while len(ready) >= window:
                    reader_waits = loop.create_future()
                    await reader_waits
        finally:
            read_all = True
            _wake(writer_waits)

    reader = loop.create_task(read(), name="stream-reader")
    try:
        while True:
            if not ready:
                if read_all:
                    break
                writer_waits = loop.create_future()
                await writer_waits
                continue
            request, item = ready.popleft()
            _wake(reader_waits)
            if not isinstance(item, EngineError):
                try:
                    yield await answer(request, item)
                    continue
                except EngineError as exc:
                    item = exc
            yield refused(request, item)
        await reader  # surfaces a broken request stream as the call's error
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        while ready:  # the caller went away: drop what it will never read
            _, left = ready.popleft()
            if not isinstance(left, EngineError):
                drop(left)


def request_error(exc: EngineError) -> pb.RequestError:
    """The error of one refused stream message (ScoreStream, ScorePairsStream): the stream goes on."""
    err = pb.RequestError(code=exc.code.value[0], message=exc.client_message())
    if isinstance(exc, InvalidInput):
        err.field = exc.field
        err.trade_index = exc.index if exc.index is not None else -1
    return err
