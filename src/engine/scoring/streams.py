"""Pipelined bidirectional streams: read ahead, answer in order (ScoreStream and ScorePairsStream).

A reader task takes requests off the stream while earlier ones are still being
scored, up to `window` of them, so that one stream fills the micro-batcher the
way many unary calls would; the answers go out in request order. A refused
request (an EngineError while preparing or scoring it) gets its own error
response and the stream goes on. When the caller goes away, what it will
never read is dropped (its queued rows are cancelled, so the batcher skips them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from engine.errors import EngineError

Req = TypeVar("Req")
Prep = TypeVar("Prep")
Out = TypeVar("Out")


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
    queue: asyncio.Queue[tuple[Req, Prep | EngineError] | None] = asyncio.Queue(window)

    async def read() -> None:
        try:
            async for request in requests:
                try:
                    item: Prep | EngineError = prepare(request)
                except EngineError as exc:
                    count_refusal(exc)
                    item = exc
                await queue.put((request, item))
        finally:
            await queue.put(None)

    reader = asyncio.get_running_loop().create_task(read(), name="stream-reader")
    try:
        while True:
            entry = await queue.get()
            if entry is None:
                break
            request, item = entry
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
        while not queue.empty():  # the caller went away: drop what it will never read
            left = queue.get_nowait()
            if left is not None and not isinstance(left[1], EngineError):
                drop(left[1])
