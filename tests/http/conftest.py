"""A real engine with its HTTP front door on, and an httpx client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from engine.server import EngineServer
from tests.conftest import ServerFactory, free_port

HttpFactory = Callable[..., Awaitable[tuple[EngineServer, httpx.AsyncClient]]]


@pytest.fixture
async def start_http(start_engine: ServerFactory) -> AsyncIterator[HttpFactory]:
    """`engine, client = await start_http(**settings)`: an in-process engine with --http-port, and an
    httpx client on it."""
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: Any) -> tuple[EngineServer, httpx.AsyncClient]:
        engine, _ = await start_engine(http_port=free_port(), **overrides)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{engine.http_port}", timeout=10.0)
        clients.append(client)
        return engine, client

    yield start
    for client in clients:
        await client.aclose()


def trade_json(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """One valid trade in the proto3 JSON mapping (the README's trade, numbered)."""
    trade: dict[str, Any] = {
        "trade_id": f"T-{1001 + i}",
        "account_id": "ACC-7",
        "counterparty_id": "CP0042",
        "instrument_id": "US0378331005",
        "asset_class": "ASSET_CLASS_EQUITY",
        "side": "SIDE_SELL",
        "quantity": 25000 + i,
        "price": 187.5,
        "currency": "USD",
        "trade_date": "2026-11-20",
        "settlement_date": "2026-11-23",
        "settlement_venue": "DTC",
        "inventory_ratio": 0.6,
        "on_loan_recall_pending": True,
    }
    trade.update(overrides)
    return {k: v for k, v in trade.items() if v is not None}
