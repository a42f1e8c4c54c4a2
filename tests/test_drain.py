"""The drain, in process: a call held in the model when the drain starts is scored to its end; a call
made during the drain is refused by the engine that is still serving the held one.

The process-level test (`test_process.py`: SIGTERM, exit code 0) shows the signal path; this one
holds a batch with a gate (`HeldBatches`), so that "during the drain" is a state the test makes
rather than a moment it hopes to hit.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc

from .conftest import HeldBatches, ServerFactory, make_trade, sample_request

#: GetModelInfo calls tried while the drain starts: each is a round trip to the live engine
ATTEMPTS = 10_000


async def test_a_call_during_the_drain_is_refused_while_a_held_call_is_scored(
    start_engine: ServerFactory,
) -> None:
    engine, channel = await start_engine(inline_rows=0, grace_seconds=30.0)
    stub = pb_grpc.TradeScorerStub(channel)
    with HeldBatches(engine) as held:
        in_flight = asyncio.ensure_future(stub.Score(sample_request(3, seed=5), timeout=60))
        while not held.entered.is_set():  # however long a loaded machine takes to get it there
            await held.wait_entered()
        # the call is in the model, its batch waits at the gate
        stopping = asyncio.ensure_future(engine.stop(grace=30.0))
        # GetModelInfo does not queue behind the held batch: answered until the engine stops
        # taking calls, then refused; the held call keeps the engine draining meanwhile
        info_refused: grpc.aio.AioRpcError | None = None
        for _ in range(ATTEMPTS):
            try:
                await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                info_refused = exc
                break
        assert info_refused is not None, f"{ATTEMPTS} calls answered after the drain began"
        # the call made during the drain: refused, not queued behind the held batch
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Score(pb.ScoreRequest(request_id="during", trades=[make_trade(1)]), timeout=10)
        assert not in_flight.done() and not stopping.done(), "the engine stopped before the held call"
        held.release()
        answer = await in_flight
        await stopping
    # a server that stopped taking calls ends a new one CANCELLED on a connection it had, or
    # UNAVAILABLE once the GOAWAY reached the client: either way refused, not held and not scored
    for error in (info_refused, refused.value):
        assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), error
    assert len(answer.scores) == 3 and not answer.HasField("error")
    assert engine.metrics.batches_run() == 1  # the held batch; the refused call never reached the model
