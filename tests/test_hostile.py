"""Hostile input, property-based (hypothesis): the request decoder and validators never crash, never
accept what the protobuf runtime refuses, and never let an invalid trade through to a score.

The oracle is the plain path: the protobuf runtime (upb) parses the bytes, the trades become
columns (`engine.scoring.messages.trades_to_columns`), then rows of the bundle's tables, then
`engine.features.validate.validate_rows`. The serving path is the compiled one
(`engine.scoring.wire.prepare_request`). Examples are drawn deterministically (the same ones on
every run, `derandomize`), so CI is reproducible; `HYPOTHESIS_PROFILE=deep` draws 20x more, at random.
"""

from __future__ import annotations

import math
import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import InvalidInput
from engine.features.validate import validate_rows
from engine.models.bundle import DEFAULT_BUNDLE
from engine.scoring.messages import trades_to_columns
from engine.scoring.servable import ServingModel, load_serving_model
from engine.scoring.trade_layout import TRADE_FIELDS
from engine.scoring.wire import prepare_request
from tests.conftest import make_trade, sample_request

#: property-based and mutation runs of hostile requests (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow

settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=6000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MAX_TRADES = 50
MODEL: ServingModel = load_serving_model(DEFAULT_BUNDLE)
#: fields an error may name: the trade's own, or the request's
FIELDS = {*TRADE_FIELDS.values(), "request", "request_id", "trades", "explain"}


def _serving(raw: bytes) -> tuple[np.ndarray, np.ndarray] | InvalidInput:
    """The serving path: (rows, features), or the InvalidInput it answers with. Anything else fails."""
    try:
        request, features = prepare_request(raw, MODEL.wire, MODEL.plan, MAX_TRADES)
    except InvalidInput as exc:
        assert exc.field in FIELDS, exc
        return exc
    return request.rows.x, features


def _plain(raw: bytes) -> bool | None:
    """The oracle: None when the protobuf runtime cannot parse `raw`; else whether the trades pass."""
    try:
        request = pb.ScoreRequest.FromString(raw)
    except Exception:  # noqa: BLE001 - DecodeError and the runtime's other refusals
        return None
    if not 1 <= len(request.trades) <= MAX_TRADES or request.explain not in pb.Explain.values():
        return False
    try:
        validate_rows(MODEL.plan.rows(trades_to_columns(request.trades)), MAX_TRADES)
    except InvalidInput:
        return False
    return True


def _check(raw: bytes) -> None:
    got = _serving(raw)
    oracle = _plain(raw)
    if isinstance(got, InvalidInput):
        assert oracle is not True, f"refused what the plain path accepts: {got} {raw!r}"
        return
    assert oracle is True, f"accepted what the plain path refuses ({oracle}): {raw!r}"
    x, features = got
    assert features.dtype == np.float32 and features.shape == (len(x), MODEL.plan.width)
    assert not np.isinf(features).any(), "a feature is infinite"


VALID = sample_request(6, seed=4).SerializeToString()


@given(st.binary(max_size=2048))
def test_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)


@given(st.data())
def test_mutated_valid_requests(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        at = data.draw(st.integers(0, len(raw)), label="at")
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]), label="kind")
        if kind == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del raw[at : at + data.draw(st.integers(1, 8))]
        else:
            del raw[at:]
    _check(bytes(raw))


EXTREME = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308, -1.7976931348623157e308, 1e-300]),
)
IDS = st.one_of(
    st.sampled_from(["", "T1", "T1", "CP0001", "US0378331005", "ACC-001"]),
    st.text(max_size=40),
    st.text(alphabet=string.ascii_letters, min_size=120, max_size=5000),  # around and over the 128 limit
)
DATES = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(
        ["", "2026-02-30", "2026-13-01", "0000-00-00", "2026-11-20T00:00", "20261120", "٢٠٢٦-١١-٢٠"]
    ),
    st.text(max_size=12),
)
ENUMS = st.one_of(st.integers(0, 8), st.integers(-(2**31), 2**31 - 1))


@st.composite
def hostile_trade(draw: st.DrawFn, i: int) -> pb.Trade:
    """A realistic trade with a few of its fields replaced by hostile values (or cleared)."""
    t = make_trade(i)
    for name in draw(st.lists(st.sampled_from(sorted(TRADE_FIELDS.values())), max_size=4)):
        field = pb.Trade.DESCRIPTOR.fields_by_name[name]
        if draw(st.booleans()) and name not in ("quantity", "price"):
            t.ClearField(name)  # type: ignore[arg-type]
        elif field.type == field.TYPE_STRING:
            setattr(t, name, draw(DATES if name.endswith("_date") else IDS))
        elif field.type == field.TYPE_DOUBLE:
            setattr(t, name, draw(EXTREME))
        elif field.type == field.TYPE_ENUM:
            setattr(t, name, draw(ENUMS))
        elif field.type == field.TYPE_BOOL:
            setattr(t, name, draw(st.booleans()))
        else:  # uint32 settlement_cycle_days
            setattr(t, name, draw(st.integers(0, 2**32 - 1)))
    return t


@given(st.data())
def test_hostile_field_values(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 5), label="trades")
    trades = [data.draw(hostile_trade(i), label=f"trade {i}") for i in range(n)]
    request = pb.ScoreRequest(request_id=data.draw(st.text(max_size=30)), trades=trades)
    raw = request.SerializeToString()
    got = _serving(raw)
    _check(raw)
    if not isinstance(got, InvalidInput):  # nothing invalid was let through
        for t in trades:
            assert t.trade_id and t.quantity > 0 and math.isfinite(t.quantity)
            assert t.price > 0 and math.isfinite(t.price)


def test_the_profiles_draw_invalid_and_valid_requests() -> None:
    """The strategies reach both sides of the validators (else the properties prove little)."""
    outcomes: set[bool] = set()

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.data())
    def sample(data: st.DataObject) -> None:
        trades = [data.draw(hostile_trade(i)) for i in range(2)]
        outcomes.add(
            not isinstance(_serving(pb.ScoreRequest(trades=trades).SerializeToString()), InvalidInput)
        )

    sample()
    assert outcomes == {True, False}


@pytest.mark.parametrize("n", [MAX_TRADES, MAX_TRADES + 1])
def test_the_trade_limit_holds_at_its_edge(n: int) -> None:
    got = _serving(sample_request(n).SerializeToString())
    assert isinstance(got, InvalidInput) == (n > MAX_TRADES)
