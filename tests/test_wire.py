"""The compiled wire codec against the protobuf runtime (upb) and the plain column reading."""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import InvalidInput
from engine.features.rows import (
    K_CP_ROW,
    K_FX_ROW,
    K_INSTRUMENT_ROW,
    TradeRows,
)
from engine.features.validate import validate_rows
from engine.models.bundle import DEFAULT_BUNDLE
from engine.scoring.messages import trades_to_columns
from engine.scoring.response import response_bytes
from engine.scoring.servable import ServingModel, load_serving_model
from engine.scoring.wire import WireTables, decode_request, parse_day, prepare_request
from tests.conftest import make_trade, sample_request


@pytest.fixture(scope="module")
def model() -> ServingModel:
    return load_serving_model(DEFAULT_BUNDLE)


def _reference_rows(model: ServingModel, raw: bytes) -> TradeRows:
    """What the protobuf runtime reads from `raw`, through the plain column path."""
    return model.plan.rows(trades_to_columns(pb.ScoreRequest.FromString(raw).trades))


def _assert_same_rows(a: TradeRows, b: TradeRows) -> None:
    np.testing.assert_array_equal(a.x, b.x)  # NaN == NaN here
    np.testing.assert_array_equal(a.k, b.k)


# -- a tiny protobuf writer, to produce encodings the Python runtime never writes ------------


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _len(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _trade_fields(t: pb.Trade) -> list[bytes]:
    """One encoded field per set field of `t` (the order is the caller's to choose)."""
    out = []
    for fd, value in t.ListFields():
        if fd.type == fd.TYPE_STRING:
            out.append(_len(fd.number, value.encode()))
        elif fd.type == fd.TYPE_DOUBLE:
            out.append(_field(fd.number, 1, struct.pack("<d", value)))
        else:  # enums, uint32, bool
            out.append(_field(fd.number, 0, _varint(int(value))))
    return out


UNKNOWN = [
    _field(99, 0, _varint(7)),
    _field(100, 1, b"\x00" * 8),
    _field(101, 5, b"\x00" * 4),
    _len(102, b"whatever"),
    _field(7, 0, _varint(5)),  # quantity sent as a varint: a known field with the wrong wire type
    _len(5, b"xx"),  # asset_class as bytes: same
]


def test_any_field_order_unknown_fields_and_last_value_wins(model: ServingModel) -> None:
    rng = np.random.default_rng(7)
    for round_ in range(300):
        trades = [make_trade(i, trade_id=f"T{round_}-{i}-é") for i in range(int(rng.integers(1, 6)))]
        body = b""
        for t in trades:
            fields = _trade_fields(t)
            fields += [UNKNOWN[int(j)] for j in rng.integers(0, len(UNKNOWN), size=int(rng.integers(0, 3)))]
            if rng.random() < 0.3:  # a repeated scalar: the last one counts
                fields.insert(0, _field(8, 1, struct.pack("<d", 1.0)))
                fields.insert(0, _len(9, b"EUR"))
            order = rng.permutation(len(fields))
            body += _len(2, b"".join(fields[int(j)] for j in order))
        raw = _len(1, b"req") + body + _field(50, 0, _varint(1))
        got = decode_request(raw, model.wire, 100)
        _assert_same_rows(got.rows, _reference_rows(model, raw))
        assert got.request_id_text == "req"


def test_sample_requests_decode_like_the_runtime(model: ServingModel) -> None:
    for n, seed in ((1, 1), (7, 2), (256, 3), (1000, 4)):
        raw = sample_request(n, seed=seed).SerializeToString()
        _assert_same_rows(decode_request(raw, model.wire, 1000).rows, _reference_rows(model, raw))


def test_open_enums_and_negative_values(model: ServingModel) -> None:
    t = make_trade(0)
    raw = pb.ScoreRequest(trades=[t]).SerializeToString()
    odd = _len(2, b"".join(_trade_fields(t)) + _field(5, 0, _varint(-3)) + _field(6, 0, _varint(2**40 + 2)))
    got = decode_request(odd, model.wire, 10)
    assert got.rows.k[0, 0] == -3 and got.rows.k[0, 1] == 2  # int32 of the varint, as upb reads it
    parsed = pb.ScoreRequest.FromString(odd).trades[0]
    assert (parsed.asset_class, parsed.side) == (-3, 2)
    assert decode_request(raw, model.wire, 10).rows.k[0, 0] == pb.ASSET_CLASS_EQUITY


def test_malformed_bytes_are_refused_exactly_when_the_runtime_refuses_them(model: ServingModel) -> None:
    raw = sample_request(5, seed=9).SerializeToString()
    rng = np.random.default_rng(3)
    candidates = [raw[:cut] for cut in range(1, len(raw))]
    for _ in range(400):
        b = bytearray(raw)
        for j in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
            b[int(j)] = int(rng.integers(0, 256))
        candidates.append(bytes(b))
    candidates += [b"\x00", b"\x12\xff\xff\xff\xff\x0f", b"\x12\x02\x0b\x00", b"\x0a\x02\xc3\x28"]
    # field numbers beyond 2^29 - 1, at the top level and inside a trade (found by tests/test_fuzz.py)
    trade = _len(2, b"".join(_trade_fields(make_trade(0))))
    candidates += [_varint((2**29) << 3 | 5) + b"\x00" * 4 + trade, _varint(2**32 | 5) + b"\x00" * 4 + trade]
    candidates += [_len(2, b"".join(_trade_fields(make_trade(0))) + _varint((2**29) << 3 | 0) + b"\x01")]
    accepted = refused = 0
    for data in candidates:
        try:
            request = pb.ScoreRequest.FromString(data)
            upb_ok = True
        except Exception:  # noqa: BLE001 - DecodeError and friends
            upb_ok = False
        try:
            got = decode_request(data, model.wire, 100)
        except InvalidInput as exc:
            # the runtime parses some bytes that the engine refuses on content: NaN numbers,
            # malformed dates, an empty request; those must be content errors, not "malformed"
            assert not upb_ok or exc.field != "request", (data, exc)
            refused += 1
            continue
        assert upb_ok, data
        accepted += 1
        if len(request.trades):
            try:
                want = _reference_rows(model, data)
            except InvalidInput:
                pytest.fail(f"engine accepted what the plain reading refuses: {data!r}")
            _assert_same_rows(got.rows, want)
    assert accepted > 20 and refused > 100


def test_text_must_be_utf8_and_errors_name_field_and_index(model: ServingModel) -> None:
    good = b"".join(_trade_fields(make_trade(0)))
    bad = b"".join(_trade_fields(make_trade(1, counterparty_id="X"))).replace(
        b"\x1a\x01X", b"\x1a\x02\xed\xa0"
    )
    raw = _len(2, good) + _len(2, bad) + _len(2, bad.replace(b"T000001", b"T000002"))
    with pytest.raises(InvalidInput) as info:
        decode_request(raw, model.wire, 10)
    assert (info.value.field, info.value.index, info.value.count) == ("counterparty_id", 1, 2)
    assert "UTF-8" in info.value.reason


@pytest.mark.parametrize("where", ["trade", "request_id"])
def test_a_text_field_sent_twice_is_utf8_checked_both_times(model: ServingModel, where: str) -> None:
    """The last occurrence wins, but the runtime refuses the message when any occurrence is not UTF-8
    (found by the fuzzer in the suite: invalid first, valid second, was scored)."""
    invalid, valid = _len(3, b"\xed\xa0"), _len(3, b"CP0001")  # Trade.counterparty_id is field 3
    if where == "trade":
        trade = b"".join(_trade_fields(make_trade(0)))
        raw = _len(2, trade + invalid + valid)
        field = "counterparty_id"
    else:
        raw = _len(1, b"\xed\xa0") + _len(1, b"r1") + _len(2, b"".join(_trade_fields(make_trade(0))))
        field = "request_id"
    with pytest.raises(Exception, match="UTF-8"):  # the oracle: protobuf's own parser
        pb.ScoreRequest.FromString(raw)
    for read in (
        partial(decode_request, raw, model.wire, 10),
        partial(prepare_request, raw, model.wire, model.plan, 10),
    ):
        with pytest.raises(InvalidInput) as info:
            read()
        assert info.value.field == field and "UTF-8" in info.value.reason
    # the other order, valid then invalid, is refused too; valid twice is the last value
    swapped = raw.replace(invalid + valid, valid + invalid) if where == "trade" else None
    if swapped is not None:
        with pytest.raises(InvalidInput, match="UTF-8"):
            decode_request(swapped, model.wire, 10)
    twice = _len(2, b"".join(_trade_fields(make_trade(0))) + _len(3, b"XX") + valid)
    assert pb.ScoreRequest.FromString(twice).trades[0].counterparty_id == "CP0001"
    decode_request(twice, model.wire, 10)


def test_nan_in_an_optional_number_and_bad_dates_are_refused(model: ServingModel) -> None:
    raw = pb.ScoreRequest(trades=[make_trade(0), make_trade(1, inventory_ratio=math.nan)]).SerializeToString()
    with pytest.raises(InvalidInput, match=r"trades\[1\]\.inventory_ratio: is NaN"):
        decode_request(raw, model.wire, 10)
    raw = pb.ScoreRequest(trades=[make_trade(0, settlement_date="2026-02-30")]).SerializeToString()
    with pytest.raises(
        InvalidInput, match=r"trades\[0\]\.settlement_date: must be a calendar date.*2026-02-30"
    ):
        decode_request(raw, model.wire, 10)


def test_trade_count_is_checked_before_decoding(model: ServingModel) -> None:
    raw = sample_request(11).SerializeToString()
    with pytest.raises(InvalidInput, match="11 trades exceed the limit of 10"):
        decode_request(raw, model.wire, 10)
    with pytest.raises(InvalidInput, match="at least one trade"):
        decode_request(pb.ScoreRequest(request_id="x").SerializeToString(), model.wire, 10)


def test_dates_parse_like_numpy() -> None:
    rng = np.random.default_rng(11)
    samples = ["2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "0000-01-01", "9999-12-31"]
    samples += [
        "2026-13-01",
        "2026-00-10",
        "2026-01-32",
        "2026-1-010",
        "20261120",
        "2026/11/20",
        "abcd-ef-gh",
    ]
    for _ in range(3000):
        y, m, d = int(rng.integers(0, 10000)), int(rng.integers(0, 14)), int(rng.integers(0, 33))
        samples.append(f"{y:04d}-{m:02d}-{d:02d}")
    for s in samples:
        buf = np.frombuffer(s.encode(), dtype=np.uint8)
        got = parse_day(buf, 0, len(buf))
        try:
            want = float(np.datetime64(s, "D").astype(np.int64)) if len(s) == 10 else -math.inf
        except ValueError:
            want = -math.inf
        assert got == want, s


def test_response_bytes_equal_the_runtime_serialization(model: ServingModel) -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 17, 300):
        ids = [f"T{i}-" + "é" * int(rng.integers(0, 3)) + "x" * int(rng.integers(0, 200)) for i in range(n)]
        request = pb.ScoreRequest(
            request_id=["", "r-1", "ü" * 300][n % 3], trades=[make_trade(0, trade_id=i) for i in ids]
        )
        raw = request.SerializeToString()
        decoded = decode_request(raw, model.wire, 1000)
        probs = rng.random(n).astype(np.float32)
        probs[0] = 0.0
        probs[-1] = np.nan if n > 2 else probs[-1]
        bands = model.bundle.manifest.risk_bands.assign(probs)
        got = response_bytes(decoded, probs, model.band_edges, model.name_bytes, model.version_bytes)
        want = pb.ScoreResponse(
            request_id=request.request_id, model_name=model.name, model_version=model.version
        )
        for i, p, b in zip(ids, probs.tolist(), bands.tolist(), strict=True):
            want.scores.add(trade_id=i, fail_probability=p, risk_band=b)
        assert got == want.SerializeToString()


class _Keys:
    """What WireTables.build reads of a FeaturePlan: the look-up keys per K_* column."""

    def __init__(self, keys: dict[int, list[str]]) -> None:
        self.keys = keys


def test_lookups_of_short_long_and_near_miss_keys() -> None:
    """Every slot but one is pointed at the one key, so every probe walks past it and compares
    (whatever the hashes): the key itself resolves to 0; keys differing in one byte (first, 8th,
    9th, 16th, 17th, last), in length, or resolved through another column, to nothing (-1)."""
    keys = ["C", "CP0001", "CP00000A", "CP000000000000BX", "CP000000000000BXY", "ü" * 9, "L" * 70]
    for key in keys:
        tables = WireTables.build(_Keys({K_CP_ROW: [key]}))  # type: ignore[arg-type]
        tables.slots[:] = 0
        tables.slots[-1] = -1
        probes = {key: 0, key + "Z": -1, key[:-1]: -1}
        for i in (0, 7, 8, 15, 16, len(key) - 1):
            if i < len(key):
                probes.setdefault(key[:i] + ("#" if key[i] != "#" else "%") + key[i + 1 :], -1)
        names = [name for name in probes if name]
        raw = pb.ScoreRequest(
            trades=[make_trade(j, counterparty_id=name, instrument_id=key) for j, name in enumerate(names)]
        ).SerializeToString()
        rows = decode_request(raw, tables, 10_000).rows
        assert rows.k[:, K_CP_ROW].tolist() == [probes[name] for name in names], key
        assert set(rows.k[:, K_INSTRUMENT_ROW].tolist()) == {-1}, key  # same bytes, other column
        assert set(rows.k[:, K_FX_ROW].tolist()) == {-1}


def _outcome(step: Callable[[], Any]) -> Any:
    try:
        return step()
    except InvalidInput as exc:
        return (exc.field, exc.index, exc.count, exc.reason)


def test_prepare_request_is_decode_then_validate_then_features(model: ServingModel) -> None:
    """The serving path's one compiled call gives what the three steps give, errors included."""

    def three_steps(raw: bytes) -> Any:
        request = decode_request(raw, model.wire, 100)
        validate_rows(request.rows, 100)
        return request, model.plan.compute_rows(request.rows)

    good = [sample_request(n, seed=n).SerializeToString() for n in (1, 2, 100)]
    bad_trades = [
        make_trade(0, quantity=-1.0),
        make_trade(0, settlement_date="2026-11-19"),
        make_trade(0, trade_id=None),
        make_trade(0, currency="usd"),
        make_trade(0, inventory_ratio=math.nan),
        make_trade(0, trade_date="2026-13-01"),
        make_trade(0, counterparty_id="X" * 500),
    ]
    cases = good + [sample_request(101).SerializeToString(), pb.ScoreRequest().SerializeToString()]
    cases += [pb.ScoreRequest(trades=[make_trade(1), t, t]).SerializeToString() for t in bad_trades]
    cases += [pb.ScoreRequest(trades=[make_trade(1), make_trade(1)]).SerializeToString()]  # repeated id
    rng = np.random.default_rng(8)
    for _ in range(200):
        b = bytearray(good[1])
        b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        cases.append(bytes(b))
    kinds: set[str] = set()
    for raw in cases:
        want = _outcome(partial(three_steps, raw))
        got = _outcome(partial(prepare_request, raw, model.wire, model.plan, 100))
        if isinstance(want, tuple) and isinstance(want[0], str):
            assert got == want, raw
            kinds.add(want[0])
            continue
        (want_request, want_features), (got_request, got_features) = want, got
        _assert_same_rows(got_request.rows, want_request.rows)
        np.testing.assert_array_equal(got_request.text_start, want_request.text_start)
        np.testing.assert_array_equal(got_request.text_len, want_request.text_len)
        assert got_request.request_id == want_request.request_id
        np.testing.assert_array_equal(got_features, want_features)
        kinds.add("ok")
    assert {"ok", "request", "trades", "quantity", "trade_date", "inventory_ratio", "trade_id"} <= kinds


# -- the decoder's tables come from the descriptor ------------------------------------------


def _trade_with(name: str, number: int, type_: int, label: int = 1) -> Any:
    """tradescore.v1.Trade's descriptor with one more field (a proto change nobody told the decoder)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2

    file = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    (trade,) = (m for m in file.message_type if m.name == "Trade")
    trade.field.add(name=name, number=number, type=type_, label=label, json_name=name)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return pool.FindMessageTypeByName("tradescore.v1.Trade")


def test_every_trade_field_has_a_place_in_the_decoder_and_a_new_one_stops_the_import() -> None:
    from google.protobuf.descriptor import FieldDescriptor as FD

    from engine.features.columns import TradeColumns
    from engine.scoring import trade_layout

    numbers = {f.number for f in pb.Trade.DESCRIPTOR.fields}
    assert set(trade_layout.TRADE_FIELDS) == numbers
    assert all(trade_layout.FIELD_KIND[n] != trade_layout.KIND_NONE for n in numbers)
    assert [f.name for f in dataclasses.fields(TradeColumns)] == [f.name for f in pb.Trade.DESCRIPTOR.fields]
    # the tables the module holds are the ones the descriptor gives
    again = trade_layout.trade_layout(pb.Trade.DESCRIPTOR)
    assert again[0] == trade_layout.TEXT_FIELDS
    for built, held in zip(
        again[1:], (trade_layout.FIELD_KIND, trade_layout.FIELD_COLUMN, trade_layout.SLOT_FIELD), strict=False
    ):
        np.testing.assert_array_equal(built, held)
    for name, number, type_ in (
        ("risk_score", 19, FD.TYPE_DOUBLE),  # a number nobody gave an x column
        ("desk_id", 20, FD.TYPE_STRING),  # a text nobody measures or resolves
        ("urgency", 21, FD.TYPE_INT64),  # a type the decoder does not read
    ):
        with pytest.raises(ImportError, match=name):
            trade_layout.trade_layout(_trade_with(name, number, type_))
    with pytest.raises(ImportError, match="legs"):
        trade_layout.trade_layout(_trade_with("legs", 22, FD.TYPE_DOUBLE, label=3))  # repeated


def _group(number: int, payload: bytes = b"") -> bytes:
    return _field(number, 3, payload) + _varint(number << 3 | 4)


def _nested(depth: int, number: int = 20, payload: bytes = b"") -> bytes:
    for _ in range(depth):
        payload = _group(number, payload)
    return payload


def test_unknown_groups_are_skipped_or_refused_as_the_runtime_does(model: ServingModel) -> None:
    """Unknown fields of wire types 3/4 (groups), at the top level and inside trades: the runtime
    skips balanced groups (nested, holding any field, up to its depth limit) and refuses the rest."""
    fields = _trade_fields(make_trade(0))
    payloads = [b"".join(UNKNOWN), _field(7, 1, struct.pack("<d", 2.0)), _len(1, b"\xc3\x28")]
    groups = [_group(20), _group(2), _group(7), _group(536_870_911), _nested(3), _nested(5, 33)]
    groups += [_group(20, p) for p in payloads] + [_group(20, _group(21, payloads[0]) + payloads[1])]
    groups += [_group(20, _varint(0) + b"\x01"), _group(20, _group(0))]  # field 0 inside: upb skips it
    groups += [_nested(n) for n in (98, 99, 100, 101)]  # upb's depth limit: 100 from the top
    broken = [
        _field(20, 3, b""),  # never closed
        _varint(20 << 3 | 4),  # closed, never opened
        _field(20, 3, b"") + _varint(21 << 3 | 4),  # closed with another number
        _field(20, 3, _group(21)[:-2]) + _varint(20 << 3 | 4),  # an inner group left open
        _field(20, 3, _varint(99 << 3 | 0)) + _varint(20 << 3 | 4),  # a truncated field inside
        _field(20, 3, _field(30, 6, b"")) + _varint(20 << 3 | 4),  # wire type 6 inside
        _group(20)[:-1],  # the end tag cut short
    ]
    rng = np.random.default_rng(11)
    candidates = []
    for g in groups + broken:
        trade = b"".join(fields)
        at = int(rng.integers(0, len(fields) + 1))
        inside = b"".join(fields[:at]) + g + b"".join(fields[at:])
        candidates += [g + _len(2, trade), _len(2, trade) + g, _len(2, inside), _len(2, trade) + _len(2, g)]
    for _ in range(200):  # random group trees, some cut or with one tag changed
        tree = b"".join(
            _nested(int(rng.integers(1, 4)), int(rng.integers(16, 40)), UNKNOWN[i % 4]) for i in range(3)
        )
        if rng.random() < 0.5:
            b = bytearray(tree)
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
            tree = bytes(b)
        candidates.append(_len(2, b"".join(fields) + tree))
    accepted = refused = 0
    for data in candidates:
        try:
            pb.ScoreRequest.FromString(data)
            upb_ok = True
        except Exception:  # noqa: BLE001 - DecodeError and friends
            upb_ok = False
        try:
            got = decode_request(data, model.wire, 100)
        except InvalidInput as exc:
            assert not upb_ok, (data, exc)
            assert exc.field in ("request", "trades") or exc.index is not None, exc
            refused += 1
            continue
        assert upb_ok, data
        accepted += 1
        _assert_same_rows(got.rows, _reference_rows(model, data))
    assert accepted > 60 and refused > 30, (accepted, refused)
