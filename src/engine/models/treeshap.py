"""TreeSHAP contributions of the bundle's LightGBM model, from its model text, in compiled kernels.

Why the engine's own: LightGBM's `pred_contrib` costs several times these kernels' CPU per row
for the default model (141 trees of 31 leaves, paths up to 17 deep; docs/design-figures.md,
`loadtest/bench.py --scenarios explain_cost`) and would make lightgbm and libgomp runtime
dependencies of the image. These kernels compute the same path-dependent TreeSHAP values
(Lundberg et al. 2020, "From local explanations to global understanding with
explainable AI for trees", Algorithm 2), checked against `pred_contrib` in
tests/test_reasons.py, leaf by leaf, with the part that depends only on the model
computed once per bundle (the idea of FastTreeSHAP v2, Yang 2021, arXiv:2109.09847):

- For a leaf l with value v, the unique features U on its path (d = |U|), each
  feature u's zero fraction z_u (the product of child/parent data counts over
  u's edges on the path) and one fraction o_u (1 when the row follows every one
  of u's edges, else 0), the leaf's part of feature i's SHAP value is

      v * (o_i - z_i) * sum_{S subset of U - {i}} w(|S|, d) * prod_{j in S} o_j * prod_{j in U - S - {i}} z_j

  with the Shapley weights w(k, d) = k! (d - k - 1)! / d!.
- Only subsets of the features the row follows (P) survive. With

      T_l(Q) = v * sum_{S subset of Q} w(|S|, d) * prod_{j in U - S} z_j      for Q a subset of U,

  every i outside P gets -T_l(P), and every i in P gets (1 - z_i) / z_i * T_l(P - {i}).

T_l depends on the model alone: `TreeExplainer.from_text` tabulates it for each leaf
and each of the 2^d subsets (262,144 values, 2 MB, for the default model, whose
paths hold at most 11 distinct features). Explaining a row is then, per leaf, the
pattern P of the edges it follows, one table entry per feature of the leaf, and a
multiply-add: no polynomial per row. Two kernels run it: `_tree_shap_rows` row by
row, and, from `BLOCK_MIN_ROWS` rows on, `_tree_shap_block`, all rows at once per
leaf with no branch that depends on a row (its inner loops run over contiguous
rows). `loadtest/bench.py --scenarios explain_cost` measures both against `pred_contrib` side by side.
Contributions are in the model's raw (log-odds) space; with the bias they add
up to the raw score. `engine.scoring.servable` checks on the bundle's golden rows
that they reproduce ONNX Runtime's probabilities before the bundle may serve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.errors import BundleError
from engine.jit import compiled

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: LightGBM's decision_type bits: categorical, default left, missing type (0 none, 1 zero, 2 NaN)
_CATEGORICAL = 1
_DEFAULT_LEFT = 2
_MISSING_ZERO = 1
_MISSING_NAN = 2
#: LightGBM treats |x| <= this as zero for missing type "zero"
_ZERO = 1e-35
B = npt.NDArray[np.bool_]
#: what the kernels take, in this order: nodes (feature, threshold, default left, missing type),
#: leaves' edges (start per leaf, node, went left, the slot of the edge's feature), leaves'
#: unique features (start per leaf, feature, (1 - z) / z), leaves' tables (start per leaf, T)
_Arrays = tuple[I64, F64, B, I64, I64, I64, B, I64, I64, I64, F64, I64, F64]
#: LightGBM paths hold a feature at most once per slot; a leaf with more distinct features than
#: this would need a table of 2^d entries that the engine refuses to build
MAX_PATH_FEATURES = 20

#: from this many rows on, `_tree_shap_block` (all rows at once, per leaf) beats `_tree_shap_rows`
BLOCK_MIN_ROWS = 2


@dataclass(frozen=True, slots=True)
class _Tree:
    split_feature: list[int]
    threshold: list[float]
    decision_type: list[int]
    left: list[int]
    right: list[int]
    leaf_value: list[float]
    leaf_count: list[float]
    internal_count: list[float]


def parse_trees(text: str, where: str) -> tuple[list[_Tree], int, float]:
    """The trees of a LightGBM model text, its feature count and its sigmoid scale."""
    header: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    current = header
    for line in text.splitlines():
        if line.startswith("Tree="):
            current = {}
            blocks.append(current)
        elif line.startswith("end of trees"):
            break
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
    try:
        n_features = int(header["max_feature_idx"]) + 1
        objective = header.get("objective", "")
        if int(header.get("num_class", "1")) != 1 or not objective.startswith("binary"):
            raise BundleError(f"{where}: only binary LightGBM models are explained (objective {objective!r})")
        if "average_output" in header:
            raise BundleError(f"{where}: random-forest (average_output) models are not explained")
        sigmoid = 1.0
        for part in objective.split()[1:]:
            if part.startswith("sigmoid:"):
                sigmoid = float(part.split(":", 1)[1])
        trees: list[_Tree] = []
        for block in blocks:
            if int(block.get("num_cat", "0")) != 0:
                raise BundleError(f"{where}: categorical splits are not explained")

            def ints(key: str, b: dict[str, str] = block) -> list[int]:
                return [int(v) for v in b[key].split()] if b.get(key) else []

            def floats(key: str, b: dict[str, str] = block) -> list[float]:
                return [float(v) for v in b[key].split()] if b.get(key) else []

            tree = _Tree(
                ints("split_feature"),
                floats("threshold"),
                ints("decision_type"),
                ints("left_child"),
                ints("right_child"),
                floats("leaf_value"),
                floats("leaf_count"),
                floats("internal_count"),
            )
            leaves = int(block["num_leaves"])
            if len(tree.leaf_value) != leaves or any(
                len(a) != leaves - 1
                for a in (tree.split_feature, tree.threshold, tree.decision_type, tree.left, tree.right)
            ):
                raise BundleError(f"{where}: tree {len(trees)} is inconsistent")
            if leaves > 1 and (len(tree.leaf_count) != leaves or len(tree.internal_count) != leaves - 1):
                raise BundleError(f"{where}: tree {len(trees)} has no data counts (needed for TreeSHAP)")
            if any(f < 0 or f >= n_features for f in tree.split_feature):
                raise BundleError(f"{where}: tree {len(trees)} splits on an unknown feature")
            trees.append(tree)
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{where}: not a LightGBM model text: {exc!r}") from exc
    if not trees:
        raise BundleError(f"{where}: no trees")
    return trees, n_features, sigmoid


@dataclass(frozen=True, slots=True, eq=False)
class TreeExplainer:
    """A LightGBM binary model flattened for the TreeSHAP kernel: nodes, leaves, their paths."""

    n_features: int
    #: raw score of a row with no feature known: sum over trees of the cover-weighted leaf values
    bias: float
    #: probability = 1 / (1 + exp(-sigmoid * raw))
    sigmoid: float
    # internal nodes of all trees
    node_feature: I64
    node_threshold: F64
    node_default_left: npt.NDArray[np.bool_]
    node_missing: I64
    # leaves of all trees (leaf l's value, its tree's first node, its path's edges and unique features)
    leaf_value: F64
    edge_start: I64  # [leaves + 1] into edge_node / edge_left / edge_slot
    edge_node: I64
    edge_left: npt.NDArray[np.bool_]
    edge_slot: I64  # the edge's feature's position among its leaf's unique features
    unique_start: I64  # [leaves + 1] into unique_feature / unique_zero
    unique_feature: I64
    unique_zero: F64
    #: (1 - z) / z per unique feature of each leaf
    unique_ratio: F64
    table_start: I64  # [leaves + 1] into table
    #: T_l(Q) for each leaf l and each subset Q of its unique features (bit u: the leaf's u-th)
    table: F64

    @staticmethod
    def from_text(text: str, where: str = "model text") -> TreeExplainer:
        trees, n_features, sigmoid = parse_trees(text, where)
        node_feature: list[int] = []
        node_threshold: list[float] = []
        node_default_left: list[bool] = []
        node_missing: list[int] = []
        leaf_value: list[float] = []
        edge_start = [0]
        edge_node: list[int] = []
        edge_left: list[bool] = []
        edge_slot: list[int] = []
        unique_start = [0]
        unique_feature: list[int] = []
        unique_zero: list[float] = []
        bias = 0.0
        d_max = 0
        for tree in trees:
            base = len(node_feature)
            for f, thr, dt in zip(tree.split_feature, tree.threshold, tree.decision_type, strict=True):
                if dt & _CATEGORICAL:
                    raise BundleError(f"{where}: categorical splits are not explained")
                node_feature.append(f)
                node_threshold.append(thr)
                node_default_left.append(bool(dt & _DEFAULT_LEFT))
                node_missing.append((dt >> 2) & 3)
            if len(tree.leaf_value) == 1:  # a stump: a constant, all bias
                bias += tree.leaf_value[0]
                continue
            # depth-first from the root: (child, path of (node, went left))
            root_count = tree.internal_count[0]
            stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
            while stack:
                node, path = stack.pop()
                for child, left in ((tree.left[node], True), (tree.right[node], False)):
                    child_path = [*path, (node, left)]
                    if child >= 0:
                        stack.append((child, child_path))
                        continue
                    leaf = ~child
                    slots: dict[int, int] = {}
                    zeros: list[float] = []
                    for i, (n, went_left) in enumerate(child_path):
                        nxt = child_path[i + 1][0] if i + 1 < len(child_path) else None
                        below = tree.internal_count[nxt] if nxt is not None else tree.leaf_count[leaf]
                        fraction = below / tree.internal_count[n]
                        f = tree.split_feature[n]
                        if f not in slots:
                            slots[f] = len(zeros)
                            zeros.append(1.0)
                        zeros[slots[f]] *= fraction
                        edge_node.append(base + n)
                        edge_left.append(went_left)
                        edge_slot.append(slots[f])
                    if min(zeros) <= 0.0:
                        raise BundleError(f"{where}: a leaf with no training data cannot be explained")
                    edge_start.append(len(edge_node))
                    unique_feature.extend(slots)
                    unique_zero.extend(zeros)
                    unique_start.append(len(unique_feature))
                    leaf_value.append(tree.leaf_value[leaf])
                    bias += tree.leaf_value[leaf] * tree.leaf_count[leaf] / root_count
                    d_max = max(d_max, len(zeros))
        if d_max > MAX_PATH_FEATURES:
            raise BundleError(
                f"{where}: a path holds {d_max} distinct features; reasons are computed for at most "
                f"{MAX_PATH_FEATURES}"
            )
        weights = np.zeros((d_max + 1, d_max + 1))
        for d in range(1, d_max + 1):
            for k in range(d):
                weights[d, k] = math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
        starts = np.asarray(unique_start, dtype=np.int64)
        zero_fraction = np.asarray(unique_zero, dtype=np.float64)
        values = np.asarray(leaf_value, dtype=np.float64)
        table_start, table = _leaf_tables(values, starts, zero_fraction, weights)
        return TreeExplainer(
            n_features,
            bias,
            sigmoid,
            np.asarray(node_feature, dtype=np.int64),
            np.asarray(node_threshold, dtype=np.float64),
            np.asarray(node_default_left, dtype=np.bool_),
            np.asarray(node_missing, dtype=np.int64),
            values,
            np.asarray(edge_start, dtype=np.int64),
            np.asarray(edge_node, dtype=np.int64),
            np.asarray(edge_left, dtype=np.bool_),
            np.asarray(edge_slot, dtype=np.int64),
            starts,
            np.asarray(unique_feature, dtype=np.int64),
            zero_fraction,
            (1.0 - zero_fraction) / zero_fraction,
            table_start,
            table,
        )

    @staticmethod
    def load(path: Path) -> TreeExplainer:
        try:
            text = path.read_text()
        except OSError as exc:
            raise BundleError(f"{path}: unreadable: {exc}") from exc
        return TreeExplainer.from_text(text, str(path))

    @property
    def _arrays(self) -> _Arrays:
        return (
            self.node_feature,
            self.node_threshold,
            self.node_default_left,
            self.node_missing,
            self.edge_start,
            self.edge_node,
            self.edge_left,
            self.edge_slot,
            self.unique_start,
            self.unique_feature,
            self.unique_ratio,
            self.table_start,
            self.table,
        )

    def contributions(self, features: npt.NDArray[np.float32]) -> F64:
        """[n, F]: each feature's TreeSHAP contribution to each row's raw (log-odds) score."""
        x = np.ascontiguousarray(features)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected [n, {self.n_features}] features, got {list(x.shape)}")
        out = np.zeros((x.shape[0], self.n_features), dtype=np.float64)
        kernel = _tree_shap_block if x.shape[0] >= BLOCK_MIN_ROWS else _tree_shap_rows
        kernel(x, self._arrays, out)
        return out

    def probability(self, contributions: F64) -> F64:
        """The failure probability that rows' contributions (plus the bias) add up to."""
        raw: F64 = contributions.sum(axis=1) + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-self.sigmoid * raw)), dtype=np.float64)


@compiled
def _goes_left(v: float, threshold: float, missing: int, default_left: bool) -> bool:
    """LightGBM's NumericalDecision: whether a row with value `v` goes left at a numeric split."""
    nan = v != v
    if nan and missing != _MISSING_NAN:
        v = 0.0
        nan = False
    if (missing == _MISSING_ZERO and -_ZERO <= v <= _ZERO) or (missing == _MISSING_NAN and nan):
        return default_left
    return v <= threshold


@compiled
def _leaf_tables(leaf_value: F64, unique_start: I64, unique_zero: F64, weights: F64) -> tuple[I64, F64]:
    """Each leaf's T_l(Q) for every subset Q of its unique features (see the module's docstring).

    Q's bit u stands for the leaf's u-th unique feature. T_l(Q) = v * sum_k w(k, d) [t^k] p_Q(t)
    with p_Q(t) = prod_{j in Q} (z_j + t) * prod_{j in U - Q} z_j, built one factor at a time
    (degree |Q| <= d - 1 wherever a kernel reads it; T_l(U) is never read).
    """
    n_leaves = leaf_value.shape[0]
    start = np.zeros(n_leaves + 1, dtype=np.int64)
    for leaf in range(n_leaves):
        start[leaf + 1] = start[leaf] + (1 << (unique_start[leaf + 1] - unique_start[leaf]))
    table = np.zeros(start[n_leaves], dtype=np.float64)
    poly = np.empty(weights.shape[0] + 1, dtype=np.float64)
    for leaf in range(n_leaves):
        u0 = unique_start[leaf]
        d = unique_start[leaf + 1] - u0
        for q in range(1 << d):
            poly[0] = 1.0
            m = 0
            for u in range(d):
                z = unique_zero[u0 + u]
                if (q >> u) & 1:  # times (z + t)
                    poly[m + 1] = poly[m]
                    for k in range(m, 0, -1):
                        poly[k] = poly[k] * z + poly[k - 1]
                    poly[0] *= z
                    m += 1
                else:  # times z
                    for k in range(m + 1):
                        poly[k] *= z
            total = 0.0
            for k in range(min(m, d - 1) + 1):
                total += weights[d, k] * poly[k]
            table[start[leaf] + q] = leaf_value[leaf] * total
    return start, table


@compiled
def _tree_shap_rows(x: npt.NDArray[np.float32], model: _Arrays, out: F64) -> None:
    """Each row's contributions, row by row (see the module's docstring)."""
    (
        node_feature,
        node_threshold,
        node_default_left,
        node_missing,
        edge_start,
        edge_node,
        edge_left,
        edge_slot,
        unique_start,
        unique_feature,
        unique_ratio,
        table_start,
        table,
    ) = model
    n_nodes = node_feature.shape[0]
    n_leaves = table_start.shape[0] - 1
    goes_left = np.empty(n_nodes, dtype=np.bool_)
    acc = np.zeros(2 * x.shape[1], dtype=np.float64)  # two accumulators: leaf by leaf, alternating
    for r in range(x.shape[0]):
        # every split's decision for this row, as LightGBM's NumericalDecision takes it
        for j in range(n_nodes):
            goes_left[j] = _goes_left(
                float(x[r, node_feature[j]]), node_threshold[j], node_missing[j], node_default_left[j]
            )
        acc[:] = 0.0
        for leaf in range(n_leaves):
            u0 = unique_start[leaf]
            d = unique_start[leaf + 1] - u0
            followed = (1 << d) - 1  # P, bit u for the leaf's u-th feature
            for e in range(edge_start[leaf], edge_start[leaf + 1]):
                missed = np.int64(goes_left[edge_node[e]] != edge_left[e])
                followed &= ~(missed << edge_slot[e])
            t0 = table_start[leaf]
            base = (leaf & 1) * x.shape[1]
            for u in range(d):
                # followed: (1 - z) / z * T(P - {u}); not followed: -T(P), one table read either way
                inside = (followed >> u) & 1
                value = table[t0 + (followed ^ (inside << u))]
                acc[base + unique_feature[u0 + u]] += value * (inside * (unique_ratio[u0 + u] + 1.0) - 1.0)
        for f in range(x.shape[1]):
            out[r, f] += acc[f] + acc[x.shape[1] + f]


@compiled
def _tree_shap_block(x: npt.NDArray[np.float32], model: _Arrays, out: F64) -> None:
    """`_tree_shap_rows`'s values for many rows at once: leaf by leaf, every step a loop over the rows.

    No branch depends on a row: the pattern of each row is built with masks, and a feature's
    update reads T(P with u's bit cleared when u is followed) times (1 - z) / z or -1, with the
    choice made by arithmetic on the bit. The inner loops run over contiguous rows.
    """
    (
        node_feature,
        node_threshold,
        node_default_left,
        node_missing,
        edge_start,
        edge_node,
        edge_left,
        edge_slot,
        unique_start,
        unique_feature,
        unique_ratio,
        table_start,
        table,
    ) = model
    n = x.shape[0]
    n_nodes = node_feature.shape[0]
    n_leaves = table_start.shape[0] - 1
    columns = np.ascontiguousarray(x.T).astype(np.float64)
    goes_right = np.empty((n_nodes, n), dtype=np.int64)  # 1: the row goes right at the node
    for j in range(n_nodes):
        f = node_feature[j]
        for r in range(n):
            left = _goes_left(columns[f, r], node_threshold[j], node_missing[j], node_default_left[j])
            goes_right[j, r] = 0 if left else 1
    followed = np.empty(n, dtype=np.int64)
    acc = np.zeros((x.shape[1], n), dtype=np.float64)
    for leaf in range(n_leaves):
        u0 = unique_start[leaf]
        d = unique_start[leaf + 1] - u0
        full = (np.int64(1) << d) - 1
        for r in range(n):
            followed[r] = full
        for e in range(edge_start[leaf], edge_start[leaf + 1]):
            node = edge_node[e]
            bit = np.int64(1) << edge_slot[e]
            right = np.int64(0) if edge_left[e] else np.int64(1)  # missed when the row went the other way
            for r in range(n):
                followed[r] &= ~((goes_right[node, r] ^ right) * bit)
        t0 = table_start[leaf]
        for u in range(d):
            f = unique_feature[u0 + u]
            gain = unique_ratio[u0 + u] + 1.0
            bit = np.int64(1) << u
            for r in range(n):
                p = followed[r]
                inside = (p >> u) & 1
                # followed: (1 - z) / z * T(P - {u}); not: -T(P); one table read, no branch
                acc[f, r] += table[t0 + (p ^ (bit * inside))] * (inside * gain - 1.0)
    for f in range(x.shape[1]):
        for r in range(n):
            out[r, f] += acc[f, r]
