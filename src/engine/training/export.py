"""LightGBM -> ONNX with a parity check, and atomic bundle writing.

Float32 thresholds
------------------
LightGBM keeps split thresholds as float64 and compares `double(x) <= t`;
ONNX's TreeEnsembleClassifier stores them as float32 and compares `x <= t32`.
onnxmltools rounds each threshold to the *nearest* float32, which may lie
above t: an input x32 equal to that rounded value goes left in ONNX and right
in LightGBM. Before export, `round_thresholds_down` rewrites every threshold
to the largest float32 <= t. For a float32 input x, `x <= t` and
`x <= round_down_f32(t)` decide identically (no float32 lies in
(round_down_f32(t), t]), so the rewritten booster makes exactly the same
decisions as the original on float32 inputs — which is all the engine ever
feeds it (`FeaturePlan.compute` returns float32) — and its thresholds survive
the float32 conversion unchanged. The rewritten booster is the one saved
(`model.lgb.txt`) and compared against ONNX Runtime.

Missing values
--------------
A split whose feature had no NaN in training has LightGBM "missing type None":
LightGBM turns a NaN input into 0.0 and compares, while onnxmltools guesses
the NaN direction from `default_left`, which need not agree. The rewrite turns
such splits into "missing type NaN" with the default direction set to where
0.0 goes (left iff 0 <= t), which is the same function for every input and
which onnxmltools maps exactly onto `nodes_missing_value_tracks_true`.
Splits LightGBM cannot express that way are refused: categorical splits (we
never pass `categorical_feature`: categorical features are integer codes split
as numbers, because ONNX set-membership splits are a parity risk) and
"zero as missing" splits.

Parity
------
`check_parity` scores the same float32 rows with the rewritten booster and
with ONNX Runtime (configured as the server configures it) and raises
`ParityError`, naming the worst rows, when the largest absolute difference
exceeds `PARITY_TOLERANCE`. Leaf values are float32 in ONNX and summed in
float32, so differences of ~1e-7 remain; 1e-5 leaves headroom without hiding
a flipped split (one flipped split moves a probability by far more).

Bundles
-------
`write_bundle` builds the bundle in a staging directory next to the target,
validates it with `ModelBundle.load` (hashes, ONNX input width, golden rows),
then swaps it in with two renames, so a server watching the target sees the
old bundle or the new one, and at worst for an instant no bundle. A bundle
holds two models: the trade model `engine train` writes and the sync-break
model `engine train-pairs` adds (`pairs/`). Writing one keeps the other: a
pair model in the target is carried into the new bundle, its file checked
against the old manifest's hash and reloaded with the server's own checks
(`PairSection.load`), and the carry-over recorded in `pairs.carried_over`; the
pair model is left out only when the caller says so (`engine train
--drop-pair-model`). `stage_bundle` and `swap_bundle` do the same for
`engine train-pairs`, which rewrites the pair model and keeps the trade model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import BundleError
from engine.features.pairs import PAIR_FEATURES
from engine.models.bundle import (
    MANIFEST,
    MODEL_FILE,
    ModelBundle,
    PairSection,
    onnx_session,
    sha256_file,
    utc_now_iso,
    write_manifest,
)
from engine.models.reference import ReferenceTables
from engine.training.errors import ExportError, ParityError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
LGB_FILE = "model.lgb.txt"
PARITY_TOLERANCE = 1e-5
PARITY_METHOD = (
    "max |LightGBM (float32 thresholds rounded down) - ONNX Runtime (CPU, 1 thread, ORT_ENABLE_ALL)| "
    "probability of failure on the same float32 held-out rows"
)
#: decision_type bits (LightGBM tree.h): 1 categorical, 2 default left, (x >> 2) & 3 missing type
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2


@dataclass(frozen=True, slots=True)
class RewriteStats:
    trees: int
    splits: int
    #: thresholds that were not float32 values (rounded down)
    rounded: int
    #: of those, thresholds that round-to-nearest would have moved *up* (decision flips)
    nearest_would_flip: int
    #: splits turned from "missing None" into "missing NaN" with the equivalent default
    missing_none_rewritten: int

    def to_json(self) -> dict[str, int]:
        return {
            "trees": self.trees,
            "splits": self.splits,
            "rounded": self.rounded,
            "nearest_would_flip": self.nearest_would_flip,
            "missing_none_rewritten": self.missing_none_rewritten,
        }


def round_down_f32(t: F64) -> F64:
    """The largest float32 <= each value, as float64 (-inf below -FLT_MAX, FLT_MAX above it)."""
    t64 = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):
        t32 = t64.astype(np.float32)  # round to nearest; beyond +-FLT_MAX: +-inf
    up = t32.astype(np.float64) > t64
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32.astype(np.float64)


def _rewrite_tree(block: str, tree: int) -> tuple[str, tuple[int, int, int, int]]:
    lines = block.split("\n")
    keys = {line.split("=", 1)[0]: i for i, line in enumerate(lines) if "=" in line}
    if "threshold" not in keys:
        return block, (0, 0, 0, 0)  # a single-leaf tree has no splits
    if "num_cat" in keys and int(lines[keys["num_cat"]].split("=", 1)[1]) > 0:
        raise ExportError(f"tree {tree} has categorical splits, which the ONNX export does not support")
    thresholds = np.array(lines[keys["threshold"]].split("=", 1)[1].split(), dtype=np.float64)
    decision = np.array(lines[keys["decision_type"]].split("=", 1)[1].split(), dtype=np.int64)
    if thresholds.shape != decision.shape:
        raise ExportError(f"tree {tree}: threshold and decision_type lengths differ")
    if (decision & _CATEGORICAL).any():
        raise ExportError(f"tree {tree} has categorical splits, which the ONNX export does not support")
    missing = (decision >> 2) & 3
    if (missing == _MISSING_ZERO).any():
        raise ExportError(f"tree {tree} treats zero as missing, which ONNX TreeEnsemble cannot reproduce")
    with np.errstate(over="ignore"):
        nearest = thresholds.astype(np.float32).astype(np.float64)
    new_t = round_down_f32(thresholds)
    none = missing == _MISSING_NONE
    # missing None: LightGBM reads NaN as 0.0, which goes left iff 0 <= t; make that the NaN default
    as_nan = (
        (decision & ~np.int64(_DEFAULT_LEFT | (3 << 2)))
        | (_MISSING_NAN << 2)
        | np.where(new_t >= 0.0, _DEFAULT_LEFT, 0)
    )
    new_d = np.where(none, as_nan, decision)
    lines[keys["threshold"]] = "threshold=" + " ".join(repr(float(v)) for v in new_t)
    lines[keys["decision_type"]] = "decision_type=" + " ".join(str(int(v)) for v in new_d)
    stats = (
        int(thresholds.size),
        int((new_t != thresholds).sum()),
        int((nearest > thresholds).sum()),
        int(none.sum()),
    )
    return "\n".join(lines), stats


def rewrite_model_text(text: str) -> tuple[str, RewriteStats]:
    """LightGBM model text with float32-exact thresholds (rounded down) and explicit NaN defaults."""
    start = re.search(r"(?m)^Tree=0$", text)
    end = text.find("end of trees")
    if start is None or end < 0:
        raise ExportError("not a LightGBM text model with trees (no 'Tree=0' ... 'end of trees')")
    header, section, trailer = text[: start.start()], text[start.start() : end], text[end:]
    blocks = re.split(r"(?m)^(?=Tree=\d+$)", section)[1:]
    sizes_match = re.search(r"(?m)^tree_sizes=(.*)$", header)
    if sizes_match is not None:
        sizes = [int(s) for s in sizes_match.group(1).split()]
        if sizes != [len(b.encode()) for b in blocks]:
            raise ExportError("LightGBM model text: tree_sizes do not match the trees (unexpected layout)")
    if "objective=binary" not in header:
        raise ExportError("only binary LightGBM classifiers (objective=binary) can be exported")
    new_blocks, totals = [], np.zeros(4, dtype=np.int64)
    for i, block in enumerate(blocks):
        new_block, stats = _rewrite_tree(block, i)
        new_blocks.append(new_block)
        totals += np.asarray(stats)
    if sizes_match is not None:
        new_sizes = "tree_sizes=" + " ".join(str(len(b.encode())) for b in new_blocks)
        header = header[: sizes_match.start()] + new_sizes + header[sizes_match.end() :]
    splits, rounded, flip, none = (int(v) for v in totals)
    return header + "".join(new_blocks) + trailer, RewriteStats(len(blocks), splits, rounded, flip, none)


def round_thresholds_down(booster: Any, num_iteration: int | None = None) -> tuple[Any, str, RewriteStats]:
    """A new Booster with float32-exact thresholds that decides as `booster` does on float32 inputs.

    Returns the booster, its model text (what `model.lgb.txt` holds) and the
    rewrite counts. `num_iteration` keeps only the first trees (e.g. the best
    iteration of early stopping).
    """
    import lightgbm as lgb

    text, stats = rewrite_model_text(booster.model_to_string(num_iteration=num_iteration))
    return lgb.Booster(model_str=text), text, stats


def verify_rewrite(
    original: Any, rewritten: Any, features: F32, num_iteration: int | None = None, threads: int = 1
) -> None:
    """Raise ExportError unless both boosters give identical probabilities on `features` (float32)."""
    before = original.predict(features, num_iteration=num_iteration, num_threads=threads)
    after = rewritten.predict(features, num_threads=threads)
    if not np.array_equal(before, after):
        raise ExportError(
            "the float32 threshold rewrite changed predictions on float32 inputs "
            f"(max diff {float(np.abs(before - after).max()):.3g}); this is a bug in the rewrite"
        )


def to_onnx(booster: Any, n_features: int, name: str = "settlement_fail") -> bytes:
    """ONNX bytes: float32 input "features" [N, F] -> "probabilities" [N, 2] (and "label" [N]).

    Convert the *rewritten* booster: its thresholds are float32 values, so
    onnxmltools' float32 conversion leaves them unchanged.
    """
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    if booster.num_feature() != n_features:
        raise ExportError(f"the model takes {booster.num_feature()} features, the spec declares {n_features}")
    model = convert_lightgbm(
        booster,
        name=name,  # a fixed graph name keeps the bytes reproducible (the default is a uuid)
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
    )
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if output.name == "label" and len(dims) == 1:
            dims[0].Clear()
            dims[0].dim_param = "N"  # the converter declares [1]; it is one label per row
    # the converter collects opsets in a set: sort them so the same booster gives the same bytes
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    if OUTPUT_NAME not in [o.name for o in model.graph.output]:
        raise ExportError(f"converted model has no {OUTPUT_NAME!r} output")
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def onnx_predict(session: Any, features: F32) -> F64:
    probs = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(features, dtype=np.float32)})[0]
    return np.asarray(probs[:, 1], dtype=np.float64)


def check_parity(
    booster: Any,
    model: bytes,
    features: F32,
    tolerance: float = PARITY_TOLERANCE,
    threads: int = 1,
) -> dict[str, Any]:
    """Compare LightGBM and ONNX Runtime on `features`; raise ParityError beyond `tolerance`."""
    if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] == 0:
        raise ExportError("parity needs a non-empty float32 [n, F] matrix")
    expected = np.asarray(booster.predict(features, num_threads=threads), dtype=np.float64)
    got = onnx_predict(onnx_session(model, threads), features)
    diff = np.where(np.isfinite(got), np.abs(got - expected), np.inf)
    max_diff = float(diff.max())
    if not max_diff <= tolerance:
        worst_rows = np.argsort(-diff, kind="stable")[:5]
        worst = [(int(i), float(expected[i]), float(got[i])) for i in worst_rows]
        rows = "; ".join(f"row {i}: LightGBM {e:.9g} vs ONNX {g:.9g}" for i, e, g in worst)
        raise ParityError(
            f"ONNX Runtime differs from LightGBM by up to {max_diff:.3g} (> {tolerance:g}) on "
            f"{int((diff > tolerance).sum())} of {diff.size} rows; worst: {rows}. Nothing was written.",
            worst,
        )
    return {
        "rows": int(diff.size),
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(diff.mean()),
        "threshold": tolerance,
        "method": PARITY_METHOD,
    }


def golden_json(features: F32, probabilities: F64) -> dict[str, list[Any]]:
    """Golden rows for the manifest; NaN (missing) becomes JSON null, read back as NaN."""
    inputs = [[None if np.isnan(v) else float(v) for v in row] for row in features.tolist()]
    return {"inputs": inputs, "probabilities": [float(p) for p in probabilities]}


def pick_golden_rows(probabilities: F64, count: int = 64) -> npt.NDArray[np.intp]:
    """Rows spread evenly over the ranks of the probabilities, lowest to highest."""
    order = np.argsort(probabilities, kind="stable")
    picks = np.unique(np.linspace(0, order.size - 1, min(count, order.size)).round().astype(np.intp))
    return np.asarray(order[picks], dtype=np.intp)


# --------------------------------------------------------------------------- bundle writing

#: the pair model's folder inside a bundle (engine train-pairs writes it)
PAIRS_DIR = "pairs"
#: what may be replaced when the target already exists (anything else: refuse)
_BUNDLE_ENTRIES = {MANIFEST, MODEL_FILE, LGB_FILE, "reference", PAIRS_DIR}


def _refusal(target: Path) -> str | None:
    """Why `target` must not be replaced by a bundle, and what to do instead; None when it may be."""
    if not target.exists():
        return None
    if not target.is_dir():
        return f"{target} is a file, not a bundle folder; choose another --out"
    entries = {p.name for p in target.iterdir() if not p.name.startswith(".")}
    if not entries:
        return None
    if MANIFEST not in entries:
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        return (
            f"{target} is a folder without {MANIFEST} ({shown}), so not a model bundle; refusing to replace "
            "it: choose a new or empty --out, or move those files away"
        )
    extra = entries - _BUNDLE_ENTRIES
    if extra:
        return (
            f"{target} is a model bundle that also holds files a bundle does not have "
            f"({', '.join(sorted(extra))}); refusing to delete them with the bundle: move them out of "
            "the folder, or choose another --out"
        )
    return None


@dataclass(frozen=True, slots=True)
class CarriedPairs:
    """The pair model of the bundle being replaced: its manifest section and model file."""

    section: dict[str, Any]
    path: str
    model: bytes


def pair_model_of(target: Path) -> CarriedPairs | None:
    """The pair model a new bundle at `target` must carry over (None when the target has none).

    Raises ExportError, saying what to do, when the target declares a pair model that cannot be
    carried over as it is: an unreadable manifest, a missing file, a file that is not the one the
    manifest hashed.
    """
    manifest = target / MANIFEST
    if not manifest.is_file():
        return None
    keep = "or pass --drop-pair-model to write the new bundle without it"
    try:
        raw = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        if (target / PAIRS_DIR).exists():
            raise ExportError(
                f"{manifest} is unreadable ({exc}), so the pair model in {target / PAIRS_DIR} cannot be "
                f"carried over: restore the manifest, {keep}"
            ) from None
        return None
    section = raw.get("pairs") if isinstance(raw, dict) else None
    if section is None:
        return None
    try:
        rel = str(section["model"])
        digest = str(raw["files"][rel])
    except (KeyError, TypeError) as exc:
        raise ExportError(
            f"{manifest}: the pairs section does not name a hashed model file ({exc!r}), so the pair model "
            f"cannot be carried over: rebuild it with engine train-pairs --bundle {target}, {keep}"
        ) from None
    file = target / rel
    if not file.is_file() or sha256_file(file) != digest:
        state = "is missing" if not file.is_file() else "does not match its sha256 in the manifest"
        raise ExportError(
            f"{file} {state}, so the pair model cannot be carried over: rebuild it with engine "
            f"train-pairs --bundle {target}, {keep}"
        )
    return CarriedPairs(dict(section), rel, file.read_bytes())


def check_out(out: Path | str, keep_pairs: bool = True) -> None:
    """Refuse an --out that `write_bundle` would refuse, before the hours of training that precede it."""
    target = Path(out).resolve()
    refusal = _refusal(target)
    if refusal is not None:
        raise ExportError(refusal)
    if keep_pairs:
        pair_model_of(target)


def write_bundle(
    out: Path | str,
    *,
    model: bytes,
    booster_text: str,
    references: ReferenceTables,
    manifest: dict[str, Any],
    extra_files: Sequence[tuple[str, bytes]] = (),
    keep_pairs: bool = True,
) -> dict[str, Any]:
    """Write a bundle atomically at `out` and return its manifest (files + hashes included).

    Refuses to replace an existing directory that is not a bundle (or empty),
    so a mistyped --out never deletes unrelated files. When `out` is a bundle with
    a pair model and `keep_pairs`, the pair model is carried into the new bundle
    (checked as a server checks it; ExportError, nothing written, when it fails).
    """
    target = Path(out).resolve()
    refusal = _refusal(target)
    if refusal is not None:
        raise ExportError(refusal)
    carried = pair_model_of(target) if keep_pairs else None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        staging.chmod(0o755)
        (staging / MODEL_FILE).write_bytes(model)
        (staging / LGB_FILE).write_text(booster_text)
        references.write(staging)
        for rel, data in extra_files:
            (staging / rel).write_bytes(data)
        if carried is not None:
            (staging / carried.path).parent.mkdir(parents=True, exist_ok=True)
            (staging / carried.path).write_bytes(carried.model)
            manifest = {**manifest, "pairs": {**carried.section, "carried_over": _carry_record(target)}}
        written = write_manifest(staging, manifest)
        loaded = ModelBundle.load(staging)  # the very checks a server runs; raises BundleError
        if carried is not None:
            try:
                PairSection.load(staging, loaded.manifest, PAIR_FEATURES)
            except BundleError as exc:
                raise ExportError(
                    f"the pair model of {target} cannot be carried over: {exc}; rebuild it afterwards "
                    f"with engine train-pairs --bundle {target}, or pass --drop-pair-model"
                ) from None
        swap_bundle(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def _carry_record(target: Path) -> dict[str, Any]:
    """What `pairs.carried_over` says: when, and which trade model the pair model sat beside before."""
    raw = json.loads((target / MANIFEST).read_text())
    return {
        "at": utc_now_iso(),
        "from_trade_model": {"name": raw.get("name"), "version": raw.get("version")},
        "checked": "sha256 against the replaced manifest; section, features and golden rows reloaded",
    }


def stage_bundle(root: Path) -> Path:
    """A copy of the bundle at `root` in a staging folder beside it, to change and `swap_bundle` in."""
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.staging-", dir=root.parent))
    staging.rmdir()
    shutil.copytree(root, staging, ignore=shutil.ignore_patterns(".*"))
    staging.chmod(0o755)
    return staging


def swap_bundle(staging: Path, target: Path) -> None:
    """Put the bundle in `staging` at `target` with two renames (the old one back if the second fails)."""
    _swap(staging, target)


def _swap(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)
