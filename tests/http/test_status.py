"""The gRPC code -> HTTP status mapping is google/rpc/code.proto's own ("HTTP Mapping: 400 Bad Request")."""

from __future__ import annotations

import re
from pathlib import Path

import google.rpc  # type: ignore[import-untyped]
import grpc

from engine.errors import InvalidInput, Overloaded
from engine.http.status import HTTP_STATUS, status_dict


def _code_proto_mapping() -> dict[str, int]:
    text = (Path(next(iter(google.rpc.__path__))) / "code.proto").read_text()
    mapping: dict[str, int] = {}
    for comment, name in re.findall(r"((?://[^\n]*\n\s*)+)(\w+) = \d+;", text):
        found = re.search(r"HTTP Mapping: (\d+)", comment)
        if found:
            mapping[name] = int(found.group(1))
    return mapping


def test_every_code_maps_as_google_rpc_code_proto_says() -> None:
    reference = _code_proto_mapping()
    assert len(reference) == len(grpc.StatusCode)  # every code says its mapping
    for code, status in HTTP_STATUS.items():
        assert reference[code.name] == status, code
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


def test_status_body_is_a_google_rpc_status() -> None:
    from google.protobuf import json_format
    from google.rpc import error_details_pb2, status_pb2

    body = status_dict(InvalidInput("quantity", "must be > 0", 3))
    message = json_format.ParseDict(body, status_pb2.Status())
    assert message.code == 3 and message.message == "trades[3].quantity: must be > 0"
    bad = error_details_pb2.BadRequest()
    assert message.details[0].Unpack(bad) and bad.field_violations[0].field == "trades[3].quantity"
    retry = json_format.ParseDict(status_dict(Overloaded("queue full")), status_pb2.Status())
    info = error_details_pb2.RetryInfo()
    assert retry.code == 8 and retry.details[0].Unpack(info) and info.retry_delay.seconds == 1
