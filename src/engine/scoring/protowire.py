"""The protobuf wire format, in compiled pieces: what the decoder and the encoders of the hot path share.

Reading: varints, skipping fields of every wire type as upb skips unknown fields (groups must close
in order, within upb's nesting limit), UTF-8 validation as protobuf checks `string` fields.
Writing: varint sizes, varints, length-delimited fields. `engine.scoring.wire` (ScoreRequest bytes
in), `engine.scoring.response` (ScoreResponse bytes out) and `engine.scoring.reasons` (TradeReasons
bytes out) are built on them; tests/test_wire.py checks them against the protobuf runtime.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.jit import Int, compiled

U8 = npt.NDArray[np.uint8]

# wire types
#: the largest field number protobuf allows (2^29 - 1); a tag beyond it is malformed, as upb says
MAX_FIELD = 536_870_911
WT_VARINT = 0
WT_I64 = 1
WT_LEN = 2
WT_SGROUP = 3
WT_EGROUP = 4
WT_I32 = 5
#: how deep messages and groups may nest, counted from the top-level message (upb's default
#: limit: a ScoreRequest may hold 100 nested unknown groups, a Trade inside it 99)
DEPTH_LIMIT = 100


@compiled
def read_varint(buf: U8, p: Int, end: Int) -> tuple[np.uint64, Int]:
    """(value, next position); next position -1 when the varint is truncated or too long."""
    result = np.uint64(0)
    shift = np.uint64(0)
    while p < end:
        b = buf[p]
        p += 1
        if shift < 64:
            result |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += np.uint64(7)
        if shift >= 70:
            return result, -1
    return result, -1


@compiled
def skip_scalar(buf: U8, p: Int, end: Int, wire: Int) -> Int:
    """Position after a field's value of `wire` type (not a group); -1 when malformed."""
    if wire == WT_VARINT:
        _, p = read_varint(buf, p, end)
        return p
    if wire == WT_I64:
        return p + 8 if p + 8 <= end else -1
    if wire == WT_I32:
        return p + 4 if p + 4 <= end else -1
    if wire == WT_LEN:
        n, p = read_varint(buf, p, end)
        if p < 0 or n > np.uint64(end - p):
            return -1
        return p + np.int64(n)
    return -1  # groups (3, 4) and undefined wire types (6, 7)


@compiled
def skip_group(buf: U8, p: Int, end: Int, field: Int, depth: Int) -> Int:
    """Position after the end tag of group `field` whose start tag ends at p; -1 when malformed.

    As upb skips an unknown group: what it holds is skipped field by field, groups
    nested in it must close in order with their own field number, and nesting
    beyond `DEPTH_LIMIT` (`depth`: how deep the group's message already is) is malformed.
    """
    if depth + 1 > DEPTH_LIMIT:
        return -1
    open_fields = np.empty(DEPTH_LIMIT - depth, dtype=np.int64)  # the open groups, innermost last
    open_fields[0] = field
    top = 0
    while p < end:
        tag, p = read_varint(buf, p, end)
        if p < 0:
            return -1
        f = np.int64(tag >> np.uint64(3))
        w = np.int64(tag & np.uint64(7))
        if f > MAX_FIELD:  # (field 0 is refused in a message, but upb lets it pass inside a group)
            return -1
        if w == WT_EGROUP:
            if f != open_fields[top]:
                return -1
            if top == 0:
                return p
            top -= 1
        elif w == WT_SGROUP:
            top += 1
            if top >= open_fields.shape[0]:
                return -1
            open_fields[top] = f
        else:
            p = skip_scalar(buf, p, end, w)
            if p < 0:
                return -1
    return -1  # the group never closed


@compiled
def skip_field(buf: U8, p: Int, end: Int, wire: Int, field: Int, depth: Int) -> Int:
    """Position after an unknown field's value (field `field`, `wire` type, in a message `depth`
    levels deep); -1 when malformed. An end-group tag with no group open is malformed."""
    if wire == WT_SGROUP:
        return skip_group(buf, p, end, field, depth)
    return skip_scalar(buf, p, end, wire)


@compiled
def utf8_sequence(buf: U8, p: Int, end: Int) -> Int:
    """Length of the valid multi-byte UTF-8 sequence starting at buf[p]; 0 when it is not one."""
    b = buf[p]
    if 0xC2 <= b <= 0xDF:
        if p + 1 >= end or (buf[p + 1] & 0xC0) != 0x80:
            return 0
        return 2
    if 0xE0 <= b <= 0xEF:
        if p + 2 >= end or (buf[p + 1] & 0xC0) != 0x80 or (buf[p + 2] & 0xC0) != 0x80:
            return 0
        if b == 0xE0 and buf[p + 1] < 0xA0:  # overlong
            return 0
        if b == 0xED and buf[p + 1] >= 0xA0:  # surrogates
            return 0
        return 3
    if 0xF0 <= b <= 0xF4:
        if p + 3 >= end or (buf[p + 1] & 0xC0) != 0x80:
            return 0
        if (buf[p + 2] & 0xC0) != 0x80 or (buf[p + 3] & 0xC0) != 0x80:
            return 0
        if b == 0xF0 and buf[p + 1] < 0x90:  # overlong
            return 0
        if b == 0xF4 and buf[p + 1] >= 0x90:  # above U+10FFFF
            return 0
        return 4
    return 0


@compiled
def utf8_chars(buf: U8, start: Int, length: Int) -> Int:
    """Characters in buf[start:start+length], or -1 when it is not valid UTF-8."""
    p = start
    end = start + length
    chars = 0
    while p < end:
        if buf[p] < 0x80:
            p += 1
        else:
            size = utf8_sequence(buf, p, end)
            if size == 0:
                return -1
            p += size
        chars += 1
    return chars


@compiled
def varint_size(v: Int) -> Int:
    size = 1
    while v >= 0x80:
        v >>= 7
        size += 1
    return size


@compiled
def put_varint(out: U8, p: Int, v: Int) -> Int:
    while v >= 0x80:
        out[p] = (v & 0x7F) | 0x80
        v >>= 7
        p += 1
    out[p] = v
    return p + 1


@compiled
def put_bytes(out: U8, p: Int, field: Int, src: U8, start: Int, length: Int) -> Int:
    if length == 0:
        return p
    out[p] = (field << 3) | WT_LEN
    p = put_varint(out, p + 1, length)
    out[p : p + length] = src[start : start + length]
    return p + length
