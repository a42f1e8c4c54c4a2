"""The compiled backend: the bundle's tree ensemble as native code, checked against ONNX Runtime.

`engine serve --model-backend compiled` scores trades with this module instead
of ONNX Runtime's `TreeEnsembleClassifier`. ONNX stays the format every bundle
carries and the reference every compiled model is checked against.

What runs
---------
`forest_ir` turns the bundle's LightGBM model text (parsed once, by
`engine.models.treeshap.parse_trees`, the parser TreeSHAP uses) into LLVM IR, and
LLVM (llvmlite, the one numba compiles with) optimises it and emits machine code
for the same CPU target as the engine's numba kernels (`NUMBA_CPU_NAME` /
`NUMBA_CPU_FEATURES`, else the host's). The layout served ("bitvector") is
QuickScorer's (Lucchese et al., SIGIR 2015) vectorised over rows: leaves are
numbered left to right, each split that a row does not take left clears its left
subtree's leaves from the tree's bit vector, and the row's leaf is the lowest bit
left. Eight rows at a time, every split is one vector compare and two bit
operations against constants, with no branch a row's values could mispredict;
the leaves' values are gathered from a table per tree. Trees of more than 64
leaves get native branches instead ("tree": one basic block per split). A call
is one ctypes call (GIL released) plus one numba kernel for the logistic. Why
this design and not branches, a flattened node layout in numba, or C from
TL2cgen: docs/compiled-backend.md (figures from `loadtest/backend_designs.py`).

Decisions as ONNX Runtime takes them
------------------------------------
The reference is the ONNX graph the bundle carries, so every number is
handled as the LightGBM -> ONNX export (`engine.training.export`) handles it:

- thresholds are float32 (the nearest, as onnxmltools rounds; bundles written
  by `engine train`/`export` have float32-exact thresholds already, rounded
  down) and a float32 feature is compared with them exactly (`x <= t`);
- a NaN goes the split's default way: `fcmp ule` (unordered or <=: NaN left)
  when LightGBM's default is left, `fcmp ole` (NaN right) otherwise; a split of
  missing type "None" sends NaN where 0.0 goes, as the export's rewrite does;
  "zero as missing" and categorical splits are refused, as the export refuses
  them;
- leaf values are float32 and summed in float32 in tree order, then the
  logistic `1 / (1 + exp(-|s|))` (mirrored for s < 0) in float32, as ONNX
  Runtime's tree ensemble does.

Parity
------
`check_parity` compares the compiled model with ONNX Runtime on given rows
(the manifest's golden rows, the held-out rows at `engine train`/`export`) and
on `RANDOM_ROWS` rows from `random_rows`: values drawn from the model's own
thresholds, one float32 step either side of them, the range between, NaN
and +-inf, so that every split is taken both ways and exactly at its edge.
Beyond `PARITY_TOLERANCE` the bundle is refused for this backend
(`ModelBundle.load`).

Machine code cache
------------------
Compiling the default model takes seconds, so the object code is kept in the
engine's kernel cache (`engine.jit.CACHE_DIR/forests/<key>.o`), keyed by the
sha256 of the generated IR, the code generator's version, llvmlite's version
and the CPU target; `engine compile --ship` ships it in the image with the
numba kernels, for the bundle it compiles.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llvmlite  # type: ignore[import-untyped]
import llvmlite.binding as llvm  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

from engine import jit
from engine.errors import BundleError
from engine.jit import compiled
from engine.models.treeshap import parse_trees

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

#: the compiled model must match ONNX Runtime's probabilities this well on every parity row
PARITY_TOLERANCE = 1e-6
#: random rows of the parity check (on top of the golden or held-out rows)
RANDOM_ROWS = 100_000
#: the random rows' seed: the same rows at every load of the same model
RANDOM_SEED = 20
#: bump when the generated code changes meaning: part of the machine code's cache key
GENERATOR_VERSION = "2"
#: LLVM's optimisation level for the forest
OPT_LEVEL = 3
PARITY_METHOD = (
    "max |compiled - ONNX Runtime (CPU, 1 thread)| probability of failure, float32 rows: "
    f"the given rows plus {RANDOM_ROWS:,} random rows on and around the model's thresholds "
    "(10% NaN, 1% +-inf)"
)

#: LightGBM's decision_type bits: categorical, default left; missing type (x >> 2) & 3: 0 none, 1 zero, 2 NaN
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
_MISSING_NONE, _MISSING_ZERO = 0, 1

_Forest = Callable[[int, int, int], None]


def _hex(value: float) -> str:
    """An LLVM float constant: the float32 nearest `value`, written as the double of the same value."""
    exact = _nearest_f32(value)
    bits = struct.unpack("<Q", struct.pack("<d", exact))[0]
    return f"0x{bits:016X}"


def _nearest_f32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))


@dataclass(frozen=True, slots=True)
class ForestSource:
    """A LightGBM binary model as LLVM IR, and the thresholds each feature is split on."""

    ir: str
    n_features: int
    n_trees: int
    #: per feature, the float32 thresholds it is split on (sorted, unique): what random rows are made of
    thresholds: tuple[F32, ...]

    @property
    def key(self) -> str:
        """The cache key of its machine code: the IR, the generator, llvmlite and the CPU target."""
        h = hashlib.sha256()
        for part in (GENERATOR_VERSION, str(OPT_LEVEL), llvmlite.__version__, jit.cpu_target(), self.ir):
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:32]


#: how the generated code is laid out (`forest_ir`): "bitvector" (served; see the module docstring),
#: and the designs it was measured against (loadtest/backend_designs.py): "tree" (branches, each tree
#: walks a block of rows), "row" (each row calls every tree in turn) and "row-inline" (all inlined)
LAYOUTS = ("bitvector", "tree", "row", "row-inline")
#: rows one pass of the "tree" layout takes through every tree (its running sums stay in L1)
BLOCK_ROWS = 128


def _decision(k: int, tree: Any, i: int, where: str) -> tuple[float, bool]:
    """Split i of tree k as ONNX Runtime takes it: (float32 threshold, whether NaN goes left)."""
    decision = tree.decision_type[i]
    missing = (decision >> 2) & 3
    if decision & _CATEGORICAL:
        raise BundleError(f"{where}: tree {k} has a categorical split (the ONNX export has none)")
    if missing == _MISSING_ZERO:
        raise BundleError(f"{where}: tree {k} treats zero as missing (the ONNX export refuses it)")
    t32 = _nearest_f32(tree.threshold[i])
    if missing == _MISSING_NONE:  # LightGBM reads NaN as 0.0: NaN goes where 0.0 goes
        return t32, 0.0 <= t32
    return t32, bool(decision & _DEFAULT_LEFT)


def _in_order(tree: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """Leaves numbered left to right (LightGBM leaf -> position), and each split's left subtree as
    the range of positions [first, last) of its leaves."""
    position = [0] * len(tree.leaf_value)
    spans = [(0, 0)] * len(tree.split_feature)
    counter = 0

    def walk(node: int) -> tuple[int, int]:
        nonlocal counter
        if node < 0:
            position[~node] = counter
            counter += 1
            return counter - 1, counter
        first, middle = walk(tree.left[node])
        spans[node] = (first, middle)
        _, last = walk(tree.right[node])
        return first, last

    if tree.split_feature:
        walk(0)
    return position, spans


#: rows one pass of the "bitvector" layout scores at once: one SIMD lane each
LANES = 8
#: the most leaves a tree may have for the "bitvector" layout (one bit each in an i64)
MAX_BITVECTOR_LEAVES = 64


def _bitvector_ir(
    trees: list[Any], n_features: int, sigmoid: float, where: str
) -> tuple[list[str], list[list[float]]]:
    """The "bitvector" layout (QuickScorer's bitvectors, vectorised over rows as in RapidScorer).

    Leaves are numbered left to right; a split that a row does not take left clears the bits
    of its left subtree's leaves, and the row's leaf is the lowest bit left. For `LANES` rows at
    once: every split of a tree is one vector compare and two bit operations, with no branch;
    the leaf values are gathered from the tree's table, and added in tree order.
    """
    per_feature: list[list[float]] = [[] for _ in range(n_features)]
    lines: list[str] = []
    vf = f"<{LANES} x float>"
    gather = f"llvm.masked.gather.v{LANES}f32.v{LANES}p0"
    store = f"llvm.masked.store.v{LANES}f32.p0"
    for k, tree in enumerate(trees):
        leaves = len(tree.leaf_value)
        if leaves > MAX_BITVECTOR_LEAVES:
            raise ValueError(f"tree {k} has {leaves} leaves")
        width = 32 if leaves <= 32 else 64
        vi = f"<{LANES} x i{width}>"
        position, spans = _in_order(tree)
        table = [0.0] * leaves
        for leaf, pos in enumerate(position):
            table[pos] = tree.leaf_value[leaf]
        values = ", ".join(f"float {_hex(v)}" for v in table)
        lines.append(f"@leaves{k} = internal unnamed_addr constant [{leaves} x float] [{values}]")
        lines += [
            f"define internal {vf} @tree{k}(ptr noalias nocapture readonly %cols) noinline {{",
            "entry:",
        ]
        current = f"splat (i{width} -1)"
        loaded: set[int] = set()
        for i, feature in enumerate(tree.split_feature):
            t32, nan_left = _decision(k, tree, i, where)
            per_feature[feature].append(t32)
            if feature not in loaded:
                loaded.add(feature)
                lines += [
                    f"  %pf{feature} = getelementptr inbounds {vf}, ptr %cols, i64 {feature}",
                    f"  %f{feature} = load {vf}, ptr %pf{feature}, align 32",
                ]
            first, last = spans[i]
            keep = ((1 << width) - 1) ^ (((1 << last) - 1) ^ ((1 << first) - 1))
            keep_signed = keep - (1 << width) if keep >= 1 << (width - 1) else keep
            op = "ule" if nan_left else "ole"
            lines += [
                f"  %c{i} = fcmp {op} {vf} %f{feature}, splat (float {_hex(t32)})",
                f"  %s{i} = sext <{LANES} x i1> %c{i} to {vi}",
                f"  %m{i} = or {vi} %s{i}, splat (i{width} {keep_signed})",
                f"  %v{i} = and {vi} {current}, %m{i}",
            ]
            current = f"%v{i}"
        if tree.split_feature:
            lines += [
                f"  %leaf = call {vi} @llvm.cttz.v{LANES}i{width}({vi} {current}, i1 true)",
                f"  %at = getelementptr inbounds float, ptr @leaves{k}, {vi} %leaf",
                f"  %value = call {vf} @{gather}(<{LANES} x ptr> %at, i32 4, <{LANES} x i1> splat (i1 true), "
                f"{vf} poison)",
                f"  ret {vf} %value",
            ]
        else:
            lines.append(f"  ret {vf} splat (float {_hex(table[0])})")
        lines.append("}")
    lines += [
        f"declare <{LANES} x i32> @llvm.cttz.v{LANES}i32(<{LANES} x i32>, i1)",
        f"declare <{LANES} x i64> @llvm.cttz.v{LANES}i64(<{LANES} x i64>, i1)",
        f"declare {vf} @{gather}(<{LANES} x ptr>, i32, <{LANES} x i1>, {vf})",
        f"declare void @{store}({vf}, ptr, i32, <{LANES} x i1>)",
        "define void @forest(ptr noalias nocapture readonly %x, ptr noalias nocapture %out, i64 %n) {",
        "entry:",
        f"  %cols = alloca [{n_features} x {vf}], align 32",
        "  %empty = icmp sle i64 %n, 0",
        "  br i1 %empty, label %done, label %block",
        "block:",
        "  %b = phi i64 [0, %entry], [%b_next, %block]",
    ]
    # each lane's row (the block's first row for lanes past the end: computed, never stored)
    for lane in range(LANES):
        lines += [
            f"  %r{lane} = add i64 %b, {lane}",
            f"  %ok{lane} = icmp slt i64 %r{lane}, %n",
            f"  %row{lane} = select i1 %ok{lane}, i64 %r{lane}, i64 %b",
            f"  %o{lane} = mul i64 %row{lane}, {n_features}",
        ]
    for f in range(n_features):  # the block's columns, one vector per feature
        prev = "poison"
        for lane in range(LANES):
            lines += [
                f"  %i{f}_{lane} = add i64 %o{lane}, {f}",
                f"  %p{f}_{lane} = getelementptr inbounds float, ptr %x, i64 %i{f}_{lane}",
                f"  %x{f}_{lane} = load float, ptr %p{f}_{lane}, align 4",
                f"  %col{f}_{lane} = insertelement {vf} {prev}, float %x{f}_{lane}, i64 {lane}",
            ]
            prev = f"%col{f}_{lane}"
        lines += [
            f"  %at{f} = getelementptr inbounds {vf}, ptr %cols, i64 {f}",
            f"  store {vf} {prev}, ptr %at{f}, align 32",
        ]
    total = "splat (float 0.0)"
    for k in range(len(trees)):  # in tree order, in float32, as ONNX Runtime sums
        lines += [f"  %t{k} = call {vf} @tree{k}(ptr %cols)", f"  %s{k} = fadd {vf} {total}, %t{k}"]
        total = f"%s{k}"
    if sigmoid != 1.0:
        lines.append(f"  %scaled = fmul {vf} {total}, splat (float {_hex(sigmoid)})")
        total = "%scaled"
    mask = "poison"
    for lane in range(LANES):
        lines.append(f"  %mask{lane} = insertelement <{LANES} x i1> {mask}, i1 %ok{lane}, i64 {lane}")
        mask = f"%mask{lane}"
    lines += [
        "  %out_b = getelementptr inbounds float, ptr %out, i64 %b",
        f"  call void @{store}({vf} {total}, ptr %out_b, i32 4, <{LANES} x i1> {mask})",
        f"  %b_next = add i64 %b, {LANES}",
        "  %more = icmp slt i64 %b_next, %n",
        "  br i1 %more, label %block, label %done",
        "done:",
        "  ret void",
        "}",
    ]
    return lines, per_feature


def _tree_blocks(
    k: int, tree: Any, where: str, per_feature: list[list[float]], leaf: Callable[[int, float], list[str]]
) -> list[str]:
    """Basic blocks of tree `k` walking the row at %x_i: n<i> per split, l<j> per leaf (`leaf` ends it)."""
    lines: list[str] = []
    nodes = zip(tree.split_feature, tree.left, tree.right, strict=True)
    for i, (feature, left, right) in enumerate(nodes):
        t32, nan_left = _decision(k, tree, i, where)
        per_feature[feature].append(t32)
        go_left = f"n{left}" if left >= 0 else f"l{~left}"
        go_right = f"n{right}" if right >= 0 else f"l{~right}"
        lines += [
            f"n{i}:",
            f"  %p{i} = getelementptr inbounds float, ptr %x_i, i64 {feature}",
            f"  %v{i} = load float, ptr %p{i}, align 4",
            f"  %c{i} = fcmp {'ule' if nan_left else 'ole'} float %v{i}, {_hex(t32)}",
            f"  br i1 %c{i}, label %{go_left}, label %{go_right}",
        ]
    for j, value in enumerate(tree.leaf_value):
        lines += [f"l{j}:", *leaf(j, value)]
    return lines


def forest_ir(text: str, where: str = "model text", layout: str = "bitvector") -> ForestSource:
    """LLVM IR of a LightGBM binary model's raw score, `forest(x, out, n)` (see the module docstring).

    `out[i]` gets row i's raw score (times the model's sigmoid scale), summed in float32 in tree
    order. Layout "bitvector": see `_bitvector_ir`; "tree": for each block of `BLOCK_ROWS` rows,
    each tree in turn walks every row of the block and adds its leaf to the row's sum (one call
    per tree and block); "row" and "row-inline": each row calls every tree in turn.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    trees, n_features, sigmoid = parse_trees(text, where)
    if layout == "bitvector" and max(len(t.leaf_value) for t in trees) > MAX_BITVECTOR_LEAVES:
        layout = "tree"  # wider trees: native branches
    if layout == "bitvector":
        lines, per_feature = _bitvector_ir(trees, n_features, sigmoid, where)
        return ForestSource(
            "\n".join(lines) + "\n",
            n_features,
            len(trees),
            tuple(np.unique(np.asarray(t, dtype=np.float32)) for t in per_feature),
        )
    per_feature = [[] for _ in range(n_features)]
    lines = []
    for k, tree in enumerate(trees):
        if layout == "tree":
            lines += [
                f"define internal void @tree{k}(ptr noalias nocapture readonly %x, "
                "ptr noalias nocapture %acc, i64 %n) noinline {",
                "entry:",
                "  br label %row",
                "row:",
                "  %i = phi i64 [0, %entry], [%next, %add]",
                f"  %offset = mul i64 %i, {n_features}",
                "  %x_i = getelementptr inbounds float, ptr %x, i64 %offset",
                "  br label %" + ("n0" if tree.split_feature else "l0"),
            ]
            leaves = len(tree.leaf_value)
            lines += _tree_blocks(k, tree, where, per_feature, lambda j, v: ["  br label %add"])
            phi = ", ".join(f"[{_hex(v)}, %l{j}]" for j, v in enumerate(tree.leaf_value))
            lines += [
                "add:",
                f"  %leaf = phi float {phi}"
                if leaves > 1
                else f"  %leaf = fadd float 0.0, {_hex(tree.leaf_value[0])}",
                "  %acc_i = getelementptr inbounds float, ptr %acc, i64 %i",
                "  %sum = load float, ptr %acc_i, align 4",
                "  %new = fadd float %sum, %leaf",
                "  store float %new, ptr %acc_i, align 4",
                "  %next = add i64 %i, 1",
                "  %more = icmp slt i64 %next, %n",
                "  br i1 %more, label %row, label %done",
                "done:",
                "  ret void",
                "}",
            ]
        else:
            inline = "" if layout == "row-inline" else " noinline"
            lines += [
                f"define internal float @tree{k}(ptr noalias nocapture readonly %x_i){inline} {{",
                "entry:",
                "  br label %" + ("n0" if tree.split_feature else "l0"),
            ]
            lines += _tree_blocks(k, tree, where, per_feature, lambda j, v: [f"  ret float {_hex(v)}"])
            lines.append("}")
    lines += [
        "define void @forest(ptr noalias nocapture readonly %x, ptr noalias nocapture %out, i64 %n) {",
        "entry:",
        "  %empty = icmp sle i64 %n, 0",
        "  br i1 %empty, label %done, label %start",
    ]
    scale = f"fmul float %s, {_hex(sigmoid)}" if sigmoid != 1.0 else "fadd float %s, 0.0"
    if layout == "tree":
        lines += [
            "start:",
            "  call void @llvm.memset.p0.i64(ptr %out, i8 0, i64 %bytes, i1 false)",
            "  br label %block",
            "block:",
            "  %b = phi i64 [0, %start], [%b_next, %block]",
            "  %x_b = getelementptr inbounds float, ptr %x, i64 %x_off",
            "  %out_b = getelementptr inbounds float, ptr %out, i64 %b",
        ]
        # (the offsets are computed below the phi: LLVM wants phis first)
        lines[-2:-2] = [
            f"  %x_off = mul i64 %b, {n_features}",
            "  %left = sub i64 %n, %b",
            f"  %small = icmp slt i64 %left, {BLOCK_ROWS}",
            f"  %m = select i1 %small, i64 %left, i64 {BLOCK_ROWS}",
        ]
        lines += [f"  call void @tree{k}(ptr %x_b, ptr %out_b, i64 %m)" for k in range(len(trees))]
        lines += [
            f"  %b_next = add i64 %b, {BLOCK_ROWS}",
            "  %more = icmp slt i64 %b_next, %n",
            "  br i1 %more, label %block, label %scale",
            "scale:",
            "  %i = phi i64 [0, %block], [%i_next, %scale]",
            "  %o = getelementptr inbounds float, ptr %out, i64 %i",
            "  %s = load float, ptr %o, align 4",
            f"  %scaled = {scale}",
            "  store float %scaled, ptr %o, align 4",
            "  %i_next = add i64 %i, 1",
            "  %again = icmp slt i64 %i_next, %n",
            "  br i1 %again, label %scale, label %done",
            "done:",
            "  ret void",
            "}",
            "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)",
        ]
        lines.insert(lines.index("start:") + 1, "  %bytes = shl i64 %n, 2")
    else:
        lines += [
            "start:",
            "  br label %row",
            "row:",
            "  %i = phi i64 [0, %start], [%next, %row]",
            f"  %offset = mul i64 %i, {n_features}",
            "  %x_i = getelementptr inbounds float, ptr %x, i64 %offset",
        ]
        total = "0.0"
        for k in range(len(trees)):  # in tree order, in float32, as ONNX Runtime sums
            lines += [f"  %t{k} = call float @tree{k}(ptr %x_i)", f"  %s{k} = fadd float {total}, %t{k}"]
            total = f"%s{k}"
        lines += [
            f"  %s = fadd float {total}, 0.0",
            f"  %scaled = {scale}",
            "  %out_i = getelementptr inbounds float, ptr %out, i64 %i",
            "  store float %scaled, ptr %out_i, align 4",
            "  %next = add i64 %i, 1",
            "  %more = icmp slt i64 %next, %n",
            "  br i1 %more, label %row, label %done",
            "done:",
            "  ret void",
            "}",
        ]
    thresholds = tuple(np.unique(np.asarray(t, dtype=np.float32)) for t in per_feature)
    return ForestSource("\n".join(lines) + "\n", n_features, len(trees), thresholds)


def _target_machine() -> Any:
    """The CPU target the engine's numba kernels are compiled for (`engine.jit.cpu_target`)."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    name = os.environ.get("NUMBA_CPU_NAME", "")
    if name:
        cpu, features = name, os.environ.get("NUMBA_CPU_FEATURES", "")
    else:
        cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=OPT_LEVEL, jit=True)


def _compile(ir: str) -> bytes:
    """Optimise the IR and emit an object file (under numba's compiler lock: one LLVM at a time)."""
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        machine = _target_machine()
        module = llvm.parse_assembly(ir)
        module.verify()
        builder = llvm.create_pass_builder(
            machine, llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
        )
        builder.getModulePassManager().run(module, builder)
        data: bytes = machine.emit_object(module)
        return data


def _cache_file(key: str) -> Path:
    return jit.CACHE_DIR / "forests" / f"{key}.o"


def _store(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache: compile again at the next start
        log.warning("cannot keep the compiled model in %s (%s)", path.parent, exc)


@compiled
def _logistic(raw: F32) -> None:
    """ONNX Runtime's logistic, in place, in float32: 1 / (1 + exp(-|s|)), mirrored for s < 0."""
    one = np.float32(1.0)
    for i in range(raw.shape[0]):
        s = raw[i]
        v = one / (one + np.exp(-abs(s)))
        raw[i] = one - v if s < 0 else v


class CompiledForest:
    """A LightGBM binary model compiled to machine code: float32 features in, probabilities out."""

    def __init__(self, source: ForestSource, engine: Any, origin: str, seconds: float) -> None:
        self.source = source
        self.n_features = source.n_features
        self.key = source.key
        #: "compiled" (here, now) or "cached" (machine code from the kernel cache)
        self.origin = origin
        #: how long compiling (or loading the cached machine code) took
        self.seconds = seconds
        self._engine = engine  # keeps the machine code mapped
        address = engine.get_function_address("forest")
        if not address:
            raise BundleError("compiled model has no forest function")
        self._forest: _Forest = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
            address
        )

    @staticmethod
    def from_text(text: str, where: str = "model text") -> CompiledForest:
        """Compile a LightGBM model text, or load its machine code from the kernel cache."""
        started = time.perf_counter()
        source = forest_ir(text, where)
        cached = _cache_file(source.key)
        origin = "cached"
        try:
            data = cached.read_bytes()
        except OSError:
            data = b""
        if not data:
            origin = "compiled"
            try:
                data = _compile(source.ir)
            except RuntimeError as exc:  # llvmlite's parse / verify errors
                raise BundleError(f"{where}: LLVM cannot compile the model: {exc}") from exc
            _store(cached, data)
        from numba.core.compiler_lock import global_compiler_lock

        with global_compiler_lock:  # LLVM's state is shared with numba's compiler
            engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine())
            engine.add_object_file(llvm.ObjectFileRef.from_data(data))
            engine.finalize_object()
        return CompiledForest(source, engine, origin, time.perf_counter() - started)

    @staticmethod
    def load(path: Path) -> CompiledForest:
        try:
            text = path.read_text()
        except OSError as exc:
            raise BundleError(f"{path}: unreadable: {exc}") from exc
        return CompiledForest.from_text(text, str(path))

    def predict(self, features: F32) -> F32:
        """Failure probability for each row of a float32 [n, F] matrix."""
        x = features
        if not (x.dtype == np.float32 and x.flags.c_contiguous):
            x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected [n, {self.n_features}] features, got {list(x.shape)}")
        out = np.empty(x.shape[0], dtype=np.float32)
        self._forest(x.ctypes.data, out.ctypes.data, x.shape[0])
        _logistic(out)
        return out

    def describe(self) -> str:
        return f"{self.source.n_trees} trees, {self.origin} in {self.seconds:.2f} s"


def random_rows(source: ForestSource, n: int = RANDOM_ROWS, seed: int = RANDOM_SEED) -> F32:
    """Rows that take every split both ways and at its edge: see the module docstring."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, source.n_features), dtype=np.float32)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    for f, thresholds in enumerate(source.thresholds):
        finite = thresholds[np.isfinite(thresholds) & (np.abs(thresholds) < 1e30)]
        if finite.size == 0:
            finite = np.zeros(1, dtype=np.float32)
        lo, hi = float(finite.min()), float(finite.max())
        margin = max(hi - lo, 1.0) * 0.1
        picked = rng.choice(finite, n)
        spread = rng.uniform(lo - margin, hi + margin, n).astype(np.float32)
        kind = rng.random(n)
        column = np.where(
            kind < 0.25,
            picked,
            np.where(
                kind < 0.4,
                np.nextafter(picked, up),
                np.where(kind < 0.55, np.nextafter(picked, down), spread),
            ),
        )
        special = rng.random(n)
        column[special < 0.1] = np.nan
        column[(special >= 0.1) & (special < 0.105)] = np.inf
        column[(special >= 0.105) & (special < 0.11)] = -np.inf
        x[:, f] = column
    return x


def check_parity(
    forest: CompiledForest,
    reference: Callable[[F32], npt.NDArray[Any]],
    rows: Mapping[str, F32],
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """The compiled model against `reference` (ONNX Runtime) on each named set of rows, plus random rows.

    Returns the figures the manifest records; `passed` says whether every row was within
    `tolerance` (a non-finite probability never is).
    """
    sets = {**rows, "random": random_rows(forest.source)}
    out: dict[str, Any] = {"rows": {}, "max_abs_diff": 0.0, "threshold": tolerance, "method": PARITY_METHOD}
    worst = 0.0
    for name, x in sets.items():
        if x.shape[0] == 0:
            continue
        got = forest.predict(x).astype(np.float64)
        want = np.asarray(reference(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float64)
        diff = np.where(np.isfinite(got), np.abs(got - want), np.inf)
        top = float(diff.max())
        out["rows"][name] = {
            "rows": int(diff.size),
            "max_abs_diff": top,
            "identical": int((got == want).sum()),
        }
        worst = max(worst, top)
    out["max_abs_diff"] = worst
    out["passed"] = bool(worst <= tolerance)
    out["generator"] = GENERATOR_VERSION
    return out


def parity_summary(parity: Mapping[str, Any]) -> str:
    """One line for the log: rows per set and the largest difference."""
    sets = ", ".join(f"{v['rows']:,} {k}" for k, v in parity["rows"].items())
    verdict = "within" if parity["passed"] else "BEYOND"
    return (
        f"max |compiled - ONNX Runtime| {parity['max_abs_diff']:.3g} on {sets} rows "
        f"({verdict} {parity['threshold']:g})"
    )
