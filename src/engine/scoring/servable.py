"""A loaded bundle plus its checked feature plan: what one batch runs on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.features.columns import TradeColumns
from engine.features.compute import FeaturePlan
from engine.models.bundle import ModelBundle


@dataclass(frozen=True, slots=True, eq=False)
class ServingModel:
    bundle: ModelBundle
    plan: FeaturePlan

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
        return self.bundle.predict(features)

    def score(self, trades: TradeColumns) -> npt.NDArray[np.float32]:
        """Failure probabilities for validated trades: features, then the model (one batch)."""
        return self.bundle.predict(self.plan.compute(trades))


def load_serving_model(path: Path, intra_op_threads: int = 1) -> ServingModel:
    """Load a bundle and check its feature spec against the catalog (BundleError if not servable)."""
    bundle = ModelBundle.load(path, intra_op_threads=intra_op_threads)
    return ServingModel(bundle, FeaturePlan(bundle.manifest.features, bundle.references))
