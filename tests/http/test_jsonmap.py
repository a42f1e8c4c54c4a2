"""engine.http.jsonmap's fast ScoreRequest / ScoreResponse mapping against json_format, the reference."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.http import jsonmap
from tests.http.conftest import trade_json

_FIELDS = [f for f in pb.Trade.DESCRIPTOR.fields]
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["NaN", "Infinity", "1.5", "7", "2.0", "ASSET_CLASS_ETF", "SIDE_BUY", "RISK_BAND_LOW"]),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def trade_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Valid trades with some fields replaced by anything JSON holds, some keys in lowerCamelCase,
    sometimes a field that does not exist."""
    trades = []
    for i in range(draw(st.integers(0, 3))):
        trade = trade_json(i)
        for field in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
            trade[field.name] = draw(_ANY)
        if draw(st.booleans()):
            trade = {
                (f.json_name if draw(st.booleans()) else f.name): trade[f.name]
                for f in _FIELDS
                if f.name in trade
            }
        if draw(st.integers(0, 9)) == 0:
            trade["not_a_field"] = 1
        trades.append(trade)
    body: dict[str, Any] = {"trades": trades}
    if draw(st.booleans()):
        body["explain"] = draw(
            st.one_of(st.sampled_from(["EXPLAIN_ALL", "EXPLAIN_NONE", 1, 7, "NOPE"]), _ANY)
        )
    if draw(st.booleans()):
        body["requestId" if draw(st.booleans()) else "request_id"] = draw(_ANY)
    return body


def _reference(body: Any) -> bytes | None:
    try:
        return json_format.ParseDict(body, pb.ScoreRequest()).SerializeToString()
    except json_format.ParseError:
        return None


def _fast(body: Any) -> bytes | None:
    try:
        return jsonmap.score_request_bytes(body)
    except jsonmap.JsonError:
        return None


@pytest.mark.slow
@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(trade_bodies())
def test_request_mapping_matches_json_format(body: dict[str, Any]) -> None:
    assert _fast(body) == _reference(body)


def test_request_mapping_takes_the_fast_road_for_ordinary_bodies() -> None:
    body = {"request_id": "r", "trades": [trade_json(i) for i in range(3)], "explain": "EXPLAIN_ALL"}
    assert jsonmap._fast_request(body) is not None
    assert jsonmap.score_request_bytes(body) == _reference(body)


_DOUBLES = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300]))


@st.composite
def responses(draw: st.DrawFn) -> pb.ScoreResponse:
    out = pb.ScoreResponse(
        request_id=draw(st.text(max_size=5)), model_name="m", model_version=draw(st.text(max_size=3))
    )
    for i in range(draw(st.integers(0, 4))):
        out.scores.add(trade_id=f"T{i}", fail_probability=draw(_DOUBLES), risk_band=draw(st.integers(0, 6)))
    for i in range(draw(st.integers(0, 2))):
        why = out.reasons.add(trade_index=i, trade_id=f"T{i}", base_log_odds=draw(_DOUBLES))
        for _ in range(draw(st.integers(0, 3))):
            why.reasons.add(
                code="X",
                value=draw(_DOUBLES),
                contribution=draw(_DOUBLES),
                category=draw(st.text(max_size=3)),
            )
    if draw(st.booleans()):
        out.error.code = 3
        out.error.message = "bad"
        out.error.trade_index = draw(st.integers(-1, 3))
    return out


@settings(max_examples=300, deadline=None, derandomize=True)
@given(responses())
def test_response_mapping_matches_json_format(response: pb.ScoreResponse) -> None:
    fast = jsonmap.score_response_dict(response.SerializeToString())
    reference = json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # compared as JSON text values: NaN != NaN as floats, and the mapping writes it as "NaN" anyway
    assert jsonmap.dumps(fast) == jsonmap.dumps(reference) or _same(fast, reference)


def _same(a: Any, b: Any) -> bool:
    import orjson

    return bool(
        orjson.loads(orjson.dumps(a, option=orjson.OPT_SORT_KEYS))
        == orjson.loads(orjson.dumps(b, option=orjson.OPT_SORT_KEYS))
    )
