"""A loaded bundle plus everything derived from it once: what one batch runs on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.features.columns import TradeColumns
from engine.features.compute import FeaturePlan
from engine.models.bundle import ModelBundle
from engine.scoring.wire import WireTables, prepare_request, response_bytes


@dataclass(frozen=True, slots=True, eq=False)
class ServingModel:
    bundle: ModelBundle
    plan: FeaturePlan
    #: the plan's look-up keys for the compiled request decoder
    wire: WireTables
    name_bytes: bytes = field(init=False)
    version_bytes: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name_bytes", self.bundle.name.encode("utf-8"))
        object.__setattr__(self, "version_bytes", self.bundle.version.encode("utf-8"))

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def band_edges(self) -> npt.NDArray[np.float64]:
        """The risk band thresholds, for the compiled encoder and the score metrics."""
        return self.bundle.manifest.risk_bands.edges

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def loaded_at(self) -> float:
        return self.bundle.loaded_at

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Failure probabilities for a feature matrix (one ONNX Runtime call)."""
        return self.bundle.predict(features)

    def score(self, trades: TradeColumns) -> npt.NDArray[np.float32]:
        """Failure probabilities for validated table trades, in process: features, then the model."""
        return self.bundle.predict(self.plan.compute(trades))


def _warm_up(model: ServingModel) -> None:
    """Run one request through every compiled step, so no caller waits for a compile.

    numba compiles each kernel on first use (seconds) and caches the machine code
    on disk (NUMBA_CACHE_DIR, else __pycache__ next to the sources): with a warm
    cache this takes milliseconds.
    """
    trade = pb.Trade(
        trade_id="warm-up",
        account_id="A",
        counterparty_id="C",
        instrument_id="I",
        asset_class=pb.ASSET_CLASS_EQUITY,
        side=pb.SIDE_BUY,
        quantity=1.0,
        price=1.0,
        currency="USD",
        trade_date="2026-01-02",
        settlement_date="2026-01-06",
        settlement_venue="V",
        inventory_ratio=1.0,
    )
    raw = pb.ScoreRequest(request_id="w", trades=[trade]).SerializeToString()
    request, features = prepare_request(raw, model.wire, model.plan, 1)
    probabilities = model.predict(features)
    response_bytes(request, probabilities, model.band_edges, model.name_bytes, model.version_bytes)


def load_serving_model(path: Path, intra_op_threads: int = 1) -> ServingModel:
    """Load a bundle, check its feature spec against the catalog (BundleError if not servable), warm up."""
    bundle = ModelBundle.load(path, intra_op_threads=intra_op_threads)
    plan = FeaturePlan(bundle.manifest.features, bundle.references)
    model = ServingModel(bundle, plan, WireTables.build(plan))
    _warm_up(model)
    return model
