"""gRPC status codes as HTTP statuses, and the JSON error body: the one place they are mapped.

The mapping is the one of `google/rpc/code.proto` ("HTTP Mapping" of each code), which Google's
API design guide, grpc-gateway and Envoy's transcoder follow; tests/http/test_status.py reads the
codes' comments in the installed googleapis-common-protos file and compares.

The body is a `google.rpc.Status` in proto3 JSON, with the proto's field names as everywhere in
this API:

    {"code": 3, "message": "trades[3].quantity: must be a number > 0 ...",
     "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                  "field_violations": [{"field": "trades[3].quantity", "description": "must be ..."}]}]}

`code` is the gRPC code (3 INVALID_ARGUMENT, ...), as a gRPC client would see it; the HTTP status
carries the mapped number. RESOURCE_EXHAUSTED and UNAVAILABLE answers add `Retry-After: 1` and a
`google.rpc.RetryInfo` detail: back off and retry, as the client library does.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from engine.errors import EngineError, InvalidInput

#: HTTP status of each gRPC code (google/rpc/code.proto)
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
#: HTTP statuses the front door answers with (the metrics' series exist at 0 for each)
HTTP_STATUSES = tuple(sorted({*HTTP_STATUS.values(), 405, 413, 415}))
#: codes whose callers should back off and retry
RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
#: what a refused caller is told to wait before retrying
RETRY_AFTER_S = 1


class HttpError(EngineError):
    """A refusal of the HTTP layer itself (body too large, wrong content type, no such route), with
    its own HTTP status where HTTP has a more precise one than the code's mapping (413, 415, 405)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        http_status: int | None = None,
        field: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.code = code
        self.http_status = http_status if http_status is not None else HTTP_STATUS[code]
        self.field = field


def http_status(error: EngineError) -> int:
    if isinstance(error, HttpError):
        return error.http_status
    return HTTP_STATUS.get(error.code, 500)


def status_dict(error: EngineError) -> dict[str, Any]:
    """`error` as a google.rpc.Status in proto3 JSON (proto field names)."""
    details: list[dict[str, Any]] = []
    field = ""
    description = ""
    if isinstance(error, InvalidInput):
        field = f"{error.records}[{error.index}].{error.field}" if error.index is not None else error.field
        description = error.reason
    elif isinstance(error, HttpError) and error.field:
        field, description = error.field, error.client_message()
    if field:
        violation = {"field": field, "description": description}
        details.append({"@type": _BAD_REQUEST, "field_violations": [violation]})
    if error.code in RETRYABLE:
        details.append({"@type": _RETRY_INFO, "retry_delay": f"{RETRY_AFTER_S}s"})
    return {"code": error.code.value[0], "message": error.client_message(), "details": details}


def error_response(error: EngineError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """HTTP status, extra headers and JSON body of `error` (the /v1 routes)."""
    headers = [(b"retry-after", str(RETRY_AFTER_S).encode())] if error.code in RETRYABLE else []
    if isinstance(error, HttpError):
        headers += error.headers
    return http_status(error), headers, orjson.dumps(status_dict(error))
