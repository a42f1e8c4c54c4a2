"""Trade reasons on the wire: `ScoreResponse.reasons`, serialized in one compiled call.

Explained trades come back as a ScoreResponse holding only `reasons` (field 6),
appended to the compiled encoder's scores: protobuf merges two serialized
messages of one type, so the client sees one response. Each `TradeReasons`
carries the trade's index and id, up to `REASONS_PER_TRADE` `Reason`s (its
features with the largest positive TreeSHAP contributions, largest first) and
the base log-odds.

`encode_reasons` writes the bytes from fragments made once per bundle
(`ReasonFields`: each feature's serialized `code` field, each category's
`category` field), in the field order and with the defaults the protobuf
runtime writes (tests/test_reasons.py checks the bytes against it): about a
tenth of the time of building the messages in Python (docs/design-figures.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.jit import Int, compiled
from engine.scoring.protowire import put_varint, varint_size
from engine.scoring.trade_layout import T_TRADE_ID
from engine.scoring.wire import WireRequest

#: reasons per explained trade: the features with the largest positive contributions
REASONS_PER_TRADE = 3

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def text_field(number: int, text: str) -> bytes:
    """A proto3 string field as the runtime writes it: tag, length, UTF-8; nothing when empty."""
    raw = text.encode("utf-8")
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw if raw else b""


def _blob(parts: Sequence[bytes]) -> tuple[U8, I64]:
    """Byte strings laid end to end, and where each starts (one more entry: the end)."""
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    return np.frombuffer(b"".join(parts), dtype=np.uint8).copy(), offsets


@dataclass(frozen=True, slots=True, eq=False)
class ReasonFields:
    """A bundle's reason codes and categories as serialized fields, for `encode_reasons`."""

    codes: U8  # feature j's Reason.code field: codes[code_at[j]:code_at[j + 1]]
    code_at: I64
    categories: U8  # category c of feature j: entry category_first[j] + c of category_at
    category_at: I64
    category_first: I64  # [features + 1]: feature j's categories are entries first[j]..first[j + 1]

    @staticmethod
    def build(codes: Sequence[str], categories: Sequence[Sequence[str]]) -> ReasonFields:
        code_blob, code_at = _blob([text_field(1, code) for code in codes])
        fields = [text_field(4, name) for names in categories for name in names]
        category_blob, category_at = _blob(fields)
        first = np.zeros(len(categories) + 1, dtype=np.int64)
        first[1:] = np.cumsum([len(names) for names in categories])
        return ReasonFields(code_blob, code_at, category_blob, category_at, first)


def reasons_bytes(
    request: WireRequest,
    rows: npt.NDArray[np.intp],
    features: F32,
    contributions: F64,
    fields: ReasonFields,
    base_log_odds: float,
) -> bytes:
    """ScoreResponse.reasons of the trades `rows` (a ScoreResponse with that field only).

    The top reasons are found for all rows at once (argsort on the whole [rows, features]
    matrix); each feature value is written as the shortest decimal that reads back as the
    float32 the model saw (0.6, not 0.6000000238418579).
    """
    top = np.ascontiguousarray(np.argsort(-contributions, axis=1, kind="stable")[:, :REASONS_PER_TRADE])
    top_contribution = np.ascontiguousarray(np.take_along_axis(contributions, top, axis=1))
    values = np.take_along_axis(features, top, axis=1)
    shown = top_contribution > 0.0  # only positive contributions are reasons
    top_value = np.zeros(values.shape, dtype=np.float64)
    top_value[shown] = [float(str(v)) for v in values[shown]]
    out = encode_reasons(
        request.buf,
        request.text_start,
        request.text_len,
        np.ascontiguousarray(rows, dtype=np.int64),
        top,
        top_contribution,
        top_value,
        fields.codes,
        fields.code_at,
        fields.categories,
        fields.category_at,
        fields.category_first,
        np.float64(base_log_odds),
    )
    return out.tobytes()


@compiled
def _double_into(out: U8, p: Int, tag: Int, value: float) -> Int:
    """A proto3 double field (fixed64): nothing when its bits are all zero (+0.0), as the runtime."""
    bits = np.array([value], dtype=np.float64).view(np.uint64)[0]
    if bits == 0:
        return p
    out[p] = tag
    for b in range(8):
        out[p + 1 + b] = (bits >> np.uint64(8 * b)) & np.uint64(0xFF)
    return p + 9


@compiled
def encode_reasons(
    buf: U8,
    text_start: I64,
    text_len: I64,
    rows: I64,
    top: I64,
    top_contribution: F64,
    top_value: F64,
    codes: U8,
    code_at: I64,
    categories: U8,
    category_at: I64,
    category_first: I64,
    base: float,
) -> U8:
    """ScoreResponse bytes holding `reasons` only (field 6): one TradeReasons per row of `rows`.

    TradeReasons: trade_index (1, varint, left out when 0), trade_id (2, copied from the request
    bytes), reasons (3, the Reasons with a positive contribution, in `top` order),
    base_log_odds (4, fixed64). Reason: code (1), value (2), contribution (3), category (4,
    for a categorical feature whose value indexes a category).
    """
    m = rows.shape[0]
    k = top.shape[1]
    # sizes first: each Reason, each TradeReasons, the whole
    reason_len = np.zeros((m, k), dtype=np.int64)
    entry_len = np.zeros(m, dtype=np.int64)
    base_len = 0 if np.array([base], dtype=np.float64).view(np.uint64)[0] == 0 else 9
    total: Int = 0
    for i in range(m):
        row = rows[i]
        size: Int = 0
        if row != 0:
            size += 1 + varint_size(row)
        id_len = text_len[row, T_TRADE_ID]
        if id_len:
            size += 1 + varint_size(id_len) + id_len
        for r in range(k):
            c = top_contribution[i, r]
            if not c > 0.0:
                break
            j = top[i, r]
            n: Int = code_at[j + 1] - code_at[j]
            if np.array([top_value[i, r]], dtype=np.float64).view(np.uint64)[0] != 0:
                n += 9
            n += 9  # the contribution, > 0
            v = top_value[i, r]
            count = category_first[j + 1] - category_first[j]
            if count > 0 and v > -1.0 and v < count:  # as Python's 0 <= int(v) < count
                e = category_first[j] + int(v)
                n += category_at[e + 1] - category_at[e]
            reason_len[i, r] = n
            size += 1 + varint_size(n) + n
        size += base_len
        entry_len[i] = size
        total += 1 + varint_size(size) + size
    out = np.empty(total, dtype=np.uint8)
    p: Int = 0
    for i in range(m):
        row = rows[i]
        out[p] = (6 << 3) | 2
        p = put_varint(out, p + 1, entry_len[i])
        if row != 0:
            out[p] = (1 << 3) | 0
            p = put_varint(out, p + 1, row)
        id_len = text_len[row, T_TRADE_ID]
        if id_len:
            out[p] = (2 << 3) | 2
            p = put_varint(out, p + 1, id_len)
            s0 = text_start[row, T_TRADE_ID]
            for b in range(id_len):
                out[p + b] = buf[s0 + b]
            p += id_len
        for r in range(k):
            c = top_contribution[i, r]
            if not c > 0.0:
                break
            j = top[i, r]
            out[p] = (3 << 3) | 2
            p = put_varint(out, p + 1, reason_len[i, r])
            for b in range(code_at[j], code_at[j + 1]):
                out[p] = codes[b]
                p += 1
            p = _double_into(out, p, (2 << 3) | 1, top_value[i, r])
            p = _double_into(out, p, (3 << 3) | 1, c)
            v = top_value[i, r]
            count = category_first[j + 1] - category_first[j]
            if count > 0 and v > -1.0 and v < count:  # as Python's 0 <= int(v) < count
                e = category_first[j] + int(v)
                for b in range(category_at[e], category_at[e + 1]):
                    out[p] = categories[b]
                    p += 1
        p = _double_into(out, p, (4 << 3) | 1, base)
    return out
