#!/usr/bin/env python
"""Coverage-guided fuzzing (atheris, libFuzzer) of the engine's request paths.

Each input is either (first byte even) raw bytes handed to the compiled
`ScoreRequest` decoder and validators and to the `ScorePairsRequest` reading, or
(first byte odd) a recipe: a valid request from the synthetic pool with fields
of some trades overwritten by values the fuzzer chooses (any double, any enum
number, any text, dates included), so the validators see well-formed messages
with hostile content, not only broken bytes.

A request must end in a result or `InvalidInput`; anything else is a crash
(libFuzzer writes the input to `crash-*` and exits non-zero). A request the
decoder accepts must hold only trades the plain rules accept too, and give
finite features.

    .venv/bin/python tests/fuzz/fuzz_request.py -max_total_time=60 CORPUS_DIR
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from engine.features.pairs import PairColumns

import numpy as np  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

from engine._proto.tradescore.v1 import tradescore_pb2 as pb  # noqa: E402
from engine.errors import InvalidInput  # noqa: E402
from engine.models.bundle import DEFAULT_BUNDLE  # noqa: E402
from engine.scoring.servable import load_serving_model  # noqa: E402
from engine.scoring.trade_layout import TRADE_FIELDS
from engine.scoring.wire import prepare_request  # noqa: E402
from tests.conftest import sample_request  # noqa: E402

MAX_TRADES = 100
MODEL = load_serving_model(DEFAULT_BUNDLE)
POOL = sample_request(40, seed=17)
FIELD_NAMES = sorted(TRADE_FIELDS.values())


def _refused(exc: InvalidInput) -> None:
    """Coverage for each kind of refusal (field and reason), so the fuzzer keeps inputs that reach
    new ones: the compiled decoder itself gives libFuzzer no coverage to follow."""
    for field in FIELD_NAMES:
        if exc.field == field:
            break
    if "trades" in exc.reason or "malformed" in exc.reason:
        return


def _score(raw: bytes) -> None:
    try:
        request, features = prepare_request(raw, MODEL.wire, MODEL.plan, MAX_TRADES)
    except InvalidInput as exc:
        _refused(exc)
        return
    if not np.isfinite(features[~np.isnan(features)]).all():
        raise AssertionError(f"an infinite feature from {raw!r}")
    parsed = pb.ScoreRequest.FromString(raw)  # what the engine accepted, the runtime must parse
    for t in parsed.trades:
        if not (t.trade_id and 0 < t.quantity <= 1e15 and 0 < t.price <= 1e12):
            raise AssertionError(f"accepted an invalid trade: {t}")


def _pairs(raw: bytes) -> None:
    try:
        request = pb.ScorePairsRequest.FromString(raw)
    except DecodeError:
        return
    try:
        PairColumns.from_messages(list(request.pairs))
    except InvalidInput:
        pass


def _recipe(fdp: atheris.FuzzedDataProvider) -> bytes:
    request = pb.ScoreRequest()
    request.CopyFrom(POOL)
    del request.trades[fdp.ConsumeIntInRange(1, len(POOL.trades)) :]
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        trade = request.trades[fdp.ConsumeIntInRange(0, len(request.trades) - 1)]
        name = FIELD_NAMES[fdp.ConsumeIntInRange(0, len(FIELD_NAMES) - 1)]
        field = pb.Trade.DESCRIPTOR.fields_by_name[name]
        if fdp.ConsumeBool():
            trade.ClearField(name)
        elif field.type == field.TYPE_STRING:
            setattr(trade, name, fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300)))
        elif field.type == field.TYPE_DOUBLE:
            value = (
                fdp.ConsumeRegularFloat()
                if fdp.ConsumeBool()
                else fdp.PickValueInList(
                    [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1.7976931348623157e308]
                )
            )
            setattr(trade, name, value)
        elif field.type == field.TYPE_ENUM:
            setattr(trade, name, fdp.ConsumeIntInRange(-(2**31), 2**31 - 1))
        elif field.type == field.TYPE_BOOL:
            setattr(trade, name, fdp.ConsumeBool())
        else:
            setattr(trade, name, fdp.ConsumeIntInRange(0, 2**32 - 1))
    return request.SerializeToString()


def request_bytes(data: bytes) -> bytes:
    """The request an input stands for: its bytes after the first, or the recipe they spell."""
    if data and data[0] & 1:
        return _recipe(atheris.FuzzedDataProvider(data[1:]))
    return data[1:]


def one_input(data: bytes) -> None:
    raw = request_bytes(data)
    _score(raw)
    _pairs(raw)


# coverage of the harness's own branches (the engine's compiled decoder gives libFuzzer none)
for _name in ("_refused", "_score", "_pairs", "_recipe"):
    globals()[_name] = atheris.instrument_func(globals()[_name])


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
