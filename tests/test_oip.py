"""The Open Inference Protocol service, driven by Triton's own client (tritonclient) against real engines."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc
from tritonclient.utils import InferenceServerException

from engine._proto.inference import grpc_predict_v2_pb2
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from engine.models.bundle import DEFAULT_BUNDLE
from engine.scoring.messages import trades_to_columns
from engine.scoring.servable import ServingModel, load_serving_model
from tests.conftest import (
    ROOT,
    EngineProcess,
    HeldBatches,
    ServerFactory,
    copy_bundle,
    resign,
    sample_request,
)

MODEL = "settlement-fail"
VERSION = "1.0.0"
WIDTH = 15


@pytest.fixture(scope="module")
def server() -> Iterator[EngineProcess]:
    """`engine serve` in its own process, shared by this module's synchronous tests."""
    process = EngineProcess()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: EngineProcess) -> Iterator[Any]:
    c = triton.InferenceServerClient(server.target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def model() -> ServingModel:
    """The same bundle the servers load, in process: the reference for every served number."""
    return load_serving_model(DEFAULT_BUNDLE)


def features(model: ServingModel, n: int, seed: int = 3) -> np.ndarray:
    """The feature matrix of `n` generated trades, with some values missing (NaN)."""
    matrix = model.plan.compute(trades_to_columns(sample_request(n, seed=seed).trades))
    matrix[::5, 7] = np.nan  # inventory_ratio unknown
    matrix[1::7, 10] = np.nan  # counterparty_fail_rate unknown
    return matrix


def triton_input(matrix: np.ndarray, name: str = "features", datatype: str = "FP32") -> Any:
    tensor = triton.InferInput(name, list(matrix.shape), datatype)
    tensor.set_data_from_numpy(matrix)
    return tensor


def typed_request(matrix: np.ndarray, **fields: Any) -> Any:
    """A ModelInferRequest with typed contents, built with tritonclient's own messages."""
    request = tpb.ModelInferRequest(model_name=MODEL, **fields)
    tensor = request.inputs.add(name="features", datatype="FP32", shape=list(matrix.shape))
    tensor.contents.fp32_contents.extend(matrix.ravel().tolist())
    return request


def test_engine_and_tritonclient_share_a_process() -> None:
    # both declare inference.* messages: the engine keeps its own in a private descriptor pool
    assert grpc_predict_v2_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert tpb.DESCRIPTOR.pool is descriptor_pool.Default()
    assert grpc_predict_v2_pb2.ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"


@pytest.mark.slow
def test_health_and_metadata_through_tritonclient(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, VERSION)
    assert not client.is_model_ready("other-model")
    assert not client.is_model_ready(MODEL, "9.9.9")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "tradescore-engine" and server["version"]
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL and meta["versions"] == [VERSION] and meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", str(WIDTH)]}]
    assert meta["outputs"] == [
        {"name": "fail_probability", "datatype": "FP32", "shape": ["-1"]},
        {"name": "risk_band", "datatype": "INT32", "shape": ["-1"]},
    ]
    assert client.get_model_metadata(MODEL, VERSION, as_json=True) == meta


def test_raw_inputs_score_like_the_model_in_process(client: Any, model: ServingModel) -> None:
    matrix = features(model, 256)
    assert np.isnan(matrix).any()  # missing values are accepted
    result = client.infer(MODEL, [triton_input(matrix)], request_id="call-7")
    want = model.predict(matrix)
    np.testing.assert_array_equal(result.as_numpy("fail_probability"), want)
    np.testing.assert_array_equal(result.as_numpy("risk_band"), model.bundle.manifest.risk_bands.assign(want))
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (MODEL, VERSION, "call-7")
    assert len(response.raw_output_contents) == 2  # raw in, raw out: what tritonclient reads
    assert set(result.as_numpy("risk_band")) <= {1, 2, 3, 4}


def test_requested_outputs_only_in_the_order_asked(client: Any, model: ServingModel) -> None:
    matrix = features(model, 9, seed=11)
    want = model.predict(matrix)
    only = client.infer(MODEL, [triton_input(matrix)], outputs=[triton.InferRequestedOutput("risk_band")])
    assert only.as_numpy("fail_probability") is None
    np.testing.assert_array_equal(only.as_numpy("risk_band"), model.bundle.manifest.risk_bands.assign(want))
    asked = [triton.InferRequestedOutput("risk_band"), triton.InferRequestedOutput("fail_probability")]
    both = client.infer(MODEL, [triton_input(matrix)], outputs=asked)
    assert [o.name for o in both.get_response().outputs] == ["risk_band", "fail_probability"]
    np.testing.assert_array_equal(both.as_numpy("fail_probability"), want)


def test_typed_inputs_get_typed_outputs(server: EngineProcess, model: ServingModel) -> None:
    matrix = features(model, 33, seed=5)
    with grpc.insecure_channel(server.target) as channel:
        response = tpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            typed_request(matrix, model_version=VERSION, id="typed"), timeout=10
        )
    assert not response.raw_output_contents and response.id == "typed"
    prob, band = response.outputs
    assert (prob.name, prob.datatype, list(prob.shape)) == ("fail_probability", "FP32", [33])
    assert (band.name, band.datatype, list(band.shape)) == ("risk_band", "INT32", [33])
    want = model.predict(matrix)
    np.testing.assert_array_equal(np.array(prob.contents.fp32_contents, dtype=np.float32), want)
    bands = model.bundle.manifest.risk_bands.assign(want)
    np.testing.assert_array_equal(list(band.contents.int_contents), bands)


BAD_INFER: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown model": (dict(model_name="fraud"), "NOT_FOUND", "'fraud' is not served here"),
    "unknown version": (dict(model_version="2.0.0"), "NOT_FOUND", "no version '2.0.0'"),
    "input name": (dict(name="x"), "INVALID_ARGUMENT", "inputs[0].name: must be 'features'"),
    "datatype": (dict(dtype=np.float64), "INVALID_ARGUMENT", "inputs[0].datatype: must be FP32, got 'FP64'"),
    "width": (dict(width=14), "INVALID_ARGUMENT", "inputs[0].shape: must be [n, 15]"),
    "too many rows": (dict(rows=1001), "INVALID_ARGUMENT", "1 <= n <= 1000"),
    "infinity": (dict(cell=(3, 6, np.inf)), "INVALID_ARGUMENT", "row 3, column 6 (log_adv): infinity"),
    "category": (dict(cell=(2, 1, 7.0)), "INVALID_ARGUMENT", "row 2, column 1 (side): 7.0 is not a category"),
    "fractional category": (dict(cell=(0, 0, 0.5)), "INVALID_ARGUMENT", "(asset_class): 0.5 is not"),
    "unknown output": (dict(output="why"), "INVALID_ARGUMENT", "outputs[0].name: unknown output 'why'"),
}


@pytest.mark.parametrize("case", list(BAD_INFER), ids=list(BAD_INFER))
def test_refused_requests_through_tritonclient(client: Any, model: ServingModel, case: str) -> None:
    change, status, message = BAD_INFER[case]
    matrix = features(model, change.get("rows", 8))[:, : change.get("width", WIDTH)]
    if "cell" in change:
        row, col, value = change["cell"]
        matrix[row, col] = value
    outputs = [triton.InferRequestedOutput(change["output"])] if "output" in change else None
    tensor = triton_input(
        matrix.astype(change.get("dtype", np.float32)),
        name=change.get("name", "features"),
        datatype="FP64" if "dtype" in change else "FP32",
    )
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            change.get("model_name", MODEL),
            [tensor],
            model_version=change.get("model_version", ""),
            outputs=outputs,
        )
    assert caught.value.status() == f"StatusCode.{status}"
    assert message in caught.value.message()


def _raw_request(matrix: np.ndarray) -> Any:
    request = tpb.ModelInferRequest(model_name=MODEL, raw_input_contents=[matrix.tobytes()])
    request.inputs.add(name="features", datatype="FP32", shape=list(matrix.shape))
    return request


def _short_bytes(r: Any) -> None:
    r.raw_input_contents[0] = r.raw_input_contents[0][:-4]


def _two_raw(r: Any) -> None:
    r.raw_input_contents.append(b"")


def _raw_and_typed(r: Any) -> None:
    r.inputs[0].contents.fp32_contents.append(1.0)


def _no_data(r: Any) -> None:
    del r.raw_input_contents[:]


def _wrong_typed_field(r: Any) -> None:
    del r.raw_input_contents[:]
    r.inputs[0].contents.fp64_contents.extend([0.5] * (4 * WIDTH))


def _short_typed(r: Any) -> None:
    del r.raw_input_contents[:]
    r.inputs[0].contents.fp32_contents.extend([0.5] * (4 * WIDTH - 1))


def _no_model_name(r: Any) -> None:
    r.model_name = ""


def _classification(r: Any) -> None:
    r.outputs.add(name="fail_probability").parameters["classification"].int64_param = 2


BAD_WIRE: dict[str, tuple[Callable[[Any], None], str]] = {
    "byte length": (_short_bytes, "raw_input_contents[0]: holds 236 bytes; FP32 [4, 15] takes 240"),
    "raw entries": (_two_raw, "raw_input_contents: must hold 1 entry"),
    "raw and typed": (_raw_and_typed, "inputs[0].contents: must not be set when raw_input_contents"),
    "no data": (_no_data, "inputs[0]: no data"),
    "typed field": (_wrong_typed_field, "inputs[0].contents.fp64_contents: must be empty"),
    "typed count": (_short_typed, "holds 59 values; FP32 [4, 15] takes 60"),
    "no model name": (_no_model_name, "model_name: required"),
    "classification": (_classification, "outputs[0].parameters: classification is not supported"),
}


@pytest.mark.parametrize("case", list(BAD_WIRE), ids=list(BAD_WIRE))
def test_refused_requests_on_the_wire(server: EngineProcess, model: ServingModel, case: str) -> None:
    mutate, message = BAD_WIRE[case]
    request = _raw_request(features(model, 4))
    mutate(request)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        tpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(caught.value.details())


def test_model_metadata_of_another_model_is_not_found(client: Any) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("fraud")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert MODEL in caught.value.message()


@pytest.fixture
async def aio_client(start_engine: ServerFactory) -> AsyncIterator[tuple[Any, Any, grpc.aio.Channel]]:
    # every call takes the inference thread (HeldBatches can hold it)
    engine, channel = await start_engine(inline_rows=0)
    c = triton_aio.InferenceServerClient(f"127.0.0.1:{engine.port}")
    yield engine, c, channel
    await c.close()


async def test_oip_and_trade_scorer_rows_share_one_model_call(
    aio_client: tuple[Any, Any, grpc.aio.Channel], model: ServingModel
) -> None:
    engine, client, channel = aio_client
    registry = engine.metrics.registry
    matrix = features(model, 100)
    trades = sample_request(50, seed=8)
    with HeldBatches(engine) as held:  # calls sent while the model is busy queue for the next batch
        blocker = asyncio.ensure_future(pb_grpc.TradeScorerStub(channel).Score(sample_request(1), timeout=10))
        await held.wait_entered()
        both = asyncio.gather(
            client.infer(MODEL, [triton_input(matrix)]),
            pb_grpc.TradeScorerStub(channel).Score(trades, timeout=10),
        )
        while engine.batcher is not None and engine.batcher.queued_rows < 150:
            await asyncio.sleep(0.005)
    oip, scored = await both
    await blocker
    np.testing.assert_array_equal(oip.as_numpy("fail_probability"), model.predict(matrix))
    want = model.predict(model.plan.compute(trades_to_columns(trades.trades)))
    np.testing.assert_array_equal([s.fail_probability for s in scored.scores], want.astype(np.float64))
    assert engine.metrics.batches_run() == 2  # the held one, then one for both calls
    assert registry.get_sample_value("engine_batch_size_sum") == 1 + 150


async def test_model_infer_shares_the_scoring_call_limit(
    start_engine: ServerFactory, model: ServingModel
) -> None:
    # one Score call is held in the model and fills the limit of 1: ModelInfer is refused, while
    # the v2 readiness and metadata calls (not scoring calls) are answered
    engine, channel = await start_engine(max_concurrent_rpcs=1, inline_rows=0)
    held = HeldBatches(engine).__enter__()
    waiting = asyncio.ensure_future(pb_grpc.TradeScorerStub(channel).Score(sample_request(1, seed=4)))
    await held.wait_entered()
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{engine.port}")
    try:
        with pytest.raises(InferenceServerException) as caught:
            await client.infer(MODEL, [triton_input(features(model, 2))])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "too many scoring calls in progress (limit 1)" in str(caught.value.message())
        assert await client.is_server_ready() and await client.is_model_ready(MODEL)
        assert (await client.get_model_metadata(MODEL, as_json=True))["name"] == MODEL
    finally:
        held.__exit__()
        await client.close()
    assert len((await waiting).scores) == 1


async def test_a_reloaded_bundle_is_the_model_served(
    start_engine: ServerFactory, model: ServingModel, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path / "bundle", "1.0.0")
    engine, _ = await start_engine(bundle=bundle)
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{engine.port}")
    try:
        assert (await client.get_model_metadata(MODEL, as_json=True))["versions"] == ["1.0.0"]
        resign(bundle, "1.1.0")
        assert await engine.reload()
        assert (await client.get_model_metadata(MODEL, as_json=True))["versions"] == ["1.1.0"]
        assert not await client.is_model_ready(MODEL, "1.0.0")
        matrix = features(model, 3)
        with pytest.raises(InferenceServerException) as caught:
            await client.infer(MODEL, [triton_input(matrix)], model_version="1.0.0")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        result = await client.infer(MODEL, [triton_input(matrix)], model_version="1.1.0")
        assert result.get_response().model_version == "1.1.0"
        np.testing.assert_array_equal(result.as_numpy("fail_probability"), model.predict(matrix))
    finally:
        await client.close()


async def test_health_and_reflection_know_the_oip_service(start_engine: ServerFactory) -> None:
    _, channel = await start_engine()
    service = "inference.GRPCInferenceService"
    status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    assert status.status == health_pb2.HealthCheckResponse.SERVING

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        for symbol in (service, "tradescore.v1.TradeScorer", "inference.ModelInferRequest"):
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)

    answers = [a async for a in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(ask())]
    names = {s.name for s in answers[0].list_services_response.service}
    assert {service, "tradescore.v1.TradeScorer", "grpc.health.v1.Health"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(a.file_descriptor_response.file_descriptor_proto[0])
        for a in answers[1:]
    ]
    assert [f.name for f in files] == [
        "inference/grpc_predict_v2.proto",
        "tradescore/v1/tradescore.proto",
        "inference/grpc_predict_v2.proto",
    ]
    methods = {m.name for m in files[0].service[0].method}
    assert methods == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata"} | {
        "ModelInfer"
    }


@pytest.mark.slow
def test_docs_tritonclient_example_runs(server: EngineProcess) -> None:
    page = (ROOT / "docs" / "oip.md").read_text()
    examples = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "tritonclient" in b]
    assert len(examples) == 1, "docs/oip.md lost its tritonclient example"
    code = examples[0].replace("127.0.0.1:50051", server.target)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    inputs, probabilities, bands = run.stdout.splitlines()
    assert "'features'" in inputs and "FP32" in inputs
    assert all(0.0 <= float(p) <= 1.0 for p in probabilities.split())
    assert bands.split() and set(bands.split()) <= {"1", "2", "3", "4"}
