"""The Open Inference Protocol's REST bodies <-> `inference.ModelInferRequest` / `ModelInferResponse`.

Inputs come as JSON `data` (flat or nested, row-major) or, with Triton's binary tensor data
extension (what `tritonclient.http` sends by default), as raw little-endian bytes after the JSON
header, whose length is the `Inference-Header-Content-Length` request header; each such input
says its byte count in `parameters.binary_data_size`. Either way the engine gets a
`ModelInferRequest` with `raw_input_contents`, the gRPC service's fast path, and the same checks.

Outputs are JSON `data` unless the request asks for binary (`parameters.binary_data_output`, or
`parameters.binary_data` on a requested output): then the output carries
`parameters.binary_data_size` and its bytes follow the JSON, whose length the response's
`Inference-Header-Content-Length` header gives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine._proto.inference import grpc_predict_v2_pb2 as v2
from engine.errors import InvalidInput
from engine.http import jsonmap

_DTYPES = {"FP32": np.dtype("<f4"), "INT32": np.dtype("<i4")}


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(where, "must be a JSON object")
    return value


def infer_request(
    name: str, version: str, body: bytes, header_length: int | None
) -> tuple[v2.ModelInferRequest, bool, frozenset[str]]:
    """The request, whether every output is wanted binary, and the outputs wanted binary by name."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                "Inference-Header-Content-Length",
                f"{header_length} is not within the body's {len(body)} bytes",
            )
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    doc = jsonmap.loads(head)
    if not isinstance(doc, dict):
        raise InvalidInput("body", "must be a JSON object (an inference request)")
    request = v2.ModelInferRequest(model_name=name, model_version=version)
    if "id" in doc:
        if not isinstance(doc["id"], str):
            raise InvalidInput("id", "must be a string")
        request.id = doc["id"]
    binary_all = bool(_params(doc.get("parameters"), "parameters").get("binary_data_output", False))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("inputs", "required: a list of input tensors")
    offset = 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise InvalidInput(where, "must be a JSON object")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise InvalidInput(f"{where}.shape", "required: a list of integers")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"{where}.datatype", "required: a string such as FP32")
        entry = request.inputs.add(name=str(tensor.get("name", "")), datatype=datatype, shape=shape)
        size = _params(tensor.get("parameters"), f"{where}.parameters").get("binary_data_size")
        dtype = _DTYPES.get(datatype)
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"{where}.parameters.binary_data_size",
                    f"{size!r} bytes from offset {offset}: the body has {len(binary)} bytes of binary data",
                )
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
            continue
        if "data" not in tensor:
            raise InvalidInput(f"{where}.data", "required (or parameters.binary_data_size)")
        if dtype is None:
            entry.datatype = datatype  # the engine refuses the datatype, naming it
            continue
        try:
            values = np.asarray(tensor["data"], dtype=dtype)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"{where}.data", f"must hold {datatype} numbers, flat or nested by row"
            ) from None
        expected = math.prod(shape) if all(d >= 0 for d in shape) else -1
        if values.size != expected:
            raise InvalidInput(f"{where}.data", f"holds {values.size} values; shape {shape} takes {expected}")
        request.raw_input_contents.append(values.tobytes())
    if offset != len(binary):
        raise InvalidInput("body", f"{len(binary) - offset} bytes of binary data after the last input's")
    wanted: set[str] = set()
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput("outputs", "must be a list")
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput(f"outputs[{i}].name", "required: the output's name")
            params = _params(out.get("parameters"), f"outputs[{i}].parameters")
            requested = request.outputs.add(name=out["name"])
            if "classification" in params:
                requested.parameters["classification"].int64_param = 1  # the engine refuses it, naming it
            if params.get("binary_data", binary_all):
                wanted.add(out["name"])
    return request, binary_all, frozenset(wanted)


def infer_response(
    response: v2.ModelInferResponse, binary_all: bool, binary: frozenset[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    outputs: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary_all or tensor.name in binary:
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            out["data"] = np.frombuffer(raw, dtype=_DTYPES[tensor.datatype]).tolist()
        outputs.append(out)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    head = jsonmap.dumps(doc)
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)


def model_metadata(meta: v2.ModelMetadataResponse) -> dict[str, Any]:
    def tensor(t: v2.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [tensor(t) for t in meta.inputs],
        "outputs": [tensor(t) for t in meta.outputs],
    }
