"""The OpenAPI 3 document of the HTTP front door, generated from the proto and the route table.

`generate(files)` takes the contract's FileDescriptorProtos, with source info so that the proto's
comments become descriptions (`scripts/gen_openapi.py` compiles proto/ with grpc_tools and writes
the result to `src/engine/http/openapi.json`, which is committed and served at /openapi.json);
tests/http/test_openapi.py regenerates it and fails when the committed copy differs.

Schemas follow the proto3 JSON mapping as this API writes it: the proto's field names, enums by
name, 64-bit integers as strings, `google.protobuf.Timestamp` as RFC 3339 text, doubles as
numbers (the mapping also accepts "NaN", "Infinity" and numbers as strings on input).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2

from engine.http.routes import ROUTES, Route

F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "tradescore.v1"
TITLE = "TradeScore engine REST/JSON API"
DOCUMENT = "openapi.json"
_SCALARS: dict[int, dict[str, Any]] = {
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    F.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    F.TYPE_INT64: {"type": "string", "format": "int64"},
    F.TYPE_SINT64: {"type": "string", "format": "int64"},
    F.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    F.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN = {".google.protobuf.Timestamp": {"type": "string", "format": "date-time"}}
#: the route's request and response messages (None: no body)
_MESSAGES: dict[str, tuple[str | None, str]] = {
    "score": ("ScoreRequest", "ScoreResponse"),
    "model_info": (None, "ModelInfo"),
    "score_pairs": ("ScorePairsRequest", "ScorePairsResponse"),
    "feedback": ("FeedbackRequest", "FeedbackResponse"),
}
_STATUS = {
    "type": "object",
    "description": "google.rpc.Status: `code` is the gRPC code (3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, "
    "...); `details` may hold a google.rpc.BadRequest naming the field (e.g. trades[3].quantity) and a "
    "google.rpc.RetryInfo.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {"type": "object", "properties": {"@type": {"type": "string"}}},
        },
    },
}
_OIP_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
_OIP_SPEC = (
    "https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md"
)
#: answers every /v1 route may give besides 200 (engine.http.status)
_ERRORS = {
    "400": "INVALID_ARGUMENT or FAILED_PRECONDITION: the message names the field and the record's index",
    "401": "UNAUTHENTICATED: no accepted bearer token (--auth-tokens-file)",
    "404": "NOT_FOUND",
    "409": "ALREADY_EXISTS",
    "413": "the body is larger than --max-message-bytes",
    "415": "the body is not application/json",
    "429": "RESOURCE_EXHAUSTED: the engine sheds load; back off (Retry-After) and retry",
    "503": "UNAVAILABLE: the engine is shutting down; retry elsewhere",
    "504": "DEADLINE_EXCEEDED: the grpc-timeout / X-Request-Timeout passed",
}


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    out: dict[tuple[int, ...], str] = {}
    for loc in file.source_code_info.location:
        text = " ".join(line.strip() for line in loc.leading_comments.strip().splitlines()).strip()
        if text:
            out[tuple(loc.path)] = text
    return out


def _field_schema(field: F, maps: dict[str, descriptor_pb2.DescriptorProto]) -> dict[str, Any]:
    if field.type == F.TYPE_MESSAGE:
        if field.type_name in maps:
            value = next(f for f in maps[field.type_name].field if f.name == "value")
            return {"type": "object", "additionalProperties": _field_schema(value, maps)}
        schema = dict(_WELL_KNOWN.get(field.type_name, {"$ref": _ref(field.type_name)}))
    elif field.type == F.TYPE_ENUM:
        schema = {"$ref": _ref(field.type_name)}
    else:
        schema = dict(_SCALARS[field.type])
    if field.label == F.LABEL_REPEATED:
        return {"type": "array", "items": schema}
    return schema


def _ref(type_name: str) -> str:
    return "#/components/schemas/" + type_name.rsplit(".", 1)[-1]


def _schemas(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for file in files:
        if file.package != PACKAGE:
            continue
        notes = _comments(file)
        maps = {
            f".{file.package}.{m.name}.{n.name}": n for m in file.message_type for n in m.nested_type
            if n.options.map_entry
        }  # fmt: skip
        for i, enum in enumerate(file.enum_type):
            schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.value]}
            if (5, i) in notes:
                schema["description"] = notes[(5, i)]
            schemas[enum.name] = schema
        for i, message in enumerate(file.message_type):
            properties: dict[str, Any] = {}
            for j, field in enumerate(message.field):
                prop = _field_schema(field, maps)
                note = notes.get((4, i, 2, j))
                if note:
                    prop = (
                        {"allOf": [prop], "description": note}
                        if "$ref" in prop
                        else {**prop, "description": note}
                    )
                properties[field.name] = prop
            schema = {"type": "object", "properties": properties}
            if (4, i) in notes:
                schema["description"] = notes[(4, i)]
            schemas[message.name] = schema
    schemas["Status"] = _STATUS
    schemas["OipError"] = _OIP_ERROR
    return schemas


def _method_notes(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    out: dict[str, str] = {}
    for file in files:
        notes = _comments(file)
        for i, service in enumerate(file.service):
            for j, method in enumerate(service.method):
                if (6, i, 2, j) in notes:
                    out[f"/{file.package}.{service.name}/{method.name}"] = notes[(6, i, 2, j)]
    return out


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(route: Route, notes: dict[str, str]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler + ("" if "{version}" not in route.template else "_version")
    }
    op["summary"] = route.summary
    params = [p.strip("{}") for p in route.template.split("/") if p.startswith("{")]
    params += [p.split("}")[0] for p in route.template.split("{")[1:] if "}:" in p]
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in dict.fromkeys(params)
        ]
    if route.scoring:
        op.setdefault("parameters", []).append(
            {"name": "grpc-timeout", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "deadline as gRPC writes it: 250m (ms), 2S (s), ...; "
                            "or X-Request-Timeout in seconds"}
        )  # fmt: skip
    if route.rpc:
        op["description"] = (notes.get(route.rpc, "") + f" (gRPC: {route.rpc})").strip()
        request, response = _MESSAGES[route.handler]
        if request is not None:
            op["requestBody"] = {"required": True, "content": _json({"$ref": _ref(request)})}
        op["responses"] = {"200": {"description": "OK", "content": _json({"$ref": _ref(response)})}}
        for status, text in _ERRORS.items():
            op["responses"][status] = {"description": text, "content": _json({"$ref": _ref("Status")})}
    elif route.template == "/openapi.json":
        op["responses"] = {"200": {"description": "this document", "content": _json({"type": "object"})}}
    else:
        op["description"] = f"The Open Inference Protocol's REST API ({_OIP_SPEC})."
        if route.verb == "POST":
            op["requestBody"] = {"required": True, "content": _json({"type": "object"})}
        op["responses"] = {
            "200": {"description": "OK", "content": _json({"type": "object"})},
            "default": {"description": "an error", "content": _json({"$ref": _ref("OipError")})},
        }
    return op


def generate(files: Iterable[descriptor_pb2.FileDescriptorProto], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES over the messages of `files`."""
    files = list(files)
    notes = _method_notes(files)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.template, {})[route.verb.lower()] = _operation(route, notes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": version,
            "description": "Generated from proto/tradescore/v1/tradescore.proto and engine.http.routes "
            "(scripts/gen_openapi.py); bodies in the proto3 JSON mapping with the proto's field names.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(files),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


@cache
def document_bytes() -> bytes:
    """The committed document (package data), as /openapi.json serves it."""
    return json.dumps(json.loads(resources.files("engine.http").joinpath(DOCUMENT).read_text())).encode()
