"""Which Trade field is which, for the compiled decoder: its tables, built from the descriptor.

The decoder (`engine.scoring.wire`) reads tables indexed by field number. They are built here from
`pb.Trade.DESCRIPTOR` (field numbers, types, presence) and from where `engine.features.rows` puts
each field (X_FIELDS, K_FIELDS, LENGTH_FIELDS, LOOKUP_FIELDS): nothing names a field by its
number, and a field added to the proto that no table maps stops the import (`trade_layout`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.features.rows import K_FIELDS, LENGTH_FIELDS, LOOKUP_FIELDS, X_FIELDS

I64 = npt.NDArray[np.int64]

_FD = descriptor.FieldDescriptor
#: how the decoder stores a field's value (FIELD_KIND), by the field's protobuf type
KIND_NONE = 0  # not a Trade field: skipped as unknown
KIND_TEXT = 1  # string: its span (FIELD_COLUMN: the text slot), checked and resolved later
KIND_ENUM = 2  # enum: the number as an int32, in k (FIELD_COLUMN: the k column)
KIND_UINT32 = 3  # uint32: in x
KIND_BOOL = 4  # bool: 1.0 / 0.0 in x
KIND_DOUBLE = 5  # double without presence: in x as it is
KIND_OPTIONAL_DOUBLE = 6  # optional double: in x; NaN refused (unset is the way to say unknown)
_KIND_OF_TYPE = {
    _FD.TYPE_STRING: KIND_TEXT,
    _FD.TYPE_ENUM: KIND_ENUM,
    _FD.TYPE_UINT32: KIND_UINT32,
    _FD.TYPE_BOOL: KIND_BOOL,
    _FD.TYPE_DOUBLE: KIND_DOUBLE,
}
#: Trade field number -> name (for error messages)
TRADE_FIELDS: dict[int, str] = {f.number: f.name for f in pb.Trade.DESCRIPTOR.fields}


def trade_layout(trade: descriptor.Descriptor) -> tuple[tuple[str, ...], I64, I64, I64, I64, I64, I64]:
    """The decoder's tables for the message `trade` (tradescore.v1.Trade) from its descriptor:
    (TEXT_FIELDS, FIELD_KIND, FIELD_COLUMN, SLOT_FIELD, SLOT_LENGTH, SLOT_DAY, SLOT_LOOKUP).

    Raises ImportError for a field the decoder cannot store: a type it does not
    read, a repeated or message field, or a field `engine.features.rows` maps nowhere.
    """
    fields = sorted(trade.fields, key=lambda f: f.number)
    text_fields = tuple(f.name for f in fields if f.type == _FD.TYPE_STRING)
    n_text = len(text_fields)
    top = max(f.number for f in fields)
    kind = np.zeros(top + 1, dtype=np.int64)
    column = np.full(top + 1, -1, dtype=np.int64)
    slot_field = np.zeros(n_text, dtype=np.int64)
    slot_length = np.full(n_text, -1, dtype=np.int64)
    slot_day = np.full(n_text, -1, dtype=np.int64)
    slot_lookup = np.full((n_text, 2), -1, dtype=np.int64)
    for f in fields:
        where = f"{trade.full_name}.{f.name} (field {f.number})"
        k = _KIND_OF_TYPE.get(f.type)
        if k is None or f.is_repeated:
            raise ImportError(
                f"engine.scoring.wire cannot decode {where}: type {f.type}, repeated {f.is_repeated}"
            )
        if k == KIND_DOUBLE and f.has_presence:
            k = KIND_OPTIONAL_DOUBLE
        kind[f.number] = k
        if k == KIND_TEXT:
            t = text_fields.index(f.name)
            column[f.number] = t
            slot_field[t] = f.number
            slot_length[t] = LENGTH_FIELDS.get(f.name, -1)
            slot_day[t] = X_FIELDS.get(f.name, -1)
            looked_up = [c for c, name in LOOKUP_FIELDS.items() if name == f.name]
            if len(looked_up) > slot_lookup.shape[1]:
                raise ImportError(f"{where} is resolved in {len(looked_up)} k columns; the decoder takes 2")
            slot_lookup[t, : len(looked_up)] = looked_up
            if slot_length[t] < 0 and slot_day[t] < 0:
                raise ImportError(f"{where}: engine.features.rows keeps neither its length nor its date")
        elif k == KIND_ENUM:
            if f.name not in K_FIELDS:
                raise ImportError(f"{where}: no k column in engine.features.rows.K_FIELDS")
            column[f.number] = K_FIELDS[f.name]
        else:
            if f.name not in X_FIELDS:
                raise ImportError(f"{where}: no x column in engine.features.rows.X_FIELDS")
            column[f.number] = X_FIELDS[f.name]
    return text_fields, kind, column, slot_field, slot_length, slot_day, slot_lookup


#: the text fields, in field-number order: text slot t (a column of the span arrays) is TEXT_FIELDS[t];
#: per Trade field number: how its value is stored (KIND_*), and in which column (x, k or text slot)
#: per text slot: its field number, the k column of its length, the x column of its date, and
#: the k columns it is resolved in (reference rows, vocabulary codes; -1: none)
TEXT_FIELDS, FIELD_KIND, FIELD_COLUMN, SLOT_FIELD, SLOT_LENGTH, SLOT_DAY, SLOT_LOOKUP = trade_layout(
    pb.Trade.DESCRIPTOR
)
N_TEXT = len(TEXT_FIELDS)
T_TRADE_ID = TEXT_FIELDS.index("trade_id")
#: x columns of the numbers without presence (proto3 zero when not sent; the rest start NaN, unset),
#: and the k columns of the enums (zero when not sent)
ZERO_X = np.array(
    [
        FIELD_COLUMN[f.number]
        for f in pb.Trade.DESCRIPTOR.fields
        if not f.has_presence and FIELD_KIND[f.number] in (KIND_UINT32, KIND_BOOL, KIND_DOUBLE)
    ],
    dtype=np.int64,
)
ZERO_K = np.array(
    [c for f, c in zip(FIELD_KIND, FIELD_COLUMN, strict=True) if f == KIND_ENUM], dtype=np.int64
)
