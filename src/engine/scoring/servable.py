"""A loaded bundle plus everything derived from it once: what one batch runs on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.features.columns import TradeColumns
from engine.features.compute import FeaturePlan
from engine.models.bundle import ModelBundle
from engine.scoring.wire import WireTables


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


def load_serving_model(path: Path, intra_op_threads: int = 1) -> ServingModel:
    """Load a bundle and check its feature spec against the catalog (BundleError if not servable)."""
    bundle = ModelBundle.load(path, intra_op_threads=intra_op_threads)
    plan = FeaturePlan(bundle.manifest.features, bundle.references)
    return ServingModel(bundle, plan, WireTables.build(plan))
