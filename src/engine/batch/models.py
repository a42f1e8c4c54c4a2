"""The pair model a discovery runs: the bundle's (what `ScorePairs` serves) or a forest fitted on the data.

Tasks get a `PairModelRef`, small and picklable, and load the model once per worker process
(`load`, cached): the bundle through `PairModel.load` (its hashes, golden rows and all), a fitted
forest from its ONNX bytes. Phase 1 of a reconciliation has no labels, so `fit_on_sample` fits
an IsolationForest on a sample of the pairs themselves (`engine.training.pairs.forest_to_onnx`
exports it as the bundle's forest is exported) and flags the `contamination` share of the sample
that is most anomalous.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.batch.errors import UsageError
from engine.features.pairs import PAIR_FEATURES, PairColumns, PairStats, feature_spread, pair_features
from engine.scoring.servable import PairModel

_LOADED: dict[str, PairModel] = {}


@dataclass(frozen=True, slots=True)
class PairModelRef:
    """Which pair model to run: `kind` "bundle" (path) or "fitted" (ONNX bytes, stats, threshold)."""

    kind: str
    bundle: str = ""
    onnx: bytes = b""
    stats: str = ""  # PairStats as JSON
    threshold: float = 0.0
    version: str = ""

    @property
    def cache_key(self) -> str:
        if self.kind == "bundle":
            return f"bundle:{self.bundle}"
        return "fitted:" + hashlib.sha256(self.onnx + self.stats.encode()).hexdigest()

    def load(self) -> PairModel:
        """The model, loaded once per process."""
        model = _LOADED.get(self.cache_key)
        if model is None:
            model = self._load()
            _LOADED[self.cache_key] = model
        return model

    def _load(self) -> PairModel:
        from pathlib import Path

        from engine.models.bundle import ModelBundle, onnx_session
        from engine.training.pairs import INPUT_NAME, OUTPUT_NAME

        if self.kind == "bundle":
            loaded = PairModel.load(ModelBundle.load(Path(self.bundle)))
            if loaded is None:
                raise UsageError(
                    f"{self.bundle}: the bundle has no sync-break model (engine train-pairs adds one), "
                    "or use --model isolation-forest"
                )
            return loaded
        stats = PairStats.from_json(json.loads(self.stats))
        session = onnx_session(self.onnx)
        return PairModel(
            self.version, stats, self.threshold, {}, session, INPUT_NAME, OUTPUT_NAME, 0, "isolation_forest"
        )

    def describe(self) -> dict[str, Any]:
        model = self.load()
        out: dict[str, Any] = {"kind": model.kind, "version": model.version, "threshold": model.threshold}
        if self.kind == "bundle":
            out["bundle"] = self.bundle
            out["source"] = "the bundle's pair model, as ScorePairs serves it"
        else:
            out["source"] = "an IsolationForest fitted on a sample of these pairs (no labels)"
        return out


def bundle_model(path: str) -> PairModelRef:
    ref = PairModelRef("bundle", bundle=path)
    ref.load()  # refuse a bundle without a pair model before any task runs
    return ref


def fit_on_sample(
    sample: PairColumns, *, contamination: float, seed: int, trees: int = 100, max_samples: int = 4096
) -> tuple[PairModelRef, dict[str, float]]:
    """An IsolationForest on the sampled pairs (in key order), its ONNX graph and alert threshold."""
    from sklearn.ensemble import IsolationForest

    from engine.models.bundle import onnx_session
    from engine.training.pairs import amount_baseline, forest_to_onnx, onnx_scores

    if len(sample) < 16:
        raise UsageError(
            f"only {len(sample)} pairs in the sample: too few to fit a model; use --model bundle"
        )
    mean, std = amount_baseline(sample)
    placeholder = PairStats(mean, std, {f: (0.0, 1.0) for f in PAIR_FEATURES})
    x = pair_features(sample, placeholder).matrix
    stats = PairStats(mean, std, feature_spread(x))
    forest = IsolationForest(
        n_estimators=trees, max_samples=min(max_samples, len(sample)), random_state=seed, n_jobs=1
    ).fit(x)
    model = forest_to_onnx(forest, len(PAIR_FEATURES))
    scores = onnx_scores(onnx_session(model), x).astype(np.float64)
    threshold = float(np.quantile(scores, 1.0 - contamination, method="higher"))
    threshold = min(max(threshold, 1e-6), 1.0)
    version = "fitted+" + hashlib.sha256(model).hexdigest()[:8]
    ref = PairModelRef(
        "fitted", onnx=model, stats=json.dumps(stats.to_json()), threshold=threshold, version=version
    )
    info = {"sample_pairs": float(len(sample)), "contamination": contamination, "threshold": threshold}
    return ref, info


def sample_mask(hashes: npt.NDArray[np.uint64], rate: float) -> npt.NDArray[np.bool_]:
    """The rows whose key hash falls in the sample: the same keys on both sides, on any machine."""
    return np.asarray((hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53) < rate, dtype=np.bool_)
