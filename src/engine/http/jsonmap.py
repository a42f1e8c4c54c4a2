"""proto3 JSON <-> protobuf messages for the HTTP front door.

The reference is `google.protobuf.json_format` (the protobuf project's own implementation of the
proto3 JSON mapping). It walks every field in Python: parsing a trade costs more
than the engine spends scoring one (docs/design-figures.md). The hot path, `ScoreRequest` in and
`ScoreResponse` out, has a faster road with the same results; everything else uses json_format as it is:

- **in**: the body is parsed by orjson into dicts, which go to the message's constructor (upb, in
  C: enum names, nested messages and repeated fields as the mapping has them). What the
  constructor reads differently from the mapping is ruled out first: integers for `bool` fields
  (the mapping wants true/false); keys in lowerCamelCase (the mapping's default) are renamed;
  anything the constructor refuses (numbers as strings, "NaN", integral floats for integers,
  unknown fields, wrong types) goes to `json_format.ParseDict`, which accepts what the mapping
  accepts and names what it refuses. Either way the request becomes the same `ScoreRequest` bytes
  that gRPC clients send, and the engine's compiled decoder takes it from there.
- **out**: the response bytes are read by upb and written as a dict with the fields json_format
  writes (`preserving_proto_field_name`, fields without presence always written, enums by name,
  non-finite doubles as "NaN" / "Infinity" / "-Infinity", int64 as strings), then by orjson.

tests/http/test_jsonmap.py checks both against json_format on generated messages and bodies.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import InvalidInput

M = TypeVar("M", bound=Message)

#: the Trade fields of type bool: the constructor would take 0 / 1 for them, the mapping does not
_BOOL_FIELDS = tuple(f.name for f in pb.Trade.DESCRIPTOR.fields if f.type == f.TYPE_BOOL)
_BANDS = {v.number: v.name for v in pb.RiskBand.DESCRIPTOR.values}


def _json_names(descriptor: Any) -> dict[str, str]:
    """lowerCamelCase JSON name -> field name, for the fields whose two names differ."""
    return {f.json_name: f.name for f in descriptor.fields if f.json_name != f.name}


_TRADE_NAMES = _json_names(pb.Trade.DESCRIPTOR)
_REQUEST_NAMES = _json_names(pb.ScoreRequest.DESCRIPTOR)


class JsonError(InvalidInput):
    """A body that is not JSON, or not the JSON of the expected message."""

    def __init__(self, reason: str, field: str = "body") -> None:
        super().__init__(field, reason)


def loads(body: bytes) -> Any:
    """The body as JSON values; JsonError (INVALID_ARGUMENT, naming where) when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise JsonError(f"not valid JSON: {exc}") from None


def parse(value: Any, message: M) -> M:
    """The reference parse of JSON values into `message` (json_format.ParseDict); JsonError names the
    field it refuses."""
    if not isinstance(value, dict):
        raise JsonError(f"must be a JSON object ({message.DESCRIPTOR.name}), got {type(value).__name__}")
    try:
        return json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        raise JsonError(str(exc)) from None


def to_dict(message: Message) -> dict[str, Any]:
    """The reference JSON of `message`, as this API writes it."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# -- ScoreRequest in ------------------------------------------------------------------------------


def _renamed(d: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in d.items()}


def _fast_request(value: Any) -> pb.ScoreRequest | None:
    """The request through upb's constructor, or None where its reading could differ from the
    mapping's (the caller then uses the reference)."""
    if type(value) is not dict:
        return None
    trades = value.get("trades")
    if trades is not None:
        if type(trades) is not list:
            return None
        for trade in trades:
            if type(trade) is not dict:
                return None
            for name in _BOOL_FIELDS:
                flag = trade.get(name)
                if flag is not None and type(flag) is not bool:
                    return None
    try:
        return pb.ScoreRequest(**value)
    except (TypeError, ValueError, OverflowError):
        pass
    # lowerCamelCase names (what most proto3 JSON writers emit): rename, once, and try again
    try:
        renamed = _renamed(value, _REQUEST_NAMES)
        trades = renamed.get("trades")
        if trades is not None:
            renamed["trades"] = [_renamed(t, _TRADE_NAMES) for t in trades]
            for trade in renamed["trades"]:
                for name in _BOOL_FIELDS:
                    flag = trade.get(name)
                    if flag is not None and type(flag) is not bool:
                        return None
        return pb.ScoreRequest(**renamed)
    except (TypeError, ValueError, OverflowError):
        return None


def score_request_bytes(value: Any) -> bytes:
    """The ScoreRequest bytes of a JSON body (parsed JSON values); JsonError when the mapping refuses it."""
    request = _fast_request(value)
    if request is None:
        request = parse(value, pb.ScoreRequest())
    return request.SerializeToString()


# -- ScoreResponse out ----------------------------------------------------------------------------


def _double(x: float) -> float | str:
    if x - x == 0.0:  # finite
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def score_response_dict(raw: bytes) -> dict[str, Any]:
    """The JSON of ScoreResponse bytes, as `to_dict` writes it."""
    msg = pb.ScoreResponse.FromString(raw)
    bands = _BANDS
    out: dict[str, Any] = {
        "request_id": msg.request_id,
        "scores": [
            {
                "trade_id": s.trade_id,
                "fail_probability": s.fail_probability
                if s.fail_probability - s.fail_probability == 0.0
                else _double(s.fail_probability),
                "risk_band": bands.get(s.risk_band, s.risk_band),
            }
            for s in msg.scores
        ],
        "model_name": msg.model_name,
        "model_version": msg.model_version,
        "reasons": [
            {
                "trade_index": r.trade_index,
                "trade_id": r.trade_id,
                "reasons": [
                    {
                        "code": x.code,
                        "value": _double(x.value),
                        "contribution": _double(x.contribution),
                        "category": x.category,
                    }
                    for x in r.reasons
                ],
                "base_log_odds": _double(r.base_log_odds),
            }
            for r in msg.reasons
        ],
    }
    if msg.HasField("error"):
        out["error"] = to_dict(msg.error)
    return out
