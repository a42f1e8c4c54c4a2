"""Held-out metrics and risk-band thresholds, in numpy (no scikit-learn).

- `roc_auc`: probability that a random failed trade scores above a random
  settled one (ties count half), via average ranks (Mann-Whitney U).
- `average_precision` (PR-AUC): sum over distinct score thresholds of
  (recall step) x precision, the step-wise area scikit-learn also reports.
- `brier`: mean squared error of the probability; `log_loss`: mean negative
  log-likelihood (probabilities clipped to [1e-15, 1 - 1e-15]).
- `precision_recall`: of a set of flags against the truth (the pair models'
  alert threshold and held-out figures).

Risk bands (`choose_risk_bands`, `BandRule`) mean the same thing on any data:
by default a band's lower bound is a calibrated fail probability (MEDIUM from
4 %, HIGH from 15 %, CRITICAL from 40 %), so a trade in LOW is one the model
gives less than a 4 % chance of failing whatever the base rate of the file it
was trained on. The model is early-stopped on log-loss, so its probabilities
are calibrated on the validation split; `band_report` shows each band's
observed fail rate on the test split, and `band_warnings` names the bands whose
observed rate falls outside their probability range. The other rule,
`share`, puts each bound at the score above which a fixed share of validation
trades fall (a predictable number of flagged trades, but a band's meaning
then moves with the data's fail rate: on a file where half the trades fail,
LOW holds 80 % of them and reaches up to a fail probability above one half,
so its trades fail about half the time); it is opt-in
(`engine train --risk-bands share:0.20,0.05,0.01`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.models.spec import BAND_NAMES, RiskBands

F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.integer]

#: lower bounds of MEDIUM, HIGH and CRITICAL as calibrated fail probabilities (the default rule)
DEFAULT_BAND_PROBABILITIES = (0.04, 0.15, 0.40)
#: share of trades at or above each band's lower bound (MEDIUM, HIGH, CRITICAL) under the `share` rule
DEFAULT_BAND_SHARES = (0.20, 0.05, 0.01)
BAND_RULE_KINDS = ("probability", "share")
_EPS = 1e-15


def _check(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[F64, F64]:
    yy = np.asarray(y, dtype=np.float64)
    pp = np.asarray(p, dtype=np.float64)
    if yy.shape != pp.shape or yy.ndim != 1:
        raise ValueError(f"labels {yy.shape} and scores {pp.shape} must be 1-D of one length")
    if yy.size == 0:
        raise ValueError("no rows")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    if not np.isfinite(pp).all():
        raise ValueError("scores must be finite")
    return yy, pp


def _both_classes(y: F64) -> tuple[int, int]:
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        raise ValueError("ROC-AUC / PR-AUC need both failed and settled trades")
    return pos, neg


def roc_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    yy, pp = _check(y, p)
    pos, neg = _both_classes(yy)
    order = np.argsort(pp, kind="mergesort")
    sorted_p = pp[order]
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg_rank = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.repeat(avg_rank, counts)
    pos_rank_sum = float(ranks[yy[order] == 1.0].sum())
    return (pos_rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def average_precision(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    yy, pp = _check(y, p)
    pos, _ = _both_classes(yy)
    order = np.argsort(-pp, kind="mergesort")
    sorted_p, sorted_y = pp[order], yy[order]
    tp = np.cumsum(sorted_y)
    fp = np.cumsum(1.0 - sorted_y)
    # one point per distinct threshold: the last row of each tie group
    last = np.r_[np.flatnonzero(np.diff(sorted_p)), sorted_p.size - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall(flagged: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """Share of the flagged that are true, and share of the true that are flagged (0 when empty)."""
    tp = float((flagged & truth).sum())
    return tp / max(1.0, float(flagged.sum())), tp / max(1.0, float(truth.sum()))


def brier(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    yy, pp = _check(y, p)
    return float(np.mean((pp - yy) ** 2))


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    yy, pp = _check(y, p)
    q = np.clip(pp, _EPS, 1.0 - _EPS)
    return float(-np.mean(yy * np.log(q) + (1.0 - yy) * np.log1p(-q)))


def summary(y: npt.ArrayLike, p: npt.ArrayLike) -> dict[str, float]:
    """The manifest's held-out metrics: roc_auc, pr_auc, brier, log_loss, base_rate, rows."""
    yy, pp = _check(y, p)
    return {
        "roc_auc": roc_auc(yy, pp),
        "pr_auc": average_precision(yy, pp),
        "brier": brier(yy, pp),
        "log_loss": log_loss(yy, pp),
        "base_rate": float(yy.mean()),
        "mean_probability": float(pp.mean()),
        "rows": float(yy.size),
    }


@dataclass(frozen=True, slots=True)
class BandRule:
    """How the bounds of MEDIUM, HIGH and CRITICAL are set.

    `probability` (the default): the bounds are `values`, fail probabilities.
    `share`: each bound is the score above which `values` (shares) of the validation trades fall.
    """

    kind: str = "probability"
    values: tuple[float, float, float] = DEFAULT_BAND_PROBABILITIES

    def __post_init__(self) -> None:
        if self.kind not in BAND_RULE_KINDS:
            raise ValueError(f"unknown risk band rule {self.kind!r}: use one of {', '.join(BAND_RULE_KINDS)}")
        v = self.values
        if len(v) != 3 or not all(0.0 < x < 1.0 for x in v):
            raise ValueError(f"risk band values must be three numbers inside (0, 1): {v}")
        rising = v[0] < v[1] < v[2]
        falling = v[0] > v[1] > v[2]
        if self.kind == "probability" and not rising:
            raise ValueError(f"probability bounds of MEDIUM, HIGH, CRITICAL must rise: {v}")
        if self.kind == "share" and not falling:
            raise ValueError(f"shares of MEDIUM, HIGH, CRITICAL must fall (top 20 %, 5 %, 1 %): {v}")

    @staticmethod
    def parse(text: str) -> BandRule:
        """`probability:0.04,0.15,0.40` or `share:0.20,0.05,0.01` (MEDIUM, HIGH, CRITICAL)."""
        kind, sep, rest = text.partition(":")
        if not sep:
            raise ValueError(
                f"expected KIND:MEDIUM,HIGH,CRITICAL (e.g. probability:0.04,0.15,0.40), got {text!r}"
            )
        try:
            values = tuple(float(x) for x in rest.split(","))
        except ValueError:
            raise ValueError(f"risk band values must be numbers: {rest!r}") from None
        if len(values) != 3:
            raise ValueError(f"give three values (MEDIUM, HIGH, CRITICAL), got {len(values)}: {rest!r}")
        return BandRule(kind.strip(), (values[0], values[1], values[2]))

    def describe(self) -> dict[str, str]:
        if self.kind == "share":
            return {
                name: f"top {share:.0%} of validation trades by fail probability"
                for name, share in zip(BAND_NAMES[1:], self.values, strict=True)
            }
        return {
            name: f"calibrated fail probability >= {bound:g}"
            for name, bound in zip(BAND_NAMES[1:], self.values, strict=True)
        }


def choose_risk_bands(scores: npt.ArrayLike, rule: BandRule = BandRule()) -> RiskBands:
    """Thresholds (MEDIUM, HIGH, CRITICAL) by `rule`; `scores` are the validation split's.

    `probability`: the rule's bounds as they are. `share`: each bound is the
    (1 - share) quantile of the scores (lower quantile, so it is a score that
    occurs). When ties or a tiny split make two bounds equal, the higher band's
    bound is nudged up to the next float so that the bounds rise strictly, as
    `RiskBands` requires; all bounds stay inside (0, 1).
    """
    if rule.kind == "probability":
        return RiskBands(rule.values)
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("risk bands need finite validation scores")
    bounds: list[float] = []
    for share in rule.values:
        t = float(np.quantile(s, 1.0 - share, method="lower"))
        t = min(max(t, 1e-9), 1.0 - 1e-9)
        if bounds and t <= bounds[-1]:
            t = float(np.nextafter(bounds[-1], 1.0))
        bounds.append(t)
    if bounds[-1] >= 1.0:
        raise ValueError(f"cannot place risk bands inside (0, 1): {bounds}")
    return RiskBands((bounds[0], bounds[1], bounds[2]))


def band_report(bands: RiskBands, y: npt.ArrayLike, p: npt.ArrayLike) -> dict[str, float]:
    """Share of trades and observed fail rate per band on a (held-out) split."""
    yy, pp = _check(y, p)
    assigned = bands.assign(pp)
    out: dict[str, float] = {}
    for number, name in enumerate(BAND_NAMES, start=1):
        m = assigned == number
        key = name.lower()
        out[f"band_{key}_share"] = float(m.mean())
        out[f"band_{key}_fail_rate"] = float(yy[m].mean()) if m.any() else 0.0
    return out


#: a band's observed fail rate may stray this far outside its probability range before it is reported
#: (sampling noise on a few hundred trades, and calibration that is good but not perfect)
BAND_SLACK = 0.05


def band_warnings(bands: RiskBands, report: dict[str, float], min_share: float = 0.005) -> list[str]:
    """Bands whose observed fail rate (from `band_report`) lies outside their probability range by more
    than BAND_SLACK, or that rank out of order; bands with fewer than `min_share` of the trades are not
    judged. Empty when the bands mean what their bounds say."""
    edges = (0.0, *bands.thresholds, 1.0)
    out: list[str] = []
    seen: list[tuple[str, float]] = []
    for i, name in enumerate(BAND_NAMES):
        key = name.lower()
        if report[f"band_{key}_share"] < min_share:
            continue
        rate = report[f"band_{key}_fail_rate"]
        low, high = edges[i], edges[i + 1]
        if not low - BAND_SLACK <= rate <= high + BAND_SLACK:
            out.append(
                f"{name} fails {rate:.1%} of the time, outside its probability range [{low:g}, {high:g})"
            )
        if seen and rate < seen[-1][1]:
            out.append(f"{name} fails less often ({rate:.1%}) than {seen[-1][0]} ({seen[-1][1]:.1%})")
        seen.append((name, rate))
    return out
