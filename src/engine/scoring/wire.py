"""Compiled decoder for the scoring hot path: ScoreRequest bytes -> TradeRows (the response is
`engine.scoring.response`; the wire format's pieces are `engine.scoring.protowire`).

Reading 18 fields of 256 `Trade` messages through the protobuf runtime costs
more Python attribute access than the model's own time (docs/design-figures.md). Here the
`ScoreRequest` wire bytes are walked once by compiled code (numba) that
writes the `TradeRows` matrices directly: numbers and enums as they are,
text fields checked as UTF-8 and measured in characters, dates parsed, and
counterparty / instrument / currency / venue ids looked up in the bundle's
tables through an open-addressing hash table built once per bundle
(`WireTables`). No Python object is created per trade; trade ids stay where
they are in the request bytes and are copied straight into the response
(`engine.scoring.response`).

The decoder follows the protobuf wire format rules that matter to a
producer: fields in any order, the last value of a repeated scalar wins,
unknown fields of every wire type are skipped (groups too: nested groups must
close in order, up to upb's depth limit), a known field sent with an
unexpected wire type is treated as unknown, enums are open, and strings must
be valid UTF-8, every occurrence of them. Malformed bytes are refused with
INVALID_ARGUMENT instead of being half-read. tests/test_wire.py checks all of
it against the protobuf runtime (upb) on random messages, and the encoder byte
for byte.

Which field is which comes from `pb.Trade.DESCRIPTOR` and from where
`engine.features.rows` puts each field (`engine.scoring.trade_layout`): the kernels read
tables indexed by field number, and a field added to the proto that no table
maps stops the import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import BundleError, InvalidInput, MalformedRequest
from engine.features import kernels as kn
from engine.features.compute import FeaturePlan
from engine.features.rows import K_DUP_TRADE_ID, NK, NX, TradeRows
from engine.features.validate import LIMITS, check_count, raise_first_problem
from engine.jit import Int, compiled
from engine.scoring.protowire import (
    MAX_FIELD,
    WT_I64,
    WT_LEN,
    WT_VARINT,
    read_varint,
    skip_field,
    utf8_chars,
    utf8_sequence,
)
from engine.scoring.trade_layout import (
    FIELD_COLUMN,
    FIELD_KIND,
    KIND_BOOL,
    KIND_DOUBLE,
    KIND_ENUM,
    KIND_NONE,
    KIND_OPTIONAL_DOUBLE,
    KIND_TEXT,
    KIND_UINT32,
    N_TEXT,
    SLOT_DAY,
    SLOT_FIELD,
    SLOT_LENGTH,
    SLOT_LOOKUP,
    T_TRADE_ID,
    TRADE_FIELDS,
    ZERO_K,
    ZERO_X,
)

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


# error kinds reported in err[0]; err[1] = Trade field number, err[2] = trade index, err[3] = count
E_NONE = 0
E_MALFORMED = 1
E_UTF8 = 2
E_DATE = 3
E_NAN = 4

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)


@compiled
def _digits(buf: U8, p: Int, n: Int) -> Int:
    v: Int = 0
    for j in range(n):
        d = np.int64(buf[p + j]) - 48
        if d < 0 or d > 9:
            return -1
        v = v * 10 + d
    return v


@compiled
def parse_day(buf: U8, start: Int, length: Int) -> float:
    """ "YYYY-MM-DD" -> days since 1970-01-01; NaN for an empty string, -inf when not a date."""
    if length == 0:
        return np.nan
    if length != 10 or buf[start + 4] != 45 or buf[start + 7] != 45:  # '-'
        return -np.inf
    y = _digits(buf, start, 4)
    m = _digits(buf, start + 5, 2)
    d = _digits(buf, start + 8, 2)
    if y < 0 or m < 1 or m > 12 or d < 1:
        return -np.inf
    leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
    dim = 31
    if m == 2:
        dim = 29 if leap else 28
    elif m == 4 or m == 6 or m == 9 or m == 11:
        dim = 30
    if d > dim:
        return -np.inf
    # days from civil (proleptic Gregorian), after H. Hinnant's public-domain algorithm
    yy = y - 1 if m <= 2 else y
    era = yy // 400
    yoe = yy - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return float(era * 146097 + doe - 719468)


@compiled
def _hash(buf: U8, start: Int, length: Int, salt: Int) -> np.uint64:
    """FNV-1a over the bytes, the salt, then the murmur3 finaliser (so the low bits mix well).

    `_resolve_text` writes the same steps out inline; if they differed, no id would be found
    (tests/test_wire.py compares every look-up with the dict-based table path).
    """
    h = _FNV_OFFSET
    for j in range(start, start + length):
        h = (h ^ np.uint64(buf[j])) * _FNV_PRIME
    h ^= np.uint64(salt)
    h ^= h >> np.uint64(33)
    h *= _MIX1
    h ^= h >> np.uint64(33)
    h *= _MIX2
    h ^= h >> np.uint64(33)
    return h


@compiled
def _slot(h: np.uint64, mask: Int) -> Int:
    return np.int64(h & np.uint64(mask))


@compiled
def _same(a: U8, a_start: Int, b: U8, b_start: Int, length: Int) -> bool:
    for j in range(length):
        if a[a_start + j] != b[b_start + j]:
            return False
    return True


# -- tables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireTables:
    """One bundle's look-up keys (reference ids, vocabularies) as one open-addressing hash table.

    Keys of all tables share one UTF-8 blob; `owner[j]` says which K_* column
    key j resolves, `value[j]` its position in that table, and `slots` (a power
    of two, at most half full) holds key numbers by hash (salted with the
    column, so equal keys of two tables never collide into one entry).
    """

    blob: U8
    offsets: I32
    owner: I32
    value: I32
    slots: I32  # int32 throughout: half the cache lines a look-up touches with int64

    @staticmethod
    def build(plan: FeaturePlan) -> WireTables:
        blob = bytearray()
        offsets = [0]
        owner: list[int] = []
        value: list[int] = []
        for column, keys in plan.keys.items():
            for position, key in enumerate(keys):
                blob += key.encode("utf-8")
                offsets.append(len(blob))
                owner.append(column)
                value.append(position)
        n = len(owner)
        if len(blob) >= 2**31:
            raise BundleError("reference keys exceed 2 GiB; the look-up tables index them with int32")
        size = 1 << max(4, (2 * n).bit_length())
        tables = WireTables(
            np.frombuffer(bytes(blob), dtype=np.uint8).copy() if blob else np.zeros(1, dtype=np.uint8),
            np.array(offsets, dtype=np.int32),
            np.array(owner, dtype=np.int32),
            np.array(value, dtype=np.int32),
            np.full(size, -1, dtype=np.int32),
        )
        _fill_slots(tables.blob, tables.offsets, tables.owner, tables.slots)
        return tables


@compiled
def _fill_slots(blob: U8, offsets: I32, owner: I32, slots: I32) -> None:
    mask = slots.shape[0] - 1
    for j in range(owner.shape[0]):
        s = _slot(_hash(blob, offsets[j], offsets[j + 1] - offsets[j], owner[j]), mask)
        while slots[s] >= 0:
            s = (s + 1) & mask
        slots[s] = j


# -- request -----------------------------------------------------------------------------


@compiled
def count_trades(buf: U8) -> tuple[Int, Int, Int, Int]:
    """A ScoreRequest's top level: (trades, request_id start, length, explain).

    trades -1: malformed, -2: the request id is not UTF-8.
    """
    p: Int = 0
    end = buf.shape[0]
    n = 0
    rid_start: Int = 0
    rid_len: Int = 0
    explain: Int = 0
    while p < end:
        tag, p = read_varint(buf, p, end)
        if p < 0:
            return -1, 0, 0, 0
        field = np.int64(tag >> np.uint64(3))
        wire = np.int64(tag & np.uint64(7))
        if field == 0 or field > MAX_FIELD:
            return -1, 0, 0, 0
        if wire == WT_LEN and (field == 1 or field == 2):
            length, q = read_varint(buf, p, end)
            if q < 0 or length > np.uint64(end - q):
                return -1, 0, 0, 0
            if field == 1:
                # seen again: the last value wins, but protobuf checks every one's UTF-8
                if rid_len and utf8_chars(buf, rid_start, rid_len) < 0:
                    return -2, 0, 0, 0
                rid_start = q
                rid_len = np.int64(length)
            else:
                n += 1
            p = q + np.int64(length)
        elif wire == WT_VARINT and field == 3:
            flag, p = read_varint(buf, p, end)
            if p < 0:
                return -1, 0, 0, 0
            # the last occurrence wins, as in protobuf; any value past the enum's is refused later
            explain = np.int64(flag) if flag < np.uint64(256) else 256
        else:
            p = skip_field(buf, p, end, wire, field, 0)
            if p < 0:
                return -1, 0, 0, 0
    if rid_len and utf8_chars(buf, rid_start, rid_len) < 0:
        return -2, 0, 0, 0
    return n, rid_start, rid_len, explain


@compiled
def _note(err: I64, kind: Int, field: Int, index: Int) -> None:
    """Record an error: the first one seen wins; later ones of the same kind and field are counted."""
    if err[0] == E_NONE:
        err[0] = kind
        err[1] = field
        err[2] = index
        err[3] = 1
    elif err[0] == kind and err[1] == field:
        err[3] += 1


@compiled
def decode_trades(
    buf: U8,
    x: npt.NDArray[np.float64],
    k: I64,
    text_start: I64,
    text_len: I64,
    blob: U8,
    offsets: I32,
    owner: I32,
    value: I32,
    slots: I32,
    err: I64,
) -> None:
    """Fill rows x, k and the text spans of every Trade in `buf` (a ScoreRequest; see count_trades)."""
    n = x.shape[0]
    end = buf.shape[0]
    bits = np.empty(1, dtype=np.uint64)
    value_of_bits = bits.view(np.float64)
    p: Int = 0
    i = 0
    while p < end and i < n:
        # count_trades checked the top level: a trade is tag 0x12, then its length (1 or 2 bytes
        # for any realistic trade, read in line; see the note on _varint below)
        if buf[p] == 0x12 and p + 1 < end and buf[p + 1] < 0x80:
            length = np.uint64(buf[p + 1])
            p += 2
        elif buf[p] == 0x12 and p + 2 < end and buf[p + 2] < 0x80:
            length = np.uint64(buf[p + 1] & 0x7F) | (np.uint64(buf[p + 2]) << np.uint64(7))
            p += 3
        else:
            tag, p = read_varint(buf, p, end)
            field = np.int64(tag >> np.uint64(3))
            wire = np.int64(tag & np.uint64(7))
            if not (wire == WT_LEN and field == 2):
                p = skip_field(buf, p, end, wire, field, 0)
                continue
            length, p = read_varint(buf, p, end)
        q: Int = p
        stop: Int = p + np.int64(length)
        p = stop
        # defaults: proto3 zero values; optional fields unset (NaN)
        for c in range(x.shape[1]):
            x[i, c] = np.nan
        for c in ZERO_X:
            x[i, c] = 0.0
        for c in ZERO_K:
            k[i, c] = 0
        for t in range(text_start.shape[1]):
            text_start[i, t] = q
            text_len[i, t] = 0
        while q < stop:
            # one-byte varints (tags, lengths, enums, flags) are read in line: a call to
            # _varint passes `buf` as a reference-counted struct, dearer than the read itself
            if buf[q] < 0x80:
                tag = np.uint64(buf[q])
                q += 1
            elif q + 1 < stop and buf[q + 1] < 0x80:  # fields 16-2047: two-byte tags
                tag = np.uint64(buf[q] & 0x7F) | (np.uint64(buf[q + 1]) << np.uint64(7))
                q += 2
            else:
                tag, q = read_varint(buf, q, stop)
            if q < 0:
                _note(err, E_MALFORMED, 0, i)
                return
            f = np.int64(tag >> np.uint64(3))
            w = np.int64(tag & np.uint64(7))
            if f == 0 or f > MAX_FIELD:
                _note(err, E_MALFORMED, 0, i)
                return
            kind = FIELD_KIND[f] if f < FIELD_KIND.shape[0] else KIND_NONE
            column = FIELD_COLUMN[f] if f < FIELD_KIND.shape[0] else -1
            if kind == KIND_TEXT and w == WT_LEN:
                if q < stop and buf[q] < 0x80:
                    ln = np.uint64(buf[q])
                    r = q + 1
                else:
                    ln, r = read_varint(buf, q, stop)
                if r < 0 or ln > np.uint64(stop - r):
                    _note(err, E_MALFORMED, f, i)
                    return
                # the field seen again: the last value wins, but protobuf checks every one's UTF-8
                # (_resolve_text checks the last)
                if (
                    text_len[i, column] > 0
                    and utf8_chars(buf, text_start[i, column], text_len[i, column]) < 0
                ):
                    _note(err, E_UTF8, f, i)
                text_start[i, column] = r
                text_len[i, column] = np.int64(ln)
                q = r + np.int64(ln)
            elif (kind == KIND_ENUM or kind == KIND_UINT32 or kind == KIND_BOOL) and w == WT_VARINT:
                if q < stop and buf[q] < 0x80:
                    v = np.uint64(buf[q])
                    q += 1
                else:
                    v, q = read_varint(buf, q, stop)
                if q < 0:
                    _note(err, E_MALFORMED, f, i)
                    return
                low = np.int64(v & np.uint64(0xFFFFFFFF))
                if kind == KIND_ENUM:  # an int32, as protobuf reads an open enum
                    k[i, column] = low - (1 << 32) if low >= (1 << 31) else low
                elif kind == KIND_UINT32:
                    x[i, column] = float(low)
                else:
                    x[i, column] = 1.0 if v != 0 else 0.0
            elif (kind == KIND_DOUBLE or kind == KIND_OPTIONAL_DOUBLE) and w == WT_I64:
                if q + 8 > stop:
                    _note(err, E_MALFORMED, f, i)
                    return
                u = np.uint64(0)
                for j in range(q + 7, q - 1, -1):  # little-endian, read in line (see above)
                    u = (u << np.uint64(8)) | np.uint64(buf[j])
                bits[0] = u
                d = value_of_bits[0]
                q += 8
                if kind == KIND_OPTIONAL_DOUBLE and d != d:
                    _note(err, E_NAN, f, i)
                x[i, column] = d
            else:
                q = skip_field(buf, q, stop, w, f, 1)
                if q < 0 or q > stop:
                    _note(err, E_MALFORMED, f, i)
                    return
        i += 1
    _resolve_text(buf, x, k, text_start, text_len, blob, offsets, owner, value, slots, err)
    _mark_repeats(buf, text_start, text_len, k)


@compiled
def _resolve_text(
    buf: U8,
    x: npt.NDArray[np.float64],
    k: I64,
    text_start: I64,
    text_len: I64,
    blob: U8,
    offsets: I32,
    owner: I32,
    value: I32,
    slots: I32,
    err: I64,
) -> None:
    """Per trade and text field: UTF-8 check and length in characters, dates, table look-ups.

    One loop with the helpers written out: a call per field would pass every array
    again (reference-counted), which costs more than the work itself.
    """
    mask = slots.shape[0] - 1
    for i in range(x.shape[0]):
        for t in range(N_TEXT):
            s0 = text_start[i, t]
            ln = text_len[i, t]
            end = s0 + ln
            # UTF-8: ASCII bytes fast, multi-byte sequences checked in full
            chars = 0
            p = s0
            while p < end:
                b = buf[p]
                if b < 0x80:
                    p += 1
                else:
                    size = utf8_sequence(buf, p, end)
                    if size == 0:
                        chars = -1
                        break
                    p += size
                chars += 1
            if chars < 0:
                _note(err, E_UTF8, SLOT_FIELD[t], i)
                chars = 0
            if SLOT_DAY[t] >= 0:
                day = parse_day(buf, s0, ln)
                if day == -np.inf:
                    _note(err, E_DATE, SLOT_FIELD[t], i)
                    day = np.nan
                x[i, SLOT_DAY[t]] = day
            if SLOT_LENGTH[t] >= 0:
                k[i, SLOT_LENGTH[t]] = chars
            if SLOT_LOOKUP[t, 0] < 0:
                continue
            # FNV-1a + murmur3 finaliser (as _hash), then linear probing (as WireTables.build)
            h0 = _FNV_OFFSET
            for j in range(s0, end):
                h0 = (h0 ^ np.uint64(buf[j])) * _FNV_PRIME
            for m in range(SLOT_LOOKUP.shape[1]):
                column = SLOT_LOOKUP[t, m]
                if column < 0:
                    break
                h = h0 ^ np.uint64(column)  # the salt, mixed in after the bytes
                h ^= h >> np.uint64(33)
                h *= _MIX1
                h ^= h >> np.uint64(33)
                h *= _MIX2
                h ^= h >> np.uint64(33)
                s = np.int64(h & np.uint64(mask))
                found = -1
                while True:
                    j = slots[s]
                    if j < 0:
                        break
                    if owner[j] == column and offsets[j + 1] - offsets[j] == ln:
                        k0 = offsets[j]
                        same = True
                        for c in range(ln):
                            if blob[k0 + c] != buf[s0 + c]:
                                same = False
                                break
                        if same:
                            found = value[j]
                            break
                    s = (s + 1) & mask
                k[i, column] = found


@compiled
def _mark_repeats(buf: U8, text_start: I64, text_len: I64, k: I64) -> None:
    """K_DUP_TRADE_ID = 1 for every trade id equal to an earlier one (a hash set over the request)."""
    n = k.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    slots = np.full(size, -1, dtype=np.int64)
    mask = size - 1
    for i in range(n):
        s0 = text_start[i, T_TRADE_ID]
        ln = text_len[i, T_TRADE_ID]
        k[i, K_DUP_TRADE_ID] = 0
        s = _slot(_hash(buf, s0, ln, 0), mask)
        while True:
            j = slots[s]
            if j < 0:
                slots[s] = i
                break
            if text_len[j, T_TRADE_ID] == ln and _same(buf, text_start[j, T_TRADE_ID], buf, s0, ln):
                k[i, K_DUP_TRADE_ID] = 1
                break
            s = (s + 1) & mask


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A decoded ScoreRequest: its rows, and where its text sits in the request bytes."""

    buf: U8
    rows: TradeRows
    text_start: I64  # [n, N_TEXT]
    text_len: I64
    request_id: tuple[int, int]  # (start, length) in buf
    #: ScoreRequest.explain, a tradescore.v1.Explain value
    explain: int = 0

    def text(self, index: int, slot: int) -> str:
        s0 = int(self.text_start[index, slot])
        return bytes(self.buf[s0 : s0 + int(self.text_len[index, slot])]).decode("utf-8", "replace")

    @property
    def request_id_text(self) -> str:
        s0, ln = self.request_id
        return bytes(self.buf[s0 : s0 + ln]).decode("utf-8")


def _malformed(index: int, field: int) -> MalformedRequest:
    where = f"trades[{index}]" + (f".{TRADE_FIELDS.get(field, f'field {field}')}" if field else "")
    return MalformedRequest(
        "request", f"is not a valid tradescore.v1.ScoreRequest (malformed bytes at {where})"
    )


F32 = npt.NDArray[np.float32]


@compiled
def prepare_trades(
    buf: U8,
    max_trades: Int,
    blob: U8,
    offsets: I32,
    owner: I32,
    value: I32,
    slots: I32,
    limits: I64,
    refs: tuple[npt.NDArray[np.float64], ...],
    others: I64,
    columns: I64,
    width: Int,
) -> tuple[bool, Int, Int, Int, Int, npt.NDArray[np.float64], I64, I64, I64, I64, I64, I64, F32]:
    """count_trades, decode_trades, kn.check_rows and kn.compute_rows in one compiled call.

    Returns (ok, trades, request id start, length, explain, x, k, text starts, text lengths,
    decode error, first broken row per rule, rows per rule, features); every
    step runs only when the ones before it found nothing wrong (trades outside
    1..max_trades: nothing is decoded; a decode error: nothing is checked; a
    broken rule: no features). `ok`: every step ran and found nothing wrong.
    """
    n, rid_start, rid_len, explain = count_trades(buf)
    m = n if 0 < n <= max_trades else 0
    x = np.empty((m, NX), dtype=np.float64)
    k = np.empty((m, NK), dtype=np.int64)
    text_start = np.empty((m, N_TEXT), dtype=np.int64)
    text_len = np.empty((m, N_TEXT), dtype=np.int64)
    err = np.zeros(4, dtype=np.int64)
    first = np.full(kn.N_RULES, -1, dtype=np.int64)
    count = np.zeros(kn.N_RULES, dtype=np.int64)
    features = np.empty((m, width), dtype=np.float32)
    if m == 0:
        return False, n, rid_start, rid_len, explain, x, k, text_start, text_len, err, first, count, features
    decode_trades(buf, x, k, text_start, text_len, blob, offsets, owner, value, slots, err)
    if err[0] != E_NONE:
        return False, n, rid_start, rid_len, explain, x, k, text_start, text_len, err, first, count, features
    first, count = kn.check_rows(x, k, limits, np.zeros(0, dtype=np.bool_))
    for rule in range(kn.N_RULES):
        if first[rule] >= 0:
            return (
                False,
                n,
                rid_start,
                rid_len,
                explain,
                x,
                k,
                text_start,
                text_len,
                err,
                first,
                count,
                features,
            )
    kn.compute_rows(x, k, refs, others, columns, features)
    return True, n, rid_start, rid_len, explain, x, k, text_start, text_len, err, first, count, features


def prepare_request(
    raw: bytes, tables: WireTables, plan: FeaturePlan, max_trades: int
) -> tuple[WireRequest, F32]:
    """Decode, validate and compute the features of a ScoreRequest in one compiled call.

    The same result and the same errors, in the same order, as `decode_request`,
    then `engine.features.validate.validate_rows`, then `plan.compute_rows`:
    one call from Python instead of four, no intermediate array made in Python.
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    ok, n, rid_start, rid_len, explain, x, k, text_start, text_len, err, first, count, features = (
        prepare_trades(
            buf,
            max_trades,
            tables.blob,
            tables.offsets,
            tables.owner,
            tables.value,
            tables.slots,
            LIMITS,
            plan.refs_values,
            plan.others,
            plan.columns,
            plan.width,
        )
    )
    request = WireRequest(
        buf, TradeRows(x, k), text_start, text_len, (int(rid_start), int(rid_len)), int(explain)
    )
    if ok and explain in EXPLAIN_VALUES:  # the common case: nothing to report
        return request, features
    # in the order decode_request and validate_rows report them
    _count_errors(int(n))
    check_count(int(n), max_trades)
    _check_explain(int(explain))
    _decode_errors(request, err)
    raise_first_problem(first, count)
    return request, features


#: the values of tradescore.v1.Explain this engine knows
EXPLAIN_VALUES = frozenset(pb.Explain.values())


def _check_explain(explain: int) -> None:
    if explain not in EXPLAIN_VALUES:
        got = str(explain) if explain < 256 else ">= 256"
        raise InvalidInput("explain", f"is not a tradescore.v1.Explain value (got {got})")


def trade_count(raw: bytes) -> int:
    """How many trades a ScoreRequest's bytes hold (top level only; < 0: the bytes are malformed)."""
    return int(count_trades(np.frombuffer(raw, dtype=np.uint8))[0])


def _count_errors(n: int) -> None:
    if n == -1:
        raise MalformedRequest("request", "is not a valid tradescore.v1.ScoreRequest (malformed bytes)")
    if n == -2:
        raise InvalidInput("request_id", "is not valid UTF-8")


def _decode_errors(request: WireRequest, err: I64) -> None:
    """Raise the InvalidInput `decode_trades` recorded in `err`, if any."""
    kind, field, index, count = (int(v) for v in err)
    if kind == E_MALFORMED:
        raise _malformed(index, field)
    if kind == E_UTF8:
        raise InvalidInput(TRADE_FIELDS[field], "is not valid UTF-8", index, count)
    if kind == E_DATE:
        got = request.text(index, int(FIELD_COLUMN[field]))
        raise InvalidInput(
            TRADE_FIELDS[field], f"must be a calendar date YYYY-MM-DD, got {got[:40]!r}", index, count
        )
    if kind == E_NAN:
        reason = "is NaN; leave the field unset when the value is unknown"
        raise InvalidInput(TRADE_FIELDS[field], reason, index, count)


def decode_request(raw: bytes, tables: WireTables, max_trades: int) -> WireRequest:
    """Decode ScoreRequest bytes into rows resolved against `tables`.

    Raises InvalidInput for malformed bytes, a trade count outside
    1..max_trades (checked before any trade is decoded), invalid UTF-8, a date
    that is not YYYY-MM-DD, and an optional number set to NaN. Everything else
    is for `engine.features.validate.validate_rows`.
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    counted, rid_start, rid_len, explain = count_trades(buf)
    n = int(counted)
    _count_errors(n)
    check_count(n, max_trades)
    _check_explain(int(explain))
    rows = TradeRows.empty(n)
    text_start = np.empty((n, N_TEXT), dtype=np.int64)
    text_len = np.empty((n, N_TEXT), dtype=np.int64)
    err = np.zeros(4, dtype=np.int64)
    decode_trades(
        buf,
        rows.x,
        rows.k,
        text_start,
        text_len,
        tables.blob,
        tables.offsets,
        tables.owner,
        tables.value,
        tables.slots,
        err,
    )
    request = WireRequest(buf, rows, text_start, text_len, (int(rid_start), int(rid_len)), int(explain))
    _decode_errors(request, err)
    return request
