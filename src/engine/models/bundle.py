"""Model bundles: a folder the engine loads atomically, or refuses.

Layout::

    manifest.json                  name, version, created_at, feature spec, risk
                                   bands, metrics, parity, golden rows, file hashes
    model.onnx                     the classifier: float32 [n, F] -> probabilities [n, 2]
    model.lgb.txt                  the LightGBM model it was exported from (optional)
    reference/counterparties.csv   enrichment tables (see engine.models.reference)
    reference/instruments.csv
    reference/fx.csv
    pairs/model.onnx               the sync-break model (optional; manifest section `pairs`)

A bundle is valid when every file listed in the manifest is present with the
recorded sha256, the content hash over those matches, the ONNX model loads with
the declared input width, and the model reproduces the manifest's golden rows.
Loaded for the compiled backend (`backend="compiled"`, `engine serve --model-backend
compiled`), the bundle must also carry `model.lgb.txt`, which is compiled to machine
code (`engine.models.forest`) and must match ONNX Runtime within 1e-6 on the golden
rows and on 100,000 random rows, or the bundle is refused (BundleError, logged).
Writers put the manifest last (`write_manifest`), so a half-written bundle fails
the hash check instead of being served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.config import BACKENDS as BACKENDS  # what evaluates the model: ONNX Runtime or compiled
from engine.config import DEFAULT_BUNDLE as DEFAULT_BUNDLE  # where the bundle's readers look it up
from engine.errors import BundleError
from engine.models.reference import ReferenceTables
from engine.models.spec import FeatureSpec, RiskBands

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
#: the LightGBM model text the ONNX graph was exported from (reasons, the compiled backend)
LGB_FILE = "model.lgb.txt"
#: the golden rows must reproduce within this (same runtime, same inputs)
GOLDEN_TOLERANCE = 1e-6

F32 = npt.NDArray[np.float32]

log = logging.getLogger(__name__)


def onnx_session(model: str | bytes, intra_op_threads: int = 1) -> Any:
    """An ONNX Runtime CPU session as the engine runs models (training's parity check uses it too)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def fast_run(session: Any) -> Callable[[list[str], dict[str, Any]], list[Any]]:
    """`session.run` without the Python wrapper's per-call work, where the session allows it.

    onnxruntime's `InferenceSession.run` checks the input names in Python, then calls
    its C++ session with no RunOptions, which it then makes anew for every call: for a
    one-row batch that is a third of the call (docs/design-figures.md). The engine's inputs are right by
    construction (one float32 input, named from the model), so it calls the C++
    session (`_sess`, onnxruntime's own attribute) with one RunOptions made once; an
    onnxruntime without it gets the public method.
    """
    inner = getattr(session, "_sess", None)
    if inner is None or not callable(getattr(inner, "run", None)):
        run: Callable[[list[str], dict[str, Any]], list[Any]] = session.run
        return run
    import onnxruntime as ort

    options = ort.RunOptions()

    def run_fast(outputs: list[str], feeds: dict[str, Any]) -> list[Any]:
        result: list[Any] = inner.run(outputs, feeds, options)
        return result

    return run_fast


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(files: Mapping[str, str]) -> str:
    """One hash over the bundle's files: sha256 of "path sha256" lines, sorted by path."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel} {files[rel]}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    created_at: str  # ISO 8601, UTC
    features: FeatureSpec
    risk_bands: RiskBands
    metrics: Mapping[str, float]
    parity: Mapping[str, Any]
    files: Mapping[str, str]  # bundle-relative path -> sha256
    content_hash: str
    golden_inputs: F32
    golden_probabilities: npt.NDArray[np.float64]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def parse(raw: Mapping[str, Any]) -> Manifest:
        if raw.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"manifest format_version must be {FORMAT_VERSION}")
        try:
            golden = raw["golden"]
            m = Manifest(
                name=str(raw["name"]),
                version=str(raw["version"]),
                created_at=str(raw["created_at"]),
                features=FeatureSpec.from_json(raw["features"]),
                risk_bands=RiskBands.from_json(raw["risk_bands"]),
                metrics={str(k): float(v) for k, v in raw.get("metrics", {}).items()},
                parity=dict(raw["parity"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                content_hash=str(raw["content_hash"]),
                golden_inputs=np.asarray(golden["inputs"], dtype=np.float32),
                golden_probabilities=np.asarray(golden["probabilities"], dtype=np.float64),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest is malformed: {exc!r}") from exc
        if not m.name or not m.version:
            raise BundleError("manifest needs a name and a version")
        if MODEL_FILE not in m.files:
            raise BundleError(f"manifest does not list {MODEL_FILE}")
        if m.golden_inputs.ndim != 2 or m.golden_inputs.shape[1] != len(m.features):
            raise BundleError("manifest golden inputs do not match the feature count")
        if m.golden_probabilities.shape != (m.golden_inputs.shape[0],):
            raise BundleError("manifest golden probabilities do not match golden inputs")
        return m

    def created_at_unix(self) -> float:
        return datetime.fromisoformat(self.created_at).timestamp()


class ModelBundle:
    """A validated bundle with its ONNX Runtime session, ready to score."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        references: ReferenceTables,
        session: Any,
        input_name: str,
        output_name: str,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.references = references
        self._session = session
        self._input_name = input_name
        self._output = [output_name]
        self._run = fast_run(session)
        self._forest: Any = None
        #: the compiled backend's parity figures at this load (None on ONNX Runtime)
        self.backend_parity: dict[str, Any] | None = None
        self.loaded_at = time.time()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def input_name(self) -> str:
        """The ONNX model's input tensor: float32 [n, features]."""
        return self._input_name

    @property
    def backend(self) -> str:
        """ "onnx" or "compiled": what `predict` runs."""
        return "onnx" if self._forest is None else "compiled"

    def predict(self, features: F32) -> F32:
        """Failure probability for each row of a float32 [n, F] matrix."""
        if self._forest is not None:
            result: F32 = self._forest.predict(features)
            return result
        return self.predict_onnx(features)

    def predict_onnx(self, features: F32) -> F32:
        """`predict` on ONNX Runtime, whatever the backend (the compiled backend's reference)."""
        probs = self._run(self._output, {self._input_name: features})[0]
        return np.ascontiguousarray(probs[:, 1])

    def _use_compiled(self) -> None:
        """Compile the bundle's model text and serve with it if it matches ONNX Runtime, else BundleError."""
        from engine.models.forest import CompiledForest, check_parity, parity_summary

        root = self.path
        if LGB_FILE not in self.manifest.files:
            raise BundleError(f"{root}: the compiled backend needs {LGB_FILE} in the bundle, and it has none")
        forest = CompiledForest.load(root / LGB_FILE)
        if forest.n_features != len(self.manifest.features):
            raise BundleError(
                f"{root / LGB_FILE}: takes {forest.n_features} features, the spec has "
                f"{len(self.manifest.features)}"
            )
        parity = check_parity(forest, self.predict_onnx, {"golden": self.manifest.golden_inputs})
        if not parity["passed"]:
            log.error("%s: compiled model refused: %s", root, parity_summary(parity))
            raise BundleError(
                f"{root}: the compiled model does not match ONNX Runtime: {parity_summary(parity)}"
            )
        log.info("%s: compiled backend, %s; %s", root, forest.describe(), parity_summary(parity))
        self._forest = forest
        self.backend_parity = parity

    @staticmethod
    def load(path: Path | str, intra_op_threads: int = 1, backend: str = "onnx") -> ModelBundle:
        """Load and validate the bundle at `path` for `backend`; raises BundleError when it must not serve."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        root = Path(path).resolve()
        try:
            raw = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{root}: no {MANIFEST}") from exc
        except (OSError, ValueError) as exc:
            raise BundleError(f"{root / MANIFEST}: unreadable: {exc}") from exc
        if not isinstance(raw, dict):
            raise BundleError(f"{root / MANIFEST}: not a JSON object")
        manifest = Manifest.parse(raw)
        for rel, digest in manifest.files.items():
            file = root / rel
            if not file.is_file():
                raise BundleError(f"{root}: missing file {rel}")
            if sha256_file(file) != digest:
                raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest")
        if content_hash(manifest.files) != manifest.content_hash:
            raise BundleError(f"{root}: content hash does not match the manifest's files")
        references = ReferenceTables.read(root)
        try:
            session = onnx_session(str(root / MODEL_FILE), intra_op_threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{root}: ONNX Runtime cannot load {MODEL_FILE}: {exc}") from exc
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise BundleError(f"{root}: model must take one float32 tensor")
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if width != len(manifest.features):
            raise BundleError(
                f"{root}: model takes {width} features, manifest declares {len(manifest.features)}"
            )
        outputs = [o.name for o in session.get_outputs()]
        output = "probabilities" if "probabilities" in outputs else outputs[-1]
        bundle = ModelBundle(root, manifest, references, session, inputs[0].name, output)
        try:
            got = bundle.predict(manifest.golden_inputs)
        except Exception as exc:  # noqa: BLE001 - any failure here means "do not serve"
            raise BundleError(f"{root}: model failed on its golden rows: {exc}") from exc
        diff = float(np.max(np.abs(got - manifest.golden_probabilities), initial=0.0))
        if not np.isfinite(got).all() or diff > GOLDEN_TOLERANCE:
            raise BundleError(f"{root}: model does not reproduce its golden rows (max diff {diff:.3g})")
        if backend == "compiled":
            bundle._use_compiled()
        return bundle


@dataclass(frozen=True, slots=True, eq=False)
class PairSection:
    """The bundle's sync-break model as its manifest section `pairs` declares it, loaded and checked."""

    version: str
    threshold: float
    metrics: Mapping[str, float]
    session: Any
    input_name: str
    output_name: str
    #: the break score's column in the output: 0 for the forest's [n, 1], 1 for a classifier's [n, 2]
    output_column: int
    #: "isolation_forest" (an anomaly score) or "lightgbm" (a break probability)
    kind: str
    #: the section's `stats` object (engine.features.pairs.PairStats reads it)
    stats: Mapping[str, Any]

    def predict(self, features: F32) -> F32:
        """Break scores in [0, 1] for a pair feature matrix (one ONNX Runtime call)."""
        out = self.session.run([self.output_name], {self.input_name: features})[0]
        return np.ascontiguousarray(out[:, self.output_column], dtype=np.float32)

    @staticmethod
    def load(
        root: Path, manifest: Manifest, features: tuple[str, ...], intra_op_threads: int = 1
    ) -> PairSection | None:
        """The pair model of the bundle at `root`, None when it has none; BundleError when it must not serve.

        Its file's hash was checked with the bundle's; here: the section parses,
        its features are `features` (the ones this engine computes), the model
        takes them, and it reproduces its golden rows. What a server checks before
        it serves a pair model, and what `engine train` checks before it carries one over.
        """
        raw = manifest.raw.get("pairs")
        if raw is None:
            return None
        where = f"{root}: pairs"
        try:
            declared = tuple(str(f) for f in raw["features"])
            threshold = float(raw["threshold"])
            golden_in = np.asarray(raw["golden"]["inputs"], dtype=np.float32)
            golden_out = np.asarray(raw["golden"]["scores"], dtype=np.float64)
            model_file = root / str(raw["model"])
            names = (str(raw["input"]), str(raw["output"]))
            version = str(raw["version"])
            metrics = {str(k): float(v) for k, v in raw.get("metrics", {}).items()}
            column = int(raw.get("output_column", 0))
            kind = str(raw.get("kind", "isolation_forest"))
            stats = dict(raw["stats"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: section is malformed: {exc!r}") from exc
        if declared != features:
            raise BundleError(f"{where}: features {list(declared)} are not this engine's {list(features)}")
        if not 0.0 < threshold <= 1.0:
            raise BundleError(f"{where}: threshold must be in (0, 1]")
        if (
            golden_in.ndim != 2
            or golden_in.shape[1] != len(declared)
            or golden_out.shape != (len(golden_in),)
        ):
            raise BundleError(f"{where}: golden rows do not match the features")
        if str(raw["model"]) not in manifest.files:
            raise BundleError(f"{where}: {raw['model']} is not among the manifest's hashed files")
        try:
            session = onnx_session(str(model_file), intra_op_threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{where}: ONNX Runtime cannot load {raw['model']}: {exc}") from exc
        outputs = {o.name: o.shape for o in session.get_outputs()}
        shape = outputs.get(names[1])
        if shape is None or len(shape) != 2 or not (isinstance(shape[1], int) and 0 <= column < shape[1]):
            raise BundleError(f"{where}: the model has no output {names[1]!r} with a column {column}")
        section = PairSection(version, threshold, metrics, session, *names, column, kind, stats)
        try:
            got = section.predict(golden_in)
        except Exception as exc:  # noqa: BLE001 - any failure here means "do not serve"
            raise BundleError(f"{where}: model failed on its golden rows: {exc}") from exc
        diff = float(np.max(np.abs(got - golden_out), initial=0.0))
        if not np.isfinite(got).all() or diff > GOLDEN_TOLERANCE:
            raise BundleError(f"{where}: model does not reproduce its golden rows (max diff {diff:.3g})")
        return section


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every bundle file, complete `manifest` and write it last, atomically.

    `manifest` carries everything but `files`, `content_hash` and
    `format_version`, which are filled in here. Returns the written manifest.
    """
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    full = {
        "format_version": FORMAT_VERSION,
        **manifest,
        "files": files,
        "content_hash": content_hash(files),
    }
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, root / MANIFEST)
    return full


def utc_now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()
