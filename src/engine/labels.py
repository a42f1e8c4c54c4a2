"""Names of what the engine tells apart, for every layer: risk bands and sync-break classes.

Both are enums of the contract (`tradescore.v1.RiskBand`, `tradescore.v1.BreakClass`),
named here without their prefix; metrics label series by them, settings name them
(`--explain-band`, `--break-autonomy`), bundles give a threshold per band. They sit
at the bottom of the layers (../shared/ARCHITECTURE.md, tests/test_layers.py) so
that `engine.metrics` and `engine.config` read them without importing `engine.models`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.jit import compiled

#: band names in ascending order of risk (tradescore.v1.RiskBand 1..4); LOW has no threshold
BAND_NAMES: tuple[str, ...] = tuple(
    v.name.removeprefix("RISK_BAND_") for v in pb.RiskBand.DESCRIPTOR.values if v.number != 0
)
#: BreakScorer break classes, as the engine_pair_breaks label spells them (the proto enum without prefix)
BREAK_CLASSES = ("MISSING", "STATUS", "VALUE", "STATIC_DATA", "NONE")
if set(BREAK_CLASSES) != {v.name.removeprefix("BREAK_CLASS_") for v in pb.BreakClass.DESCRIPTOR.values} - {
    "UNSPECIFIED"
}:
    raise ImportError(f"engine.labels.BREAK_CLASSES {BREAK_CLASSES} differ from tradescore.v1.BreakClass")


@compiled
def band_of(probability: float, edges: npt.NDArray[np.float64]) -> int:
    """The risk band number of one probability: 1 + how many of the rising `edges` are at or
    below it, NaN in the top band; what `engine.models.spec.RiskBands.assign` computes with
    np.searchsorted, for compiled callers (the response encoder, the score metrics)."""
    if probability != probability:
        return int(edges.shape[0]) + 1
    band = 1
    for e in edges:
        if e <= probability:
            band += 1
    return band
