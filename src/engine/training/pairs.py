"""The sync-break model: synthetic record pairs, an IsolationForest, its ONNX export, and the bundle section.

History is mostly consistent pairs with the breaks a reconciliation desk sees
(`/work/shared/DOMAIN.md`, "Reconciliation breaks"): replication lag / stale
copies, partial fills applied on one side, status drift, static-data typos and
abbreviations, records missing on one side, and fat-finger values. The
generator labels each pair with its class, so the model (trained unsupervised
on the unlabelled history) can be judged on held-out labelled pairs.

The ONNX graph is written here, not by skl2onnx: skl2onnx emits about twenty
nodes per tree, several times slower for one row (docs/design-figures.md), where
the forest is one `TreeEnsembleRegressor` whose leaves hold each tree's path
length (depth + the expected depth of the leaf's remaining samples) / trees,
followed by score = 2 ** (-E[path] / c(max_samples)), i.e. `-score_samples`.
Thresholds are rounded down to float32, so `x <= t` means the same for every
float32 input as scikit-learn's double comparison; the export is checked
against `IsolationForest.score_samples` on held-out rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import BundleError
from engine.features.pairs import (
    PAIR_FEATURES,
    PairColumns,
    PairStats,
    feature_spread,
    likely_right,
    pair_features,
)
from engine.flag_store import StoreSpec, decided_flags
from engine.models.bundle import MANIFEST, ModelBundle, PairSection, onnx_session, utc_now_iso, write_manifest
from engine.training.errors import DataError, ParityError
from engine.training.export import PAIRS_DIR, stage_bundle, swap_bundle
from engine.training.metrics import precision_recall

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Printer = Callable[[str], None]

PAIRS_MODEL = f"{PAIRS_DIR}/model.onnx"
INPUT_NAME = "pair_features"
OUTPUT_NAME = "break_score"
PARITY_TOLERANCE = 1e-5
GOLDEN_ROWS = 32
DEFAULT_PAIRS = 60_000
DEFAULT_PAIRS_SEED = 20261129

#: break classes of the generator, with their share of the history
BREAK_MIX = {
    "stale_copy": 0.012,
    "partial_fill": 0.006,
    "status_drift": 0.006,
    "static_data": 0.006,
    "missing": 0.004,
    "fat_finger": 0.003,
    "duplicate": 0.003,
}
CLASSES = ("consistent", *BREAK_MIX)
#: the classes whose right side the generator knows (the other side than the broken one)
SIDE_KNOWN = ("stale_copy", "fat_finger", "duplicate")

_STATUSES = ("open", "settled", "pending", "active", "closed", "suspended")
_DRIFT = {
    "open": "closed",
    "settled": "pending",
    "pending": "settled",
    "active": "closed",
    "closed": "active",
    "suspended": "active",
}
_WORDS = (
    "Blue",
    "River",
    "North",
    "Atlas",
    "Harbor",
    "Summit",
    "Granite",
    "Cedar",
    "Pioneer",
    "Beacon",
    "Crown",
    "Silver",
    "Oak",
    "Meridian",
    "Falcon",
    "Union",
    "Liberty",
    "Maple",
)
_KINDS = ("Capital", "Partners", "Holdings", "Securities", "Asset Management", "Trust", "Fund")
_FORMS = ("LLC", "Limited", "Inc", "LP", "PLC", "Corporation")
_STREETS = ("Main", "Market", "Broad", "Water", "Wall", "King", "Queen", "High", "Park", "Church")
_SUFFIXES = ("Street", "Avenue", "Road", "Square", "Lane")
_CITIES = ("New York", "London", "Chicago", "Boston", "Frankfurt", "Dublin", "Toronto", "Zurich")
_ABBREV = {
    "Limited": "Ltd",
    "Corporation": "Corp",
    "Street": "St",
    "Avenue": "Ave",
    "Road": "Rd",
    "Incorporated": "Inc",
    "Partners": "Ptnrs",
    "Management": "Mgmt",
}


@dataclass(frozen=True, slots=True)
class SyntheticPairs:
    """Pairs as the engine reads them, with the generator's labels."""

    columns: PairColumns
    labels: npt.NDArray[np.str_]  # a CLASSES name per pair
    #: the side (0: A, 1: B) the generator broke, -1 for consistent pairs
    broken_side: npt.NDArray[np.int64]

    @property
    def is_break(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.labels != "consistent")


def _typo(rng: np.random.Generator, text: str) -> str:
    words = text.split(" ")
    for i, w in enumerate(words):
        if w in _ABBREV and rng.random() < 0.6:
            words[i] = _ABBREV[w]
            return " ".join(words)
    chars = list(text)
    at = int(rng.integers(1, max(2, len(chars) - 1)))
    op = rng.integers(3)
    if op == 0 and at + 1 < len(chars):
        chars[at], chars[at + 1] = chars[at + 1], chars[at]
    elif op == 1:
        del chars[at]
    else:
        chars[at] = "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(26))]
    return "".join(chars)


def generate_pairs(n: int, seed: int, break_mix: dict[str, float] | None = None) -> SyntheticPairs:
    """`n` labelled pairs: consistent records, and each break class at its share of `break_mix`."""
    rng = np.random.default_rng(seed)
    mix = BREAK_MIX if break_mix is None else break_mix
    unknown = set(mix) - set(BREAK_MIX)
    if unknown or sum(mix.values()) > 1.0:
        raise ValueError(
            f"break_mix: classes are {list(BREAK_MIX)} with shares summing to <= 1 ({unknown or ''})"
        )
    probs = np.array([1.0 - sum(mix.values()), *(mix.get(cls, 0.0) for cls in BREAK_MIX)])
    labels = np.asarray(CLASSES)[rng.choice(len(CLASSES), size=n, p=probs)]
    is_account = rng.random(n) < 0.3  # CRM vs billing accounts carry no quantity
    quantity = np.where(is_account, np.nan, np.round(rng.lognormal(7.0, 1.5, n)))
    amount = np.round(rng.lognormal(10.5, 1.6, n), 2)
    status = rng.choice(_STATUSES, size=n, p=[0.3, 0.3, 0.15, 0.15, 0.07, 0.03])
    t_a = 1.79e9 + rng.uniform(0, 86_400, n)
    t_b = t_a + rng.exponential(0.8, n) * rng.choice([-1.0, 1.0], n)  # replication lag of a healthy feed
    # feeds that carry the originating system's timestamp: both sides show the same update time
    same_clock = rng.random(n) < 0.2
    t_b[same_clock] = t_a[same_clock]
    qty = np.stack([quantity, quantity], axis=1)
    amt = np.stack([amount, amount], axis=1)
    present = np.ones((n, 2), dtype=np.bool_)
    broken = np.full(n, -1, dtype=np.int64)
    names: list[list[str]] = [[], []]
    addresses: list[list[str]] = [[], []]
    st: list[list[str]] = [[], []]
    for i in range(n):
        name = (
            f"{_WORDS[rng.integers(len(_WORDS))]} {_WORDS[rng.integers(len(_WORDS))]} "
            f"{_KINDS[rng.integers(len(_KINDS))]} {_FORMS[rng.integers(len(_FORMS))]}"
        )
        address = (
            f"{int(rng.integers(1, 999))} {_STREETS[rng.integers(len(_STREETS))]} "
            f"{_SUFFIXES[rng.integers(len(_SUFFIXES))]}, {_CITIES[rng.integers(len(_CITIES))]}"
        )
        one = [name, name], [address, address], [str(status[i]), str(status[i])]
        side = int(rng.integers(2))  # the side the break is on
        label = labels[i]
        if label != "consistent":
            broken[i] = side
        if label == "stale_copy":  # the stale side lags by minutes and still has old values
            lag = rng.uniform(30, 900)
            newer = 1 - side
            (t_a if newer == 1 else t_b)[i] = (t_b if newer == 1 else t_a)[i] - lag
            amt[i, side] = round(amount[i] * (1 + rng.choice([-1, 1]) * rng.uniform(0.001, 0.05)), 2)
            if not np.isnan(quantity[i]) and rng.random() < 0.5:
                qty[i, side] = max(
                    1.0, quantity[i] + rng.choice([-1, 1]) * max(1.0, round(quantity[i] * 0.1))
                )
        elif label == "partial_fill":  # a fill booked on one side only: the delta is the fill size
            fill = rng.uniform(0.1, 0.9)
            if np.isnan(quantity[i]):
                amt[i, side] = round(amount[i] * fill, 2)
            else:
                qty[i, side] = max(1.0, round(quantity[i] * fill))
                amt[i, side] = round(amount[i] * qty[i, side] / quantity[i], 2)
        elif label == "status_drift":
            one[2][side] = _DRIFT[str(status[i])]
        elif label == "static_data":
            if rng.random() < 0.6:
                one[0][side] = _typo(rng, name)
            else:
                one[1][side] = _typo(rng, address)
        elif label == "missing":
            present[i, side] = False
        elif label == "fat_finger":
            amt[i, side] = round(amount[i] * float(rng.choice([10.0, 100.0, 1000.0, 0.01])), 2)
        elif label == "duplicate":  # booked twice (now and then three times) on one side: k x the totals
            k = 2.0 if rng.random() < 0.85 else 3.0
            amt[i, side] = round(amount[i] * k, 2)
            if not np.isnan(quantity[i]):
                qty[i, side] = quantity[i] * k
            # the second booking is the later update
            (t_a if side == 0 else t_b)[i] = (t_b if side == 0 else t_a)[i] + rng.uniform(1, 600)
        if rng.random() < 0.05:  # systems spell statuses differently: not a break
            one[2][1] = one[2][1].upper()
        for s in range(2):
            names[s].append(one[0][s])
            addresses[s].append(one[1][s])
            st[s].append(one[2][s].strip().lower())
    updated = np.stack([t_a, t_b], axis=1)
    for values in (qty, amt, updated):
        values[~present] = np.nan
    for s in range(2):
        for gone in np.flatnonzero(~present[:, s]).tolist():
            names[s][gone] = addresses[s][gone] = st[s][gone] = ""
    sources = (["trading" if p else "" for p in present[:, 0]], ["risk" if p else "" for p in present[:, 1]])
    columns = PairColumns(
        keys=[f"POS-{i:08d}" for i in range(n)],
        present=present,
        sources=sources,
        status=(st[0], st[1]),
        quantity=qty,
        amount=amt,
        name=(names[0], names[1]),
        address=(addresses[0], addresses[1]),
        updated_at=updated,
    )
    return SyntheticPairs(columns, labels, broken)


def amount_baseline(columns: PairColumns) -> tuple[float, float]:
    """Mean and standard deviation of log1p(|amount|) over every amount in the history."""
    values = np.log1p(np.abs(columns.amount[~np.isnan(columns.amount)]))
    return float(values.mean()), float(max(values.std(), 1e-6))


# -- the model ------------------------------------------------------------------------


def _average_path_length(samples: npt.NDArray[np.int64]) -> F64:
    """Expected depth of an unsuccessful search in a binary tree of `n` samples (Liu et al., 2008)."""
    n = np.asarray(samples, dtype=np.float64)
    out: F64 = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _floor32(values: F64) -> F32:
    """The largest float32 <= each value: `x <= t` then holds for the same float32 x as in double."""
    down = values.astype(np.float32)
    over = down.astype(np.float64) > values
    down[over] = np.nextafter(down[over], np.float32(-np.inf))
    return down


def forest_to_onnx(forest: Any, n_features: int) -> bytes:
    """A fitted IsolationForest as one TreeEnsembleRegressor + exp: float32 [n, F] -> score [n, 1]."""
    from onnx import TensorProto, helper

    trees = len(forest.estimators_)
    attrs: dict[str, list[Any]] = {
        k: []
        for k in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_modes",
            "nodes_values",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    for t, (tree, columns) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
        tr = tree.tree_
        left, right = tr.children_left, tr.children_right
        depth = np.zeros(tr.node_count, dtype=np.int64)
        for node in range(tr.node_count):  # children always come after their parent
            if left[node] >= 0:
                depth[left[node]] = depth[right[node]] = depth[node] + 1
        leaf = left < 0
        thresholds = _floor32(tr.threshold)
        path = depth + _average_path_length(tr.n_node_samples.astype(np.int64))
        for node in range(tr.node_count):
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(node)
            if leaf[node]:
                attrs["nodes_featureids"].append(0)
                attrs["nodes_modes"].append("LEAF")
                attrs["nodes_values"].append(0.0)
                attrs["nodes_truenodeids"].append(0)
                attrs["nodes_falsenodeids"].append(0)
                attrs["target_treeids"].append(t)
                attrs["target_nodeids"].append(node)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(path[node]) / trees)
            else:
                attrs["nodes_featureids"].append(int(columns[tr.feature[node]]))
                attrs["nodes_modes"].append("BRANCH_LEQ")
                attrs["nodes_values"].append(float(thresholds[node]))
                attrs["nodes_truenodeids"].append(int(left[node]))
                attrs["nodes_falsenodeids"].append(int(right[node]))
    scale = -math.log(2.0) / float(_average_path_length(np.array([forest.max_samples_]))[0])
    nodes = [
        helper.make_node(
            "TreeEnsembleRegressor",
            [INPUT_NAME],
            ["mean_path"],
            None,  # name
            None,  # doc_string
            "ai.onnx.ml",
            None,  # overload
            n_targets=1,
            aggregate_function="SUM",
            post_transform="NONE",
            **attrs,
        ),
        helper.make_node("Mul", ["mean_path", "scale"], ["log_score"]),
        helper.make_node("Exp", ["log_score"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "isolation_forest",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="tradescore-engine",
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


def onnx_scores(session: Any, x: F32) -> F32:
    return np.ascontiguousarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][:, 0])


@dataclass(frozen=True, slots=True)
class PairModelReport:
    threshold: float
    metrics: dict[str, float]
    parity: dict[str, float]


def pick_threshold(scores: F64, truth: npt.NDArray[np.bool_]) -> float:
    """The score threshold with the best F1 on labelled validation pairs.

    Where a range of thresholds ties for the best F1 (a classifier that separates the
    labelled breaks: every threshold between the two classes' scores), the middle of the
    range, as far from both classes' scores as the validation pairs allow, not its low end.
    """
    candidates = np.unique(np.quantile(scores, np.linspace(0.80, 0.9995, 400)))
    f1 = np.empty(len(candidates))
    for i, t in enumerate(candidates):
        p, r = precision_recall(scores >= t, truth)
        f1[i] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    # the contiguous run of best thresholds that holds the first one
    run_end = best[0]
    while run_end + 1 < len(candidates) and f1[run_end + 1] >= f1.max() - 1e-12:
        run_end += 1
    return float((candidates[best[0]] + candidates[run_end]) / 2.0)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One trained break model: its ONNX bytes and how it did on the labelled splits."""

    kind: str  # "isolation_forest" or "lightgbm"
    model: bytes
    input_name: str
    output_name: str
    output_column: int  # the break score's column in the output
    threshold: float
    metrics: dict[str, float]
    parity: dict[str, float]
    training: dict[str, Any]

    def scores(self, session: Any, x: F32) -> F32:
        out = session.run([self.output_name], {self.input_name: x})[0]
        return np.ascontiguousarray(out[:, self.output_column], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Split:
    """Labelled pairs for fitting, for the threshold, and for the held-out figures."""

    train: F32
    train_y: npt.NDArray[np.bool_]
    valid: F32
    valid_y: npt.NDArray[np.bool_]
    test: F32
    test_y: npt.NDArray[np.bool_]
    #: per test pair: its generator class ("consistent", "stale_copy", ...) or "feedback"
    test_classes: npt.NDArray[np.str_]


def evaluate(threshold: float, scores: F64, split: Split) -> dict[str, float]:
    """Precision, recall, F1 and recall per break class of `scores >= threshold` on the test pairs."""
    flagged = scores >= threshold
    p, r = precision_recall(flagged, split.test_y)
    metrics = {
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0,
        "heldout_pairs": float(len(split.test_y)),
        "heldout_breaks": float(split.test_y.sum()),
    }
    for cls in (*BREAK_MIX, "feedback"):
        mask = (split.test_classes == cls) & split.test_y
        if mask.any():
            metrics[f"recall_{cls}"] = float(flagged[mask].mean())
    return metrics


def _forest(split: Split, trees: int, max_samples: int, seed: int) -> Candidate:
    """The IsolationForest, fitted on the training pairs without their labels."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=trees, max_samples=max_samples, random_state=seed).fit(split.train)
    model = forest_to_onnx(forest, len(PAIR_FEATURES))
    session = onnx_session(model)
    want = -forest.score_samples(split.test)
    got = onnx_scores(session, split.test).astype(np.float64)
    diff = np.abs(got - want)
    parity = {
        "rows": float(len(split.test)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }
    if parity["max_abs_diff"] > PARITY_TOLERANCE:
        worst = np.argsort(-diff)[:5]
        raise ParityError(
            f"pair model: ONNX differs from scikit-learn by {parity['max_abs_diff']:.3g}",
            [(int(i), float(want[i]), float(got[i])) for i in worst],
        )
    threshold = pick_threshold(onnx_scores(session, split.valid).astype(np.float64), split.valid_y)
    training = {"trees": trees, "max_samples": max_samples, "labels_used": False}
    return Candidate(
        "isolation_forest", model, INPUT_NAME, OUTPUT_NAME, 0, threshold, evaluate(threshold, got, split),
        parity, training,
    )  # fmt: skip


def _classifier(split: Split, seed: int) -> Candidate:
    """The supervised LightGBM break classifier on the same features, from the training pairs' labels."""
    import lightgbm as lgb

    from engine.training.export import INPUT_NAME as LGB_INPUT
    from engine.training.export import OUTPUT_NAME as LGB_OUTPUT
    from engine.training.export import check_parity, round_thresholds_down, to_onnx

    params = {
        "objective": "binary",
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_data_in_leaf": 20,
        "seed": seed,
        "deterministic": True,
        "num_threads": 1,
        "verbose": -1,
    }
    train_set = lgb.Dataset(split.train, split.train_y.astype(np.int8), feature_name=list(PAIR_FEATURES))
    valid_set = lgb.Dataset(split.valid, split.valid_y.astype(np.int8), reference=train_set)
    booster = lgb.train(
        params, train_set, num_boost_round=300, valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(20, verbose=False)],
    )  # fmt: skip
    rewritten, _, _ = round_thresholds_down(booster, num_iteration=booster.best_iteration)
    model = to_onnx(rewritten, len(PAIR_FEATURES), name="sync_break")
    parity = {
        k: float(v)
        for k, v in check_parity(rewritten, model, split.test).items()
        if k in ("rows", "max_abs_diff", "mean_abs_diff")
    }
    session = onnx_session(model)
    candidate = Candidate("lightgbm", model, LGB_INPUT, LGB_OUTPUT, 1, 0.0, {}, parity, {})
    threshold = pick_threshold(candidate.scores(session, split.valid).astype(np.float64), split.valid_y)
    test_scores = candidate.scores(session, split.test).astype(np.float64)
    training = {"rounds": int(booster.best_iteration), "params": params, "labels_used": True}
    return Candidate(
        "lightgbm", model, LGB_INPUT, LGB_OUTPUT, 1, threshold, evaluate(threshold, test_scores, split),
        parity, training,
    )  # fmt: skip


MODEL_CHOICES = ("isolation-forest", "lightgbm", "best")


def _history(
    pairs: int, seed: int, baseline: tuple[float, float] | None = None
) -> tuple[Split, PairStats, SyntheticPairs]:
    """Synthetic history split 60/20/20, its features, and the statistics they were computed with."""
    data = generate_pairs(pairs, seed)
    mean, std = baseline if baseline is not None else amount_baseline(data.columns)
    x = pair_features(data.columns, PairStats(mean, std, {f: (0.0, 1.0) for f in PAIR_FEATURES})).matrix
    y = data.is_break
    c1, c2 = int(0.6 * pairs), int(0.8 * pairs)
    split = Split(x[:c1], y[:c1], x[c1:c2], y[c1:c2], x[c2:], y[c2:], data.labels[c2:])
    return split, PairStats(mean, std, feature_spread(x[:c1])), data


def _fit(
    split: Split, trees: int, max_samples: int, seed: int, model: str, log: Printer
) -> tuple[Candidate, dict[str, Candidate]]:
    if model not in MODEL_CHOICES:
        raise ValueError(f"model must be one of {MODEL_CHOICES}")
    candidates = {
        "isolation_forest": _forest(split, trees, max_samples, seed),
        "lightgbm": _classifier(split, seed),
    }
    for c in candidates.values():
        m = c.metrics
        log(
            f"pairs: {c.kind:<16} threshold {c.threshold:.4f}; held-out precision {m['precision']:.3f}, "
            f"recall {m['recall']:.3f}, F1 {m['f1']:.3f}; parity {c.parity['max_abs_diff']:.2g}"
        )
    if model == "best":
        return max(candidates.values(), key=lambda c: c.metrics["f1"]), candidates
    return candidates[model.replace("-", "_")], candidates


def _write_section(
    root: Path, chosen: Candidate, candidates: dict[str, Candidate], stats: PairStats, split: Split,
    metrics: dict[str, float], training: dict[str, Any], extra: dict[str, Any], log: Printer,
) -> dict[str, Any]:  # fmt: skip
    """Write the chosen model and the manifest's `pairs` section into the bundle at `root`: a copy of
    the bundle beside it gets them, both models are checked as a server checks them, and the copy is
    swapped in."""
    raw = json.loads((root / MANIFEST).read_text())
    session = onnx_session(chosen.model)
    flagged = chosen.scores(session, split.test) >= chosen.threshold
    golden = np.ascontiguousarray(
        np.concatenate([split.test[: GOLDEN_ROWS // 2], split.test[flagged][: GOLDEN_ROWS // 2]])
    )
    digest = hashlib.sha256(chosen.model).hexdigest()[:8]
    section = {
        "model": PAIRS_MODEL,
        "version": f"{utc_now_iso()[:10].replace('-', '.')}+{digest}",
        "created_at": utc_now_iso(),
        "kind": chosen.kind,
        "input": chosen.input_name,
        "output": chosen.output_name,
        "output_column": chosen.output_column,
        "features": list(PAIR_FEATURES),
        "stats": stats.to_json(),
        "threshold": chosen.threshold,
        "metrics": metrics,
        "comparison": {c.kind: c.metrics for c in candidates.values()},
        "parity": chosen.parity,
        "golden": {
            "inputs": golden.tolist(),
            "scores": chosen.scores(session, golden).astype(float).tolist(),
        },
        "training": {**chosen.training, **training},
        **extra,
    }
    section["beside_trade_model"] = {
        "name": raw.get("name"),
        "version": raw.get("version"),
        "checked": "kept as it was; hashes, ONNX input width and golden rows reloaded",
    }
    staging = stage_bundle(root)
    try:
        (staging / PAIRS_DIR).mkdir(exist_ok=True)
        (staging / PAIRS_MODEL).write_bytes(chosen.model)
        keep = {k: v for k, v in raw.items() if k not in ("files", "content_hash", "format_version")}
        written = write_manifest(staging, {**keep, "pairs": section})
        # the very checks a server runs on both models before it serves the bundle
        loaded = ModelBundle.load(staging)
        PairSection.load(staging, loaded.manifest, PAIR_FEATURES)
        swap_bundle(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(
        f"pairs: model {section['version']} ({chosen.kind}) written to {root}, "
        f"beside trade model {raw.get('version')}"
    )
    return written


def check_trade_model(root: Path) -> None:
    """Refuse, before any training, a --bundle whose trade model a server would not serve: the pair model is
    written beside it, and the bundle as a whole is what a server loads."""
    if not (root / MANIFEST).is_file():
        raise BundleError(
            f"{root}: no {MANIFEST}, so not a model bundle: write the trade model first "
            f"(engine train --out {root}), then add the sync-break model to it"
        )
    try:
        ModelBundle.load(root)
    except BundleError as exc:
        raise BundleError(
            f"the trade model of {root} does not pass the server's checks ({exc}), so no server would load "
            f"the bundle a pair model is added to: rebuild it with engine train --out {root} (which keeps "
            "the pair model), or point --bundle at a bundle that loads"
        ) from None


def train_pair_model(
    bundle: Path | str,
    *,
    pairs: int = DEFAULT_PAIRS,
    seed: int = DEFAULT_PAIRS_SEED,
    trees: int = 100,
    max_samples: int = 4096,
    model: str = "isolation-forest",
    log: Printer = print,
) -> dict[str, Any]:
    """Train both break models on synthetic history; add the chosen one to `bundle` (manifest rewritten).

    Splits the generated pairs 60/20/20. The IsolationForest learns from the
    first part without labels; the LightGBM classifier learns from the same
    pairs with their labels (what operators' verdicts give in production).
    Each gets its best-F1 threshold on the second part, and the third gives
    both models' precision and recall, overall and per break class, side by
    side in the manifest (`pairs.comparison`). `model` picks the one served:
    "isolation-forest", "lightgbm" or "best" (the higher held-out F1). Raises
    ParityError (and changes nothing) when an ONNX export disagrees with its
    library beyond PARITY_TOLERANCE.
    """
    root = Path(bundle).resolve()
    check_trade_model(root)
    split, stats, data = _history(pairs, seed)
    chosen, candidates = _fit(split, trees, max_samples, seed, model, log)
    metrics = dict(chosen.metrics)
    # which side is right, where the generator knows: stale copies (the newer side), fat fingers
    # and duplicates (the side not booked twice)
    held = slice(len(split.train) + len(split.valid), None)
    test_features = pair_features(data.columns, stats)
    sides, _ = likely_right(
        test_features.matrix[held],
        test_features.differs[held],
        test_features.quantities[held],
        stats.log_amount_std,
    )
    for cls in SIDE_KNOWN:
        mask = data.labels[held] == cls
        right = 2 - data.broken_side[held][mask]  # SIDE_A = 1, SIDE_B = 2: the side not broken
        metrics[f"side_accuracy_{cls}"] = float((sides[mask] == right).mean()) if mask.any() else float("nan")
    log(
        f"pairs: serving {chosen.kind}; right side found for {metrics['side_accuracy_stale_copy']:.1%} "
        f"of stale copies, {metrics['side_accuracy_fat_finger']:.1%} of fat fingers, "
        f"{metrics['side_accuracy_duplicate']:.1%} of duplicates"
    )
    training = {
        "pairs": pairs,
        "seed": seed,
        "split": "60/20/20: fit / threshold / held-out",
        "break_mix": BREAK_MIX,
        "generator": "engine.training.pairs.generate_pairs",
    }
    return _write_section(root, chosen, candidates, stats, split, metrics, training, {}, log)


# -- retraining from operators' verdicts ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrainOutcome:
    promoted: bool
    reason: str
    serving: dict[str, float]
    candidate: dict[str, float]
    manifest: dict[str, Any] | None


def read_feedback(store: StoreSpec) -> tuple[F32, npt.NDArray[np.bool_], list[str]]:
    """Every decided flag: its model inputs, whether it was confirmed, and its flag id."""
    rows = decided_flags(store)
    x = np.asarray([r.features for r in rows], dtype=np.float32).reshape(len(rows), len(PAIR_FEATURES))
    return x, np.asarray([r.confirmed for r in rows], dtype=np.bool_), [r.flag_id for r in rows]


def _in_holdout(flag_id: str, share: float) -> bool:
    """A stable draw per flag: the same flags are held out on every retrain."""
    return int(hashlib.sha256(flag_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def retrain_pair_model(
    bundle: Path | str,
    store: StoreSpec,
    *,
    pairs: int = DEFAULT_PAIRS,
    seed: int = DEFAULT_PAIRS_SEED + 1,
    trees: int = 100,
    max_samples: int = 4096,
    model: str = "same",
    holdout: float = 0.3,
    log: Printer = print,
) -> RetrainOutcome:
    """Retrain the bundle's pair model from history + operators' verdicts; promote it only if not worse.

    The verdicts (`store`) are split by a stable hash of their flag id:
    `holdout` of them join the held-out pairs, the rest the training pairs
    (labelled: the classifier learns from them; the forest sees them as
    history). Fresh synthetic history (`seed`) fills both parts, its features
    computed with the serving model's amount baseline so that the stored
    verdicts' features mean the same. The serving model and the candidate are
    scored on the very same held-out pairs; the candidate replaces the serving
    one in `bundle` (swapped in whole, so a watching server loads it) only if
    its F1 is at least the serving model's, and the manifest records both
    (`pairs.promotion`). Otherwise the bundle is left as it is.
    """
    root = Path(bundle).resolve()
    check_trade_model(root)
    raw = json.loads((root / MANIFEST).read_text())
    current = raw.get("pairs")
    if current is None:
        raise DataError(f"{root} has no pair model to retrain; run engine train-pairs first")
    serving_stats = PairStats.from_json(current["stats"])
    x_fb, y_fb, ids = read_feedback(store)
    held = np.asarray([_in_holdout(i, holdout) for i in ids], dtype=np.bool_)
    log(
        f"retrain: {len(ids)} verdicts ({int(y_fb.sum())} confirmed); {int(held.sum())} held out, "
        f"{int((~held).sum())} for training"
    )
    history, stats, _ = _history(pairs, seed, (serving_stats.log_amount_mean, serving_stats.log_amount_std))
    split = Split(
        np.ascontiguousarray(np.concatenate([history.train, x_fb[~held]])),
        np.concatenate([history.train_y, y_fb[~held]]),
        history.valid,
        history.valid_y,
        np.ascontiguousarray(np.concatenate([history.test, x_fb[held]])),
        np.concatenate([history.test_y, y_fb[held]]),
        np.concatenate([history.test_classes, np.full(int(held.sum()), "feedback")]),
    )
    kind = str(current.get("kind", "isolation_forest")).replace("_", "-") if model == "same" else model
    chosen, candidates = _fit(split, trees, max_samples, seed, kind, log)
    session = onnx_session(str(root / str(current["model"])))
    out = session.run([str(current["output"])], {str(current["input"]): split.test})[0]
    serving_scores = np.asarray(out[:, int(current.get("output_column", 0))], dtype=np.float64)
    serving = evaluate(float(current["threshold"]), serving_scores, split)
    candidate = chosen.metrics
    better = candidate["f1"] >= serving["f1"]
    reason = (
        f"candidate {chosen.kind} F1 {candidate['f1']:.4f} (precision {candidate['precision']:.3f}, recall "
        f"{candidate['recall']:.3f}) vs serving {current.get('kind', 'isolation_forest')} "
        f"{current['version']} F1 {serving['f1']:.4f} (precision {serving['precision']:.3f}, recall "
        f"{serving['recall']:.3f}) on the same {len(split.test_y):,} held-out pairs "
        f"({int(held.sum())} of them operators' verdicts)"
    )
    if not better:
        log(f"retrain: not promoted: {reason}")
        return RetrainOutcome(False, reason, serving, candidate, None)
    promotion = {
        "replaced": current["version"],
        "serving_metrics": serving,
        "candidate_metrics": candidate,
        "heldout_pairs": len(split.test_y),
        "heldout_verdicts": int(held.sum()),
        "training_verdicts": int((~held).sum()),
        "decided_at": utc_now_iso(),
    }
    training = {
        "pairs": pairs,
        "seed": seed,
        "verdicts": len(ids),
        "split": "history 60/20/20 + verdicts by flag-id hash: fit / threshold / held-out",
        "break_mix": BREAK_MIX,
        "generator": "engine.training.pairs.generate_pairs",
    }
    written = _write_section(
        root, chosen, candidates, stats, split, dict(candidate), training, {"promotion": promotion}, log
    )
    log(f"retrain: promoted: {reason}")
    return RetrainOutcome(True, reason, serving, candidate, written)
