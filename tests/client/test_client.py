"""engine.client against real engines: helpers, bulk, tokens, retries proven against an engine that sheds."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path

import grpc
import pytest

from engine.client import AsyncClient, Client, Trade, to_trade
from tests.conftest import HeldBatches, ServerFactory, in_process_probabilities, sample_request


@dataclasses.dataclass
class MyTrade:
    trade_id: str
    account_id: str
    counterparty_id: str
    instrument_id: str
    asset_class: str
    side: str
    quantity: float
    price: float
    currency: str
    trade_date: dt.date
    settlement_date: dt.date
    settlement_venue: str
    inventory_ratio: float | None = None


def test_helpers_read_dicts_dataclasses_and_short_enum_names() -> None:
    mine = MyTrade("T1", "A", "CP0042", "US0378331005", "EQUITY", "sell", 10, 1.5, "USD",
                   dt.date(2026, 11, 20), dt.date(2026, 11, 23), "DTC")  # fmt: skip
    trade = to_trade(mine)
    assert trade.asset_class == 1 and trade.side == 2 and trade.trade_date == "2026-11-20"
    assert not trade.HasField("inventory_ratio")  # None: unknown, never 0
    assert to_trade(dataclasses.asdict(mine)) == trade and to_trade(trade) is trade
    assert to_trade({**dataclasses.asdict(mine), "asset_class": "ASSET_CLASS_EQUITY"}) == trade
    with pytest.raises(TypeError):
        to_trade(42)


async def test_async_and_bulk_scores_match_in_process(start_engine: ServerFactory) -> None:
    engine, _ = await start_engine(max_trades_per_request=50)
    request = sample_request(230, seed=11)
    expected = in_process_probabilities(engine, request)
    async with AsyncClient(f"127.0.0.1:{engine.port}", max_trades_per_request=50) as client:
        scores = await client.score_many(list(request.trades))
        assert [s.trade_id for s in scores] == [t.trade_id for t in request.trades]
        assert [s.fail_probability for s in scores] == pytest.approx(expected.tolist(), abs=1e-7)
        one = await client.score(request.trades[:3], explain="EXPLAIN_ALL")
        assert len(one.scores) == 3 and len(one.reasons) == 3
        info = await client.model_info()
        assert info.name == "settlement-fail"
    engine2, _ = await start_engine()

    def blocking() -> list[float]:
        with Client(f"127.0.0.1:{engine2.port}", max_trades_per_request=100) as client:
            return [s.fail_probability for s in client.score_many(list(request.trades))]

    got = await asyncio.get_running_loop().run_in_executor(None, blocking)
    assert got == pytest.approx(expected.tolist(), abs=1e-7)


async def test_tokens_are_sent_on_every_call(start_engine: ServerFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t0k3n\n")
    engine, _ = await start_engine(auth_tokens_file=str(tokens))
    async with AsyncClient(f"127.0.0.1:{engine.port}", token="t0k3n") as client:
        assert len((await client.score(sample_request(2).trades)).scores) == 2
    async with AsyncClient(f"127.0.0.1:{engine.port}", retries=1) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.score(sample_request(2).trades)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_retries_ride_out_an_engine_that_sheds(start_engine: ServerFactory) -> None:
    """One scoring call at a time, and that one held in the model: every other call is refused with
    RESOURCE_EXHAUSTED. The client's retry policy backs off and tries again; once the held call is
    released, the retried call gets through. Without retries the same call fails at once."""
    engine, _ = await start_engine(max_concurrent_rpcs=1, inline_rows=0)
    target = f"127.0.0.1:{engine.port}"
    trades = list(sample_request(1).trades)
    rejected = engine.metrics.rejected.labels("overload")
    async with AsyncClient(target, timeout=10.0) as holder, AsyncClient(target, timeout=10.0) as client:
        with HeldBatches(engine) as held:
            first = asyncio.ensure_future(holder.score(trades))
            await held.wait_entered()
            async with AsyncClient(target, retries=1) as plain:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await plain.score(trades)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            before = rejected._value.get()
            retried = asyncio.ensure_future(client.score(trades))
            while rejected._value.get() < before + 2:  # refused at least twice: it is retrying
                await asyncio.sleep(0.01)
            held.release()
            assert len((await first).scores) == 1
            assert len((await retried).scores) == 1
    assert rejected._value.get() >= before + 2


def test_trade_message_is_the_engines() -> None:
    assert Trade is type(sample_request(1).trades[0])
