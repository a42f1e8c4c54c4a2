#!/usr/bin/env python
"""REST/JSON front door vs its peers and vs native gRPC, side by side in one run (issue #18's targets).

Servers are pinned to CPU 0, load generators to CPU 1 (`--server-cpus`, `--client-cpus`); every
scenario warms up for 1 s and measures for `--seconds` (default 5). Started by this script:

- the engine: `engine serve --http-port` (gRPC and REST from one process, one event loop);
- Flask: `POST /predict` JSON, the first settlement-risk service's way (tradescore_rest/flask_peer.py:
  pandas, the engine's plain feature path, LightGBM's Booster on the bundle's model text; Flask's
  threaded server);
- MLServer 1.7.1 with mlserver-lightgbm: REST `POST /v2/models/settlement-fail/infer`, 1 row of the
  model's 15 features, in a virtual environment of its own (loadtest/.peers/mlserver; created on
  the first run, 1-3 minutes; `--no-mlserver` skips it).

Scenarios and targets:
  rest_1      REST, 1 trade per call, 64 connections, closed loop       >= 10 x flask_1, >= 1.5 x mlserver_1
  flask_1     Flask POST /predict, 1 trade, 64 connections
  mlserver_1  MLServer REST infer, 1 row, 64 connections
  rest_256    REST, 256 trades per call, 4 connections                  trades/s >= 0.5 x grpc_256
  grpc_256    native gRPC Score, 256 trades per call, 4 in flight
  rest_open / grpc_open   1 trade per call at 500 calls/s, open loop: p99 side by side

Takes about 1.5 minutes (plus MLServer's install on the first run). Results are printed and
written to loadtest/results/rest-bench-<timestamp>.json. Not a test: run it under
`flock /tmp/tradescore-cpu.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from tradescore_rest.grpcload import GrpcLoad, run_grpc_load  # noqa: E402
from tradescore_rest.httpload import HttpLoad, LoadResult, post, run_load, summary  # noqa: E402

RESULTS = HERE / "results"
PEERS = HERE / ".peers"
MLSERVER_VERSION = "1.7.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def pinned(cpus: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(["taskset", "-c", cpus, *argv], **kwargs)


def trades_json(n: int, seed: int) -> tuple[list[dict[str, Any]], bytes]:
    """n synthetic trades as proto3 JSON, and the same as ScoreRequest bytes."""
    from google.protobuf import json_format

    from engine._proto.tradescore.v1 import tradescore_pb2 as pb
    from engine.scoring.messages import columns_to_trades
    from engine.training.synthetic import generate_trades

    trades = columns_to_trades(generate_trades(n, seed=seed).trades)
    request = pb.ScoreRequest(request_id="b", trades=trades)
    body = json_format.MessageToDict(request, preserving_proto_field_name=True)["trades"]
    return body, request.SerializeToString()


def mlserver_python(install: bool) -> Path | None:
    py = PEERS / "mlserver" / "bin" / "python"
    if not py.exists() and install:
        subprocess.run([sys.executable, "-m", "venv", str(PEERS / "mlserver")], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"mlserver=={MLSERVER_VERSION}",
             f"mlserver-lightgbm=={MLSERVER_VERSION}"],
            check=True,
        )  # fmt: skip
    return py if py.exists() else None


def start_mlserver(py: Path, cpus: str, bundle: Path, workdir: Path) -> tuple[subprocess.Popen[Any], int]:
    models = workdir / "models" / "settlement-fail"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle / "model.lgb.txt", models / "model.bst")
    (models / "model-settings.json").write_text(json.dumps({
        "name": "settlement-fail", "implementation": "mlserver_lightgbm.LightGBMModel",
        "parameters": {"uri": "./model.bst", "version": "1.0.0"},
    }))  # fmt: skip
    port = free_port()
    (workdir / "models" / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0,
        "debug": False,
    }))  # fmt: skip
    mlserver = py.parent / "mlserver"
    proc = pinned(cpus, [str(mlserver), "start", str(workdir / "models")],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_port(port, proc)
    time.sleep(2.0)  # the model loads after the port opens
    return proc, port


def _row(name: str, r: LoadResult, trades: int) -> dict[str, Any]:
    out = summary(r)
    ok = r.statuses.get(200, 0)
    out["trades_per_s"] = round(ok * trades / r.seconds, 1)
    out["ok_calls_per_s"] = round(ok / r.seconds, 1)
    print(f"{name:12s} ok calls/s {out['ok_calls_per_s']:9.1f}  trades/s {out['trades_per_s']:10.1f}  "
          f"p50 {out['p50_ms']:8.3f} ms  p99 {out['p99_ms']:8.3f} ms  statuses {out['statuses']}  "
          f"client CPU {out['client_cpu_share']:.2f}", flush=True)  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per scenario (default 5)"
    )
    parser.add_argument("--server-cpus", default="0", help="CPUs of the servers (default 0)")
    parser.add_argument("--client-cpus", default="1", help="CPUs of the load generators (default 1)")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop calls/s (default 500)")
    parser.add_argument("--no-mlserver", action="store_true", help="skip the MLServer peer")
    args = parser.parse_args()
    from engine.models.bundle import DEFAULT_BUNDLE

    bundle = Path(DEFAULT_BUNDLE)
    client = frozenset(int(c) for c in args.client_cpus.split(","))
    one, one_raw = trades_json(64, seed=3)
    bulk, bulk_raw = trades_json(256, seed=5)
    rest_one = [post("/v1/trades:score", json.dumps({"trades": [t]}).encode()) for t in one]
    rest_bulk = [post("/v1/trades:score", json.dumps({"trades": bulk}).encode())]
    from engine._proto.tradescore.v1 import tradescore_pb2 as pb

    grpc_one = [pb.ScoreRequest(trades=[t]).SerializeToString() for t in pb.ScoreRequest.FromString(
        trades_json(64, seed=3)[1]).trades]  # fmt: skip
    results: dict[str, Any] = {"seconds": args.seconds, "rate": args.rate}
    procs: list[subprocess.Popen[Any]] = []
    try:
        grpc_port, http_port = free_port(), free_port()
        engine = pinned(args.server_cpus, [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1",
                        "--port", str(grpc_port), "--http-port", str(http_port),
                        "--log-level", "WARNING"])  # fmt: skip
        procs.append(engine)
        wait_port(http_port, engine)
        spec = HttpLoad("127.0.0.1", http_port, rest_one, args.seconds, connections=64, cpus=client)
        results["rest_1"] = _row("rest_1", run_load(spec), 1)
        spec = HttpLoad("127.0.0.1", http_port, rest_bulk, args.seconds, connections=4, cpus=client)
        results["rest_256"] = _row("rest_256", run_load(spec), 256)
        g = GrpcLoad(f"127.0.0.1:{grpc_port}", [bulk_raw], args.seconds, inflight=4, cpus=client)
        results["grpc_256"] = _row("grpc_256", run_grpc_load(g), 256)
        spec = HttpLoad(
            "127.0.0.1", http_port, rest_one, args.seconds, connections=64, rate=args.rate, cpus=client
        )
        results["rest_open"] = _row("rest_open", run_load(spec), 1)
        g = GrpcLoad(
            f"127.0.0.1:{grpc_port}", grpc_one, args.seconds, inflight=64, rate=args.rate, cpus=client
        )
        results["grpc_open"] = _row("grpc_open", run_grpc_load(g), 1)
        engine.terminate()
        engine.wait(timeout=30)

        flask_port = free_port()
        flask = pinned(args.server_cpus, [sys.executable, str(HERE / "tradescore_rest" / "flask_peer.py"),
                       args.server_cpus, str(flask_port), str(bundle)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        procs.append(flask)
        wait_port(flask_port, flask)
        flask_one = [post("/predict", json.dumps({"trades": [t]}).encode()) for t in one]
        spec = HttpLoad("127.0.0.1", flask_port, flask_one, args.seconds, connections=64, cpus=client)
        results["flask_1"] = _row("flask_1", run_load(spec), 1)
        flask.terminate()
        flask.wait(timeout=30)

        py = None if args.no_mlserver else mlserver_python(install=True)
        if py is not None:
            import numpy as np

            from engine.scoring.messages import trades_to_columns
            from engine.scoring.servable import load_serving_model

            model = load_serving_model(bundle, 1)
            features = model.plan.compute(trades_to_columns(pb.ScoreRequest.FromString(one_raw).trades))
            features = np.nan_to_num(features, nan=0.0)
            workdir = PEERS / "mlserver-run"
            shutil.rmtree(workdir, ignore_errors=True)
            ml, ml_port = start_mlserver(py, args.server_cpus, bundle, workdir)
            procs.append(ml)
            ml_req = [
                post(
                    "/v2/models/settlement-fail/infer",
                    json.dumps(
                        {
                            "inputs": [
                                {
                                    "name": "predict",
                                    "shape": [1, 15],
                                    "datatype": "FP32",
                                    "data": row.tolist(),
                                }
                            ]
                        }
                    ).encode(),
                )  # fmt: skip
                for row in features
            ]
            spec = HttpLoad("127.0.0.1", ml_port, ml_req, args.seconds, connections=64, cpus=client)
            results["mlserver_1"] = _row("mlserver_1", run_load(spec), 1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in results and b in results and results[b][key]:
            return float(round(results[a][key] / results[b][key], 2))
        return None

    verdict = {
        "rest_1 / flask_1 calls/s (>= 10)": ratio("rest_1", "flask_1", "ok_calls_per_s"),
        "rest_1 / mlserver_1 calls/s (>= 1.5)": ratio("rest_1", "mlserver_1", "ok_calls_per_s"),
        "rest_256 / grpc_256 trades/s (>= 0.5)": ratio("rest_256", "grpc_256", "trades_per_s"),
        f"p99 at {args.rate:g} calls/s, REST vs gRPC (ms)": (
            results["rest_open"]["p99_ms"], results["grpc_open"]["p99_ms"]),
    }  # fmt: skip
    results["verdict"] = verdict
    for k, v in verdict.items():
        print(f"{k}: {v}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"rest-bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
