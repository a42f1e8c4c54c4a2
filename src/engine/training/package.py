"""Turn a float32-exact booster into a served bundle: ONNX, parity, golden rows, manifest.

Shared by `engine train` (a model it just trained) and `engine export` (a
LightGBM text model trained elsewhere on the catalog features).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.models.bundle import onnx_session, utc_now_iso
from engine.models.reference import ReferenceTables
from engine.models.spec import FeatureSpec, RiskBands
from engine.training.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    RewriteStats,
    check_parity,
    golden_json,
    onnx_predict,
    pick_golden_rows,
    to_onnx,
    write_bundle,
)

F32 = npt.NDArray[np.float32]
Printer = Callable[[str], None]

BUNDLE_NAME = "settlement-fail"
GOLDEN_ROWS = 64
_log = logging.getLogger("engine.training")


def default_version(booster_text: str) -> str:
    """ "YYYY.MM.DD+<8 hex of the model's sha256>": sortable by day, unique per model."""
    digest = hashlib.sha256(booster_text.encode()).hexdigest()[:8]
    return f"{utc_now_iso()[:10].replace('-', '.')}+{digest}"


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("lightgbm", "onnx", "onnxmltools", "onnxruntime", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def compiled_parity(
    booster_text: str, model: bytes, heldout: F32, log: Printer = _log.info
) -> dict[str, Any]:
    """The compiled backend (`engine.models.forest`) against ONNX Runtime on the held-out rows and
    100,000 random rows, as the manifest records it (`parity.compiled`). A model that fails is still
    written (ONNX Runtime serves it); a server on `--model-backend compiled` refuses it."""
    from engine.errors import BundleError
    from engine.models.forest import CompiledForest, check_parity, parity_summary

    session = onnx_session(model)
    try:
        forest = CompiledForest.from_text(booster_text, "model text")
    except BundleError as exc:
        log(f"compiled backend: cannot compile the model ({exc}); it will serve on ONNX Runtime only")
        return {"passed": False, "error": str(exc)}
    figures = check_parity(forest, lambda x: onnx_predict(session, x), {"heldout": heldout})
    figures["compile"] = forest.describe()
    state = "" if figures["passed"] else "; a server on --model-backend compiled will refuse this bundle"
    log(f"compiled backend: {parity_summary(figures)}{state}")
    return figures


def package(
    out: Path | str,
    *,
    booster: Any,
    booster_text: str,
    rewrite: RewriteStats,
    spec: FeatureSpec,
    references: ReferenceTables,
    bands: RiskBands,
    metrics: Mapping[str, float],
    heldout: F32,
    training: Mapping[str, Any],
    name: str = BUNDLE_NAME,
    version: str | None = None,
    parity_rows: int = 100_000,
    tolerance: float = PARITY_TOLERANCE,
    threads: int = 1,
    keep_pairs: bool = True,
    log: Printer = _log.info,
) -> dict[str, Any]:
    """Export to ONNX, check parity on up to `parity_rows` held-out rows, write the bundle.

    Raises ParityError (and writes nothing) when ONNX Runtime and LightGBM
    disagree beyond `tolerance`. A sync-break model of a bundle at `out` is carried
    over unless not `keep_pairs` (`write_bundle`). Returns the written manifest.
    """
    if parity_rows < 1:
        raise ValueError("parity_rows must be >= 1")
    model = to_onnx(booster, len(spec))
    rows = np.ascontiguousarray(heldout[:parity_rows])
    parity = check_parity(booster, model, rows, tolerance=tolerance, threads=threads)
    parity["threshold_rewrite"] = rewrite.to_json()
    log(
        f"parity: {parity['rows']:,} held-out rows, max |LightGBM - ONNX| {parity['max_abs_diff']:.3g}, "
        f"mean {parity['mean_abs_diff']:.3g} (limit {tolerance:g})"
    )
    parity["compiled"] = compiled_parity(booster_text, model, rows, log)
    probabilities = onnx_predict(onnx_session(model), rows)
    golden = pick_golden_rows(probabilities, GOLDEN_ROWS)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version or default_version(booster_text),
        "created_at": utc_now_iso(),
        "model": {"input": INPUT_NAME, "output": OUTPUT_NAME, "trees": rewrite.trees},
        "features": spec.to_json(),
        "risk_bands": bands.to_json(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "parity": parity,
        "golden": golden_json(rows[golden], probabilities[golden]),
        "training": {**training, "versions": library_versions()},
    }
    written = write_bundle(
        out,
        model=model,
        booster_text=booster_text,
        references=references,
        manifest=manifest,
        keep_pairs=keep_pairs,
    )
    root = Path(out).resolve()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    log(f"bundle {written['name']} {written['version']} written to {root} ({size / 1e6:.2f} MB)")
    if "pairs" in written:
        log(f"pairs: sync-break model {written['pairs']['version']} carried over from the replaced bundle")
    return written
