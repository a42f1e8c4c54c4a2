"""ScoreResponse bytes from the request's bytes and the model's probabilities, in compiled code.

Trade ids are copied from where they are in the request (`WireRequest`'s text spans) straight into
the response; risk bands come from the model's band edges. The bytes are laid out as the protobuf
runtime serializes the message (tests/test_wire.py checks them byte for byte).
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from engine.jit import Int, compiled
from engine.labels import band_of
from engine.scoring.protowire import WT_I64, WT_LEN, WT_VARINT, put_bytes, varint_size
from engine.scoring.trade_layout import T_TRADE_ID
from engine.scoring.wire import WireRequest

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


@compiled
def encode_response(
    buf: U8,
    rid_start: Int,
    rid_len: Int,
    text_start: I64,
    text_len: I64,
    probabilities: npt.NDArray[np.float32],
    band_edges: npt.NDArray[np.float64],
    name: U8,
    version: U8,
) -> U8:
    """ScoreResponse bytes, laid out as the protobuf runtime serializes them (fields in number order).

    Each trade's risk band is `engine.models.spec.band_of` its probability.
    """
    id_start = text_start[:, T_TRADE_ID]
    id_len = text_len[:, T_TRADE_ID]
    n = probabilities.shape[0]
    probs = probabilities.astype(np.float64)
    bits = probs.view(np.uint64)
    bands = np.empty(n, dtype=np.int64)
    for i in range(n):
        bands[i] = band_of(probs[i], band_edges)
    size: Int = 0
    if rid_len:
        size += 1 + varint_size(rid_len) + rid_len
    inner = np.zeros(n, dtype=np.int64)  # each TradeScore's size (zero values are not written)
    for i in range(n):
        if id_len[i]:
            inner[i] += 1 + varint_size(id_len[i]) + id_len[i]
        if bits[i] != 0:
            inner[i] += 9
        if bands[i] != 0:
            inner[i] += 1 + varint_size(bands[i])
        size += 1 + varint_size(inner[i]) + inner[i]
    if name.shape[0]:
        size += 1 + varint_size(name.shape[0]) + name.shape[0]
    if version.shape[0]:
        size += 1 + varint_size(version.shape[0]) + version.shape[0]
    out = np.empty(size, dtype=np.uint8)
    raw = probs.view(np.uint8)
    p = put_bytes(out, 0, 1, buf, rid_start, rid_len)
    for i in range(n):  # written out: helper calls would pass `out` and `buf` per field
        out[p] = (2 << 3) | WT_LEN
        p += 1
        v = inner[i]
        while v >= 0x80:
            out[p] = (v & 0x7F) | 0x80
            v >>= 7
            p += 1
        out[p] = v
        p += 1
        length = id_len[i]
        if length:
            out[p] = (1 << 3) | WT_LEN
            p += 1
            v = length
            while v >= 0x80:
                out[p] = (v & 0x7F) | 0x80
                v >>= 7
                p += 1
            out[p] = v
            p += 1
            s0 = id_start[i]
            for j in range(length):
                out[p + j] = buf[s0 + j]
            p += length
        if bits[i] != 0:
            out[p] = (2 << 3) | WT_I64
            for j in range(8):
                out[p + 1 + j] = raw[8 * i + j]
            p += 9
        if bands[i] != 0:
            out[p] = (3 << 3) | WT_VARINT
            p += 1
            v = bands[i]
            while v >= 0x80:
                out[p] = (v & 0x7F) | 0x80
                v >>= 7
                p += 1
            out[p] = v
            p += 1
    p = put_bytes(out, p, 3, name, 0, name.shape[0])
    p = put_bytes(out, p, 4, version, 0, version.shape[0])
    return out


@functools.lru_cache(maxsize=64)
def _u8(text: bytes) -> U8:
    """`text` as a uint8 array (model names and versions: a few per process)."""
    return np.frombuffer(text, dtype=np.uint8)


def response_bytes(
    request: WireRequest,
    probabilities: npt.NDArray[np.float32],
    band_edges: npt.NDArray[np.float64],
    name: bytes,
    version: bytes,
) -> bytes:
    """The serialized ScoreResponse for `request` (trade ids copied from the request bytes; risk
    bands from `band_edges`, the model's `RiskBands.edges`)."""
    if probabilities.dtype != np.float32 or not probabilities.flags.c_contiguous:
        probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    rid_start, rid_len = request.request_id
    out = encode_response(
        request.buf,
        rid_start,
        rid_len,
        request.text_start,
        request.text_len,
        probabilities,
        band_edges,
        _u8(name),
        _u8(version),
    )
    return out.tobytes()
