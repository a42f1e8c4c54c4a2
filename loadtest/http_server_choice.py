#!/usr/bin/env python
"""Which HTTP server should carry the engine's REST/JSON front door? Measured, not guessed.

Each candidate serves the same small JSON handler (read the body, parse it with orjson, answer
150 bytes of JSON), in one process on the uvloop event loop pinned to CPU 0, as the engine
would host it (beside grpc.aio, in the same loop). A raw-socket HTTP/1.1 load generator
(tradescore_rest.httpload) pinned to CPU 1 drives it: 64 keep-alive connections, closed loop.
Printed per server: calls/s, p50/p99, and the server's CPU time per call (utime + stime from
/proc over the window: the figure that decides on a machine where the engine's own work shares
the core).

    python loadtest/http_server_choice.py [--seconds 5] [--servers uvicorn-httptools,aiohttp,...]

About 10 s per server (40-60 s for all). Candidates: uvicorn with httptools (raw ASGI app),
uvicorn with h11, aiohttp's low-level server, granian's embedded server (ASGI), hypercorn.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tradescore_rest.httpload import HttpLoad, post, run_load, summary  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("uvicorn-httptools", "uvicorn-h11", "aiohttp", "granian", "hypercorn")
BODY = json.dumps(
    {
        "trades": [
            {
                "trade_id": "T-1001",
                "account_id": "ACC-7",
                "counterparty_id": "CP0042",
                "instrument_id": "US0378331005",
                "asset_class": "ASSET_CLASS_EQUITY",
                "side": "SIDE_SELL",
                "quantity": 25000,
                "price": 187.5,
                "currency": "USD",
                "trade_date": "2026-11-20",
                "settlement_date": "2026-11-23",
                "settlement_venue": "DTC",
                "inventory_ratio": 0.6,
            }
        ]
    }
).encode()

_SERVE = r"""
import asyncio, os, socket, sys
os.sched_setaffinity(0, {0})
import orjson, uvloop
which, port = sys.argv[1], int(sys.argv[2])
ANSWER = orjson.dumps({"scores": [{"trade_id": "T-1001", "fail_probability": 0.0123,
                       "risk_band": "RISK_BAND_LOW"}], "model_name": "settlement-fail",
                       "model_version": "1.0.0"})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]

async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})

def sock():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s

async def main():
    if which.startswith("uvicorn"):
        import uvicorn
        config = uvicorn.Config(asgi, http="httptools" if which.endswith("httptools") else "h11",
                                lifespan="off", log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock()])
        print("ready", flush=True)
        await asyncio.Event().wait()
    elif which == "aiohttp":
        from aiohttp import web
        async def handler(request):
            orjson.loads(await request.read())
            return web.Response(body=ANSWER, content_type="application/json")
        server = web.Server(handler, access_log=None)
        await asyncio.get_running_loop().create_server(server, sock=sock())
        print("ready", flush=True)
        await asyncio.Event().wait()
    elif which == "granian":
        from granian.constants import Interfaces
        from granian.server.embed import Server
        server = Server(asgi, address="127.0.0.1", port=port, interface=Interfaces.ASGINL,
                        log_enabled=False, websockets=False)
        asyncio.get_running_loop().call_later(1.0, lambda: print("ready", flush=True))
        await server.serve()
    elif which == "hypercorn":
        from hypercorn.asyncio import serve
        from hypercorn.config import Config
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.errorlog = None
        asyncio.get_running_loop().call_later(1.0, lambda: print("ready", flush=True))
        await serve(asgi, config, shutdown_trigger=asyncio.Event().wait)

uvloop.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def measure(which: str, seconds: float) -> dict[str, object]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, which, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{which} did not start")
        time.sleep(0.3)
        request = post("/v1/trades:score", BODY)
        cpu: dict[str, float] = {}

        def mark(name: str) -> None:
            cpu[name] = _cpu_seconds(proc.pid)

        result = run_load(HttpLoad("127.0.0.1", port, [request], seconds=seconds, warmup=1.0), mark)
        used = cpu["stop"] - cpu["start"]
        out = summary(result)
        out["server_cpu_share"] = round(used / seconds, 3)
        out["server_cpu_us_per_call"] = round(1e6 * used / max(1, result.calls), 1)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per server (default 5)")
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma separated, of {', '.join(SERVERS)}"
    )
    args = parser.parse_args()
    results = {}
    for which in args.servers.split(","):
        results[which] = measure(which, args.seconds)
        print(which, json.dumps(results[which]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
