"""TreeSHAP contributions of the bundle's LightGBM model, from its model text, in one compiled kernel.

Why the engine's own: LightGBM's `pred_contrib` costs about 0.7 ms of CPU per row
for the default model (141 trees of 31 leaves, paths up to 17 deep; one thread,
lightgbm 4.6 on this project's VM) and would make lightgbm and libgomp runtime
dependencies of the image. This kernel computes the same path-dependent TreeSHAP values
(Lundberg et al. 2020, "From local explanations to global understanding with
explainable AI for trees", Algorithm 2), checked against `pred_contrib` in
tests/test_reasons.py, in a leaf-by-leaf form that uses the fact that a row
either follows an edge or not:

- For a leaf l with value v, the unique features U on its path (d = |U|), each
  feature u's zero fraction z_u (the product of child/parent data counts over
  u's edges on the path) and one fraction o_u (1 when the row follows every one
  of u's edges, else 0), the leaf's part of feature i's SHAP value is

      v * (o_i - z_i) * sum_{S subset of U - {i}} w(|S|, d) * prod_{j in S} o_j * prod_{j in U - S - {i}} z_j

  with the Shapley weights w(k, d) = k! (d - k - 1)! / d!.
- Let P be the features the row follows. Only subsets of P survive; with
  Z = prod of z over U - P and the polynomial p(t) = prod_{j in P} (z_j + t):
  * every i outside P gets  -v * Z * sum_k w(k, d) [t^k] p(t)   (one value for all of them);
  * every i in P gets  v * (1 - z_i) * Z * sum_k w(k, d) [t^k] (p(t) / (z_i + t)).

So a leaf costs O(d |P|) multiply-adds and no recursion. Two kernels compute it:
`_tree_shap_rows` row by row (about 0.25-0.35 ms of CPU per row for the default
model) and, from `BLOCK_MIN_ROWS` rows on, `_tree_shap_block`, all rows at once
without row-dependent branches (0.10-0.14 ms per row). `loadtest/explain_cost.py`
measures both against `pred_contrib` side by side; tests/test_reasons.py checks
the values of both against it.
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
from engine.features.kernels import compiled

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
#: leaves (value, edge start), edges (node, left, slot), unique features (start, feature, zero
#: fraction), the Shapley weights
_Arrays = tuple[I64, F64, B, I64, F64, I64, I64, B, I64, I64, I64, F64, F64]

#: from this many rows on, `_tree_shap_block` (all rows at once, per leaf) beats `_tree_shap_rows`
BLOCK_MIN_ROWS = 8


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


def _parse_trees(text: str, where: str) -> tuple[list[_Tree], int, float]:
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
    weights: F64  # [d_max + 1, d_max + 1]: w(k, d) at [d, k]

    @staticmethod
    def from_text(text: str, where: str = "model text") -> TreeExplainer:
        trees, n_features, sigmoid = _parse_trees(text, where)
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
        weights = np.zeros((d_max + 1, d_max + 1))
        for d in range(1, d_max + 1):
            for k in range(d):
                weights[d, k] = math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
        return TreeExplainer(
            n_features,
            bias,
            sigmoid,
            np.asarray(node_feature, dtype=np.int64),
            np.asarray(node_threshold, dtype=np.float64),
            np.asarray(node_default_left, dtype=np.bool_),
            np.asarray(node_missing, dtype=np.int64),
            np.asarray(leaf_value, dtype=np.float64),
            np.asarray(edge_start, dtype=np.int64),
            np.asarray(edge_node, dtype=np.int64),
            np.asarray(edge_left, dtype=np.bool_),
            np.asarray(edge_slot, dtype=np.int64),
            np.asarray(unique_start, dtype=np.int64),
            np.asarray(unique_feature, dtype=np.int64),
            np.asarray(unique_zero, dtype=np.float64),
            weights,
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
            self.leaf_value,
            self.edge_start,
            self.edge_node,
            self.edge_left,
            self.edge_slot,
            self.unique_start,
            self.unique_feature,
            self.unique_zero,
            self.weights,
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
def _tree_shap_rows(x: npt.NDArray[np.float32], model: _Arrays, out: F64) -> None:
    """Each row's contributions, row by row (see the module's docstring)."""
    (
        node_feature,
        node_threshold,
        node_default_left,
        node_missing,
        leaf_value,
        edge_start,
        edge_node,
        edge_left,
        edge_slot,
        unique_start,
        unique_feature,
        unique_zero,
        weights,
    ) = model
    n_nodes = node_feature.shape[0]
    d_max = weights.shape[0]
    goes_left = np.empty(n_nodes, dtype=np.bool_)
    follows = np.empty(d_max, dtype=np.bool_)
    poly = np.empty(d_max + 1, dtype=np.float64)
    for r in range(x.shape[0]):
        # every split's decision for this row, as LightGBM's NumericalDecision takes it
        for j in range(n_nodes):
            goes_left[j] = _goes_left(
                float(x[r, node_feature[j]]), node_threshold[j], node_missing[j], node_default_left[j]
            )
        for leaf in range(leaf_value.shape[0]):
            u0 = unique_start[leaf]
            d = unique_start[leaf + 1] - u0
            for u in range(d):
                follows[u] = True
            for e in range(edge_start[leaf], edge_start[leaf + 1]):
                follows[edge_slot[e]] &= goes_left[edge_node[e]] == edge_left[e]
            # Z * p(t), Z folded in: times (z + t) for a followed feature, times z for another
            poly[0] = 1.0
            m = 0
            for u in range(d):
                z = unique_zero[u0 + u]
                t = 1.0 if follows[u] else 0.0
                poly[m + 1] = 0.0
                for k in range(m + 1, 0, -1):
                    poly[k] = poly[k] * z + t * poly[k - 1]
                poly[0] *= z
                m += follows[u]
            value = leaf_value[leaf]
            outside = 0.0
            for k in range(m + 1):
                outside += weights[d, k] * poly[k]
            for u in range(d):
                f = unique_feature[u0 + u]
                if follows[u]:
                    z = unique_zero[u0 + u]
                    # Z * p(t) / (z + t), highest coefficient first, weighted as it goes
                    q = poly[m]
                    s = weights[d, m - 1] * q
                    for k in range(m - 1, 0, -1):
                        q = poly[k] - z * q
                        s += weights[d, k - 1] * q
                    out[r, f] += value * (1.0 - z) * s
                else:
                    out[r, f] -= value * outside


@compiled
def _tree_shap_block(x: npt.NDArray[np.float32], model: _Arrays, out: F64) -> None:
    """`_tree_shap_rows`'s values for many rows at once: leaf by leaf, every step a loop over the rows.

    No branch depends on a row: a followed feature multiplies by (z + t), any other by z, with
    t in {0, 1}; the division by (z + t) runs on the full degree d (coefficients above the row's
    |P| are zeros) and is kept for the followed features only. The inner loops run over
    contiguous rows, which the compiler vectorises: 100-140 us per row from a dozen rows on,
    against about 300 row by row (`loadtest/explain_cost.py`), but far slower for one row.
    """
    (
        node_feature,
        node_threshold,
        node_default_left,
        node_missing,
        leaf_value,
        edge_start,
        edge_node,
        edge_left,
        edge_slot,
        unique_start,
        unique_feature,
        unique_zero,
        weights,
    ) = model
    n = x.shape[0]
    n_nodes = node_feature.shape[0]
    d_max = weights.shape[0]
    columns = np.ascontiguousarray(x.T).astype(np.float64)
    goes_left = np.empty((n_nodes, n), dtype=np.float64)  # 1.0: the row goes left at the node
    follows = np.empty((d_max, n), dtype=np.float64)  # 1.0: the row follows the leaf's feature
    poly = np.empty((d_max + 1, n), dtype=np.float64)
    outside = np.empty(n, dtype=np.float64)
    q = np.empty(n, dtype=np.float64)
    s = np.empty(n, dtype=np.float64)
    acc = np.zeros((x.shape[1], n), dtype=np.float64)
    for j in range(n_nodes):
        f = node_feature[j]
        for r in range(n):
            left = _goes_left(columns[f, r], node_threshold[j], node_missing[j], node_default_left[j])
            goes_left[j, r] = 1.0 if left else 0.0
    for leaf in range(leaf_value.shape[0]):
        u0 = unique_start[leaf]
        d = unique_start[leaf + 1] - u0
        for u in range(d):
            for r in range(n):
                follows[u, r] = 1.0
        for e in range(edge_start[leaf], edge_start[leaf + 1]):
            node = edge_node[e]
            slot = edge_slot[e]
            if edge_left[e]:
                for r in range(n):
                    follows[slot, r] *= goes_left[node, r]
            else:
                for r in range(n):
                    follows[slot, r] *= 1.0 - goes_left[node, r]
        for r in range(n):
            poly[0, r] = 1.0
        for u in range(d):
            z = unique_zero[u0 + u]
            for r in range(n):
                poly[u + 1, r] = follows[u, r] * poly[u, r]
            for k in range(u, 0, -1):
                for r in range(n):
                    poly[k, r] = poly[k, r] * z + follows[u, r] * poly[k - 1, r]
            for r in range(n):
                poly[0, r] *= z
        value = leaf_value[leaf]
        for r in range(n):
            outside[r] = 0.0
        for k in range(d):
            w = weights[d, k]
            for r in range(n):
                outside[r] += w * poly[k, r]
        for u in range(d):
            z = unique_zero[u0 + u]
            f = unique_feature[u0 + u]
            gain = value * (1.0 - z)
            w = weights[d, d - 1]
            for r in range(n):
                q[r] = poly[d, r]
                s[r] = w * q[r]
            for k in range(d - 1, 0, -1):
                w = weights[d, k - 1]
                for r in range(n):
                    q[r] = poly[k, r] - z * q[r]
                    s[r] += w * q[r]
            for r in range(n):
                t = follows[u, r]
                acc[f, r] += t * gain * s[r] - (1.0 - t) * value * outside[r]
    for f in range(x.shape[1]):
        for r in range(n):
            out[r, f] += acc[f, r]
