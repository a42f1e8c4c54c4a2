"""Every route of the HTTP front door and every class of error, against a real engine, with httpx."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from google.protobuf import json_format

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from tests.conftest import HeldBatches, sample_request
from tests.http.conftest import HttpFactory, trade_json


def _violation(body: dict[str, Any]) -> str:
    return str(body["details"][0]["field_violations"][0]["field"])


async def test_rest_and_grpc_give_identical_probabilities(start_http: HttpFactory) -> None:
    engine, client = await start_http()
    request = sample_request(64, seed=5)
    body = json_format.MessageToDict(request, preserving_proto_field_name=True)
    rest = (await client.post("/v1/trades:score", json=body)).json()
    channel = engine  # the gRPC port of the same engine
    async with __import__("grpc").aio.insecure_channel(f"127.0.0.1:{channel.port}") as ch:
        grpc_answer = await pb_grpc.TradeScorerStub(ch).Score(request, timeout=5)
    assert [s["trade_id"] for s in rest["scores"]] == [s.trade_id for s in grpc_answer.scores]
    assert [s["fail_probability"] for s in rest["scores"]] == [s.fail_probability for s in grpc_answer.scores]
    assert [s["risk_band"] for s in rest["scores"]] == [
        pb.RiskBand.Name(s.risk_band) for s in grpc_answer.scores
    ]
    assert rest["model_version"] == grpc_answer.model_version
    # and the JSON is the reference mapping of the gRPC answer, reasons included
    assert rest == json_format.MessageToDict(
        grpc_answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # lowerCamelCase names (the mapping's default) are read the same
    camel = json_format.MessageToDict(request)
    assert (await client.post("/v1/trades:score", json=camel)).json() == rest


async def test_bad_input_is_refused_naming_field_and_index(start_http: HttpFactory) -> None:
    _, client = await start_http()
    trades = [trade_json(0), trade_json(1), trade_json(2, quantity=-5)]
    r = await client.post("/v1/trades:score", json={"trades": trades})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 3 and body["message"].startswith("trades[2].quantity:")
    assert _violation(body) == "trades[2].quantity"
    # what the mapping refuses (an unknown field, a bool as a number of days) is refused, naming it
    r = await client.post("/v1/trades:score", json={"trades": [trade_json(0, colour="red")]})
    assert r.status_code == 400 and "colour" in r.json()["message"]
    r = await client.post("/v1/trades:score", json={"trades": [trade_json(0, on_loan_recall_pending=1)]})
    assert r.status_code == 400 and "on_loan_recall_pending" in r.json()["message"]
    # numbers as strings are proto3 JSON too
    r = await client.post("/v1/trades:score", json={"trades": [trade_json(0, quantity="25000")]})
    assert r.status_code == 200


async def test_malformed_wrong_type_oversized_and_unrouted_requests(start_http: HttpFactory) -> None:
    _, client = await start_http(max_message_bytes=4096)
    r = await client.post(
        "/v1/trades:score", content=b'{"trades": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and _violation(r.json()) == "body"
    r = await client.post("/v1/trades:score", content=b"trades=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == 3
    big = {"trades": [trade_json(i) for i in range(40)]}
    r = await client.post("/v1/trades:score", json=big)
    assert r.status_code == 413 and r.json()["code"] == 8
    r = await client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["code"] == 5
    r = await client.get("/v1/trades:score")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = await client.post("/v1/trades:score", json={"trades": []})
    assert r.status_code == 400


async def test_bearer_tokens_as_on_the_grpc_port(start_http: HttpFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    _, client = await start_http(auth_tokens_file=str(tokens))
    body = {"trades": [trade_json()]}
    r = await client.post("/v1/trades:score", json=body)
    assert r.status_code == 401 and r.json()["code"] == 16 and r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/v1/trades:score", json=body, headers={"authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await client.post("/v1/trades:score", json=body, headers={"authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert (await client.get("/v2/health/live")).status_code == 200  # probes need no token
    assert (await client.get("/openapi.json")).status_code == 200


async def test_shedding_deadline_and_drain(start_http: HttpFactory) -> None:
    engine, client = await start_http(max_concurrent_rpcs=1, inline_rows=0)
    body = {"trades": [trade_json()]}
    with HeldBatches(engine) as held:
        first = asyncio.ensure_future(client.post("/v1/trades:score", json=body))
        await held.wait_entered()
        r = await client.post("/v1/trades:score", json=body)
        assert r.status_code == 429 and r.json()["code"] == 8 and r.headers["retry-after"] == "1"
        assert r.json()["details"][-1]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
        assert (await client.get("/v2/health/ready")).status_code == 200  # probes answered meanwhile
        held.release()
        assert (await first).status_code == 200
    engine2, client2 = await start_http(inline_rows=0)
    with HeldBatches(engine2) as held:
        first = asyncio.ensure_future(client2.post("/v1/trades:score", json=body))
        await held.wait_entered()
        r = await client2.post("/v1/trades:score", json=body, headers={"grpc-timeout": "50m"})
        assert r.status_code == 504 and r.json()["code"] == 4
        r = await client2.post("/v1/trades:score", json=body, headers={"x-request-timeout": "soon"})
        assert r.status_code == 400 and _violation(r.json()) == "x-request-timeout"
        # drain: the call in flight finishes, the port refuses what comes after
        stopping = asyncio.ensure_future(engine2.stop(grace=5.0))
        await asyncio.sleep(0.2)
        held.release()
        assert (await first).status_code == 200
        await stopping
    try:
        r = await client2.post("/v1/trades:score", json=body)
        assert r.status_code == 503
    except httpx.TransportError:
        pass  # the listener is closed: refused before HTTP


async def test_model_info_pairs_and_feedback(start_http: HttpFactory, tmp_path: Path) -> None:
    _, client = await start_http(flag_store=f"sqlite:{tmp_path / 'flags.sqlite'}")
    info = (await client.get("/v1/model")).json()
    assert info["name"] == "settlement-fail" and isinstance(info["parity_rows"], str)  # int64 as a string
    assert info["features"][0]["name"] and info["created_at"].endswith("Z")

    def view(source: str, status: str, seconds: str) -> dict[str, Any]:
        return {"source": source, "status": status, "quantity": 100, "amount": 25000,
                "name": "Blue River Capital LLC", "address": "12 Main Street, Boston",
                "updated_at": seconds}  # fmt: skip

    pair = {"key": "POS-77", "a": view("trading", "settled", "2026-10-01T00:15:00Z"),
            "b": view("risk", "pending", "2026-10-01T00:00:00Z")}  # fmt: skip
    r = await client.post("/v1/pairs:score", json={"request_id": "p1", "pairs": [pair]})
    assert r.status_code == 200
    score = r.json()["scores"][0]
    assert score["is_break"] and score["break_class"] == "BREAK_CLASS_STATUS" and score["flag_id"]
    flag = score["flag_id"]
    verdict = {"verdict": "VERDICT_CONFIRMED", "operator": "ops-1"}
    r = await client.post(f"/v1/flags/{flag}:feedback", json=verdict)
    assert r.status_code == 200 and r.json()["duplicate"] is False and r.json()["flag_id"] == flag
    assert (await client.post(f"/v1/flags/{flag}:feedback", json=verdict)).json()["duplicate"] is True
    r = await client.post(f"/v1/flags/{flag}:feedback", json={**verdict, "verdict": "VERDICT_REJECTED"})
    assert r.status_code == 409 and r.json()["code"] == 6
    r = await client.post("/v1/flags/no-such-flag:feedback", json=verdict)
    assert r.status_code == 404 and r.json()["code"] == 5
    r = await client.post(f"/v1/flags/{flag}:feedback", json={"operator": "ops-1"})
    assert r.status_code == 400 and _violation(r.json()) == "verdict"
    r = await client.post("/v1/pairs:score", json={"pairs": [{"key": "K", "a": {"source": "x"}}]})
    assert r.status_code == 400 and "updated_at" in r.json()["message"]


async def test_open_inference_protocol_routes(start_http: HttpFactory) -> None:
    engine, client = await start_http()
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2")).json()["name"] == "tradescore-engine"
    meta = (await client.get("/v2/models/settlement-fail")).json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 15]}]
    assert (await client.get("/v2/models/settlement-fail/versions/1.0.0")).status_code == 200
    assert (await client.get("/v2/models/settlement-fail/ready")).json()["ready"] is True
    r = await client.get("/v2/models/other")
    assert r.status_code == 404 and "not served" in r.json()["error"]
    features = np.full((3, 15), np.nan, dtype=np.float32)
    features[:, 0:4] = [[0, 1, 3, 4], [3, 0, 4, 1], [1, 1, 1, 1]]
    features[:, 4] = [6.3, 7.9, 5.0]
    data = [[None if np.isnan(v) else float(v) for v in row] for row in features]
    dense = np.nan_to_num(features, nan=0.0)
    r = await client.post(
        "/v2/models/settlement-fail/infer",
        json={
            "id": "q1",
            "inputs": [{"name": "features", "shape": [3, 15], "datatype": "FP32", "data": dense.tolist()}],
        },  # fmt: skip
    )
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    expected = engine.models.current.predict(dense)
    assert np.array_equal(np.asarray(out["fail_probability"]["data"], dtype=np.float32), expected)
    assert r.json()["id"] == "q1"
    # JSON has no NaN: null is a missing value
    r = await client.post(
        "/v2/models/settlement-fail/infer",
        json={"inputs": [{"name": "features", "shape": [3, 15], "datatype": "FP32", "data": data}]},
    )
    got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
    assert np.array_equal(got, engine.models.current.predict(features))
    r = await client.post(
        "/v2/models/settlement-fail/infer",
        json={"inputs": [{"name": "features", "shape": [3, 15], "datatype": "FP32", "data": data[:2]}]},
    )
    assert r.status_code == 400 and "inputs[0].data" in r.json()["error"]
    r = await client.post(
        "/v2/models/settlement-fail/infer",
        json={"inputs": [{"name": "features", "shape": [1, 14], "datatype": "FP32", "data": [0] * 14}]},
    )
    assert r.status_code == 400 and "inputs[0].shape" in r.json()["error"]
    r = await client.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404


async def test_http_metrics_count_routes_and_statuses(start_http: HttpFactory) -> None:
    engine, client = await start_http()
    await client.post("/v1/trades:score", json={"trades": [trade_json()]})
    await client.post("/v1/trades:score", json={"trades": [trade_json(quantity=0)]})
    registry = engine.metrics.registry

    def count(status: str) -> float | None:
        labels = {"method": "POST", "route": "/v1/trades:score", "status": status}
        return registry.get_sample_value("http_server_requests_total", labels)

    assert count("200") == 1 and count("400") == 1 and count("429") == 0
    n = registry.get_sample_value(
        "http_server_request_duration_seconds_count", {"method": "POST", "route": "/v1/trades:score"}
    )
    assert n == 2
    # REST calls are scoring calls like gRPC ones: the engine's own metrics see them
    assert registry.get_sample_value("engine_rejected_calls_total", {"reason": "invalid"}) == 1
