"""A loaded bundle plus everything derived from it once: what one batch runs on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine.errors import BundleError
from engine.features.columns import TradeColumns
from engine.features.compute import FeaturePlan
from engine.features.pairs import PAIR_FEATURES, PairStats
from engine.metrics import EngineMetrics
from engine.models.bundle import ModelBundle, PairSection
from engine.models.spec import BAND_NAMES
from engine.models.treeshap import BLOCK_MIN_ROWS, TreeExplainer
from engine.scoring.reasons import ReasonFields, reasons_bytes
from engine.scoring.response import response_bytes
from engine.scoring.wire import WireTables, prepare_request, trade_count


@dataclass(frozen=True, slots=True, eq=False)
class PairModel:
    """The bundle's sync-break model (manifest section `pairs`): features' statistics, threshold, session."""

    version: str
    stats: PairStats
    threshold: float
    metrics: Mapping[str, float]
    session: Any
    input_name: str
    output_name: str
    #: the break score's column in the output: 0 for the forest's [n, 1], 1 for a classifier's [n, 2]
    output_column: int = 0
    #: "isolation_forest" (an anomaly score) or "lightgbm" (a break probability)
    kind: str = "isolation_forest"

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Break scores in [0, 1] for a pair feature matrix (one ONNX Runtime call)."""
        out = self.session.run([self.output_name], {self.input_name: features})[0]
        return np.ascontiguousarray(out[:, self.output_column], dtype=np.float32)

    @staticmethod
    def load(bundle: ModelBundle, intra_op_threads: int = 1) -> PairModel | None:
        """The pair model of `bundle`, None when it has none; BundleError when it must not serve.

        `PairSection.load` checks the section, the features, the model and its golden rows.
        """
        section = PairSection.load(bundle.path, bundle.manifest, PAIR_FEATURES, intra_op_threads)
        if section is None:
            return None
        return PairModel(
            section.version,
            PairStats.from_json(section.stats),
            section.threshold,
            section.metrics,
            section.session,
            section.input_name,
            section.output_name,
            section.output_column,
            section.kind,
        )


#: the LightGBM model text a bundle may carry beside its ONNX graph: what trade reasons explain
LGB_FILE = "model.lgb.txt"
#: TreeSHAP on the model text and ONNX Runtime on the graph must agree this well on the golden rows
#: (float64 against float32 arithmetic)
EXPLAIN_TOLERANCE = 1e-5


@dataclass(frozen=True, slots=True, eq=False)
class TradeExplainer:
    """TreeSHAP of the bundle's LightGBM model, with each feature's reason code and categories."""

    shap: TreeExplainer
    #: the features' names in capitals, the stable reason codes
    codes: tuple[str, ...]
    #: per feature, its categories (empty for a numeric feature)
    categories: tuple[tuple[str, ...], ...]
    #: `codes` and `categories` as serialized Reason.code / Reason.category fields
    fields: ReasonFields

    @staticmethod
    def load(bundle: ModelBundle) -> TradeExplainer | None:
        """The explainer of `bundle`'s model text; None without one; BundleError when it does not
        explain the ONNX model (another model's reasons would be wrong, not missing)."""
        if LGB_FILE not in bundle.manifest.files:
            return None
        where = f"{bundle.path / LGB_FILE}"
        shap = TreeExplainer.load(bundle.path / LGB_FILE)
        spec = bundle.manifest.features
        if shap.n_features != len(spec.features):
            raise BundleError(f"{where}: takes {shap.n_features} features, the spec has {len(spec.features)}")
        m = bundle.manifest
        got = shap.probability(shap.contributions(m.golden_inputs))
        diff = float(np.max(np.abs(got - m.golden_probabilities), initial=0.0))
        if not diff <= EXPLAIN_TOLERANCE:
            raise BundleError(
                f"{where}: does not reproduce model.onnx on the golden rows (max diff {diff:.3g}): "
                "it is not the model the graph was exported from"
            )
        codes = tuple(f.name.upper() for f in spec.features)
        categories = tuple(tuple(f.categories) if f.kind == "categorical" else () for f in spec.features)
        return TradeExplainer(
            shap,
            codes,
            categories,
            ReasonFields.build(codes, categories),
        )


def explain_threshold(band: str, edges: npt.NDArray[np.float64]) -> np.float64:
    """The lowest failure probability that gets reasons under `--explain-band band` (inf: OFF)."""
    if band == "OFF":
        return np.float64(np.inf)
    index = BAND_NAMES.index(band)
    return np.float64(0.0) if index == 0 else np.float64(edges[index - 1])


@dataclass(frozen=True, slots=True, eq=False)
class ServingModel:
    bundle: ModelBundle
    plan: FeaturePlan
    #: the plan's look-up keys for the compiled request decoder
    wire: WireTables
    #: the sync-break model, when the bundle has one
    pairs: PairModel | None = None
    #: trade reasons, when the bundle carries its LightGBM model text
    explainer: TradeExplainer | None = None
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

    @property
    def backend(self) -> str:
        """ "onnx" or "compiled" (--model-backend): what evaluates the trade model."""
        return self.bundle.backend

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Failure probabilities for a feature matrix (one ONNX Runtime or compiled-model call)."""
        return self.bundle.predict(features)

    def score(self, trades: TradeColumns) -> npt.NDArray[np.float32]:
        """Failure probabilities for validated table trades, in process: features, then the model."""
        return self.bundle.predict(self.plan.compute(trades))


def _warm_up(model: ServingModel) -> None:
    """Run every compiled step of the serving path once, so that no caller waits for a compile.

    numba compiles each kernel on first use (seconds) and caches the machine code
    on disk (`engine.jit`): with a warm cache this takes milliseconds. Each kernel
    needs one call per argument types, not per size: one trade and a block of
    trades cover the request path, the shedding count, the score metrics, both
    TreeSHAP kernels and the reasons encoder.
    """
    trades = [
        pb.Trade(
            trade_id=f"warm-up-{i}",
            account_id="A",
            counterparty_id="C",
            instrument_id="I",
            asset_class=pb.ASSET_CLASS_EQUITY,
            side=pb.SIDE_BUY,
            quantity=1.0 + i,
            price=1.0,
            currency="USD",
            trade_date="2026-01-02",
            settlement_date="2026-01-06",
            settlement_venue="V",
            inventory_ratio=1.0,
        )
        for i in range(BLOCK_MIN_ROWS)
    ]
    for n in (1, BLOCK_MIN_ROWS):
        raw = pb.ScoreRequest(request_id="w", trades=trades[:n]).SerializeToString()
        trade_count(raw)
        request, features = prepare_request(raw, model.wire, model.plan, n)
        probabilities = model.predict(features)
        EngineMetrics(CollectorRegistry()).observe_scores(probabilities, model.band_edges)
        response_bytes(request, probabilities, model.band_edges, model.name_bytes, model.version_bytes)
        if model.explainer is not None:
            rows = np.arange(n)
            contributions = model.explainer.shap.contributions(features)
            reasons_bytes(request, rows, features, contributions, model.explainer.fields, 0.0)


def load_serving_model(path: Path, intra_op_threads: int = 1, backend: str = "onnx") -> ServingModel:
    """Load a bundle, check its feature spec against the catalog (BundleError if not servable), warm up.

    `backend` "compiled" scores trades with the bundle's model text compiled to machine code,
    refused unless it matches ONNX Runtime (`ModelBundle.load`); the pair model stays on ONNX Runtime.
    """
    bundle = ModelBundle.load(path, intra_op_threads=intra_op_threads, backend=backend)
    plan = FeaturePlan(bundle.manifest.features, bundle.references)
    model = ServingModel(
        bundle,
        plan,
        WireTables.build(plan),
        PairModel.load(bundle, intra_op_threads),
        TradeExplainer.load(bundle),
    )
    _warm_up(model)
    return model
