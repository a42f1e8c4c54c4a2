"""The gRPC floor: a bare grpc.aio server that answers with canned bytes, and no engine code.

    python loadtest/tradescore_bench/floor_server.py CPUS BATCH_TRADES [EVENT_LOOP]

Pins itself to CPUS (e.g. "0"), serves `tradescore.v1.TradeScorer` on 127.0.0.1 (a free port,
printed as "floor: serving tradescore.v1.TradeScorer on 127.0.0.1:PORT"):

- `Score` (unary): a small request gets a one-score answer, a large one (1 KiB and more) an
  answer of BATCH_TRADES scores: what a unary call costs in gRPC alone;
- `ScoreStream` (bidirectional): the same answer per message: the bare bidi handler.

EVENT_LOOP is the engine's `--event-loop` (uvloop by default): the floor runs on the same loop
as the engine it is compared with, so the difference is what the engine adds.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    os.sched_setaffinity(0, {int(c) for c in argv[0].split(",")})
    # run as a script, this folder is sys.path[0]: its modules must not shadow anyone's imports
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    batch_trades = int(argv[1])
    event_loop = argv[2] if len(argv) > 2 else "uvloop"

    import grpc

    from engine._proto.tradescore.v1 import tradescore_pb2 as pb

    def answer(n: int) -> bytes:
        scores = [
            pb.TradeScore(trade_id=f"T{i:07d}", fail_probability=0.1, risk_band=pb.RISK_BAND_LOW)
            for i in range(n)
        ]
        response = pb.ScoreResponse(request_id="r", model_name="floor", model_version="0", scores=scores)
        return response.SerializeToString()

    small, large = answer(1), answer(batch_trades)

    async def score(request: bytes, context: Any) -> bytes:
        return small if len(request) < 1024 else large

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield small if len(request) < 1024 else large

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "tradescore.v1.TradeScorer",
            {
                "Score": grpc.unary_unary_rpc_method_handler(score),
                "ScoreStream": grpc.stream_stream_rpc_method_handler(stream),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"floor: serving tradescore.v1.TradeScorer on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await server.wait_for_termination()

    if event_loop == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
