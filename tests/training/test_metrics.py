"""Numpy metrics against brute force (and scikit-learn when it is installed); risk bands."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from engine.models.spec import RiskBands
from engine.training import metrics as m


def _pairs_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg))
    return float(wins / (pos.size * neg.size))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.2).astype(np.int8)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 2)  # rounding makes ties
    assert m.roc_auc(y, p) == pytest.approx(_pairs_auc(y, p), abs=1e-12)


def test_against_scikit_learn_when_available() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    y = (rng.random(5_000) < 0.04).astype(np.int8)
    p = np.clip(rng.beta(1, 20, 5_000) + 0.05 * y, 0, 1)
    p[:500] = np.round(p[:500], 3)
    assert m.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m.average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert m.log_loss(y, p) == pytest.approx(skm.log_loss(y, p), abs=1e-9)


def test_average_precision_by_hand() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    # thresholds: 0.9 -> P=1, R=.5; 0.8 -> P=.5, R=.5; 0.7 -> P=2/3, R=1; 0.1 -> P=.5, R=1
    assert m.average_precision(y, p) == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))


def test_perfect_and_useless_scores() -> None:
    y = np.array([0, 0, 1, 1])
    assert m.roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert m.roc_auc(y, np.full(4, 0.5)) == 0.5
    assert m.log_loss(y, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(m.log_loss(y, np.array([1.0, 1.0, 0.0, 0.0])))  # clipped, not inf


def test_summary_keys_and_errors() -> None:
    y = np.array([0, 1, 0, 1, 0])
    s = m.summary(y, np.array([0.1, 0.6, 0.2, 0.4, 0.3]))
    assert set(s) >= {"roc_auc", "pr_auc", "brier", "log_loss", "base_rate", "rows"}
    assert s["base_rate"] == 0.4 and s["rows"] == 5.0
    with pytest.raises(ValueError, match="both"):
        m.roc_auc(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="0/1"):
        m.brier(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="finite"):
        m.brier(np.array([0, 1]), np.array([0.1, np.nan]))


SHARES = m.BandRule("share", (0.20, 0.05, 0.01))


def test_risk_bands_are_calibrated_probabilities_by_default() -> None:
    scores = np.random.default_rng(3).beta(1, 25, 1_000)
    assert m.choose_risk_bands(scores).thresholds == m.DEFAULT_BAND_PROBABILITIES
    # the same bounds whatever the scores: a band means the same on any data
    assert m.choose_risk_bands(scores * 20).thresholds == m.DEFAULT_BAND_PROBABILITIES
    assert m.BandRule().describe()["CRITICAL"] == "calibrated fail probability >= 0.4"


def test_band_rule_parses_the_flag() -> None:
    assert m.BandRule.parse("probability:0.05,0.2,0.5") == m.BandRule("probability", (0.05, 0.2, 0.5))
    assert m.BandRule.parse("share:0.2,0.05,0.01") == SHARES
    for bad, said in [
        ("0.05,0.2,0.5", "KIND:"),
        ("odds:0.05,0.2,0.5", "unknown risk band rule"),
        ("probability:0.05,0.2", "three values"),
        ("probability:0.5,0.2,0.05", "must rise"),
        ("share:0.01,0.05,0.2", "must fall"),
        ("probability:0,0.2,0.5", "inside (0, 1)"),
        ("probability:a,b,c", "numbers"),
    ]:
        with pytest.raises(ValueError, match=re.escape(said)):
            m.BandRule.parse(bad)


def test_band_warnings_name_bands_that_do_not_mean_their_bounds() -> None:
    bands = RiskBands((0.1, 0.5, 0.9))
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, 20_000)
    calibrated = (rng.uniform(0, 1, p.size) < p).astype(np.float64)
    assert m.band_warnings(bands, m.band_report(bands, calibrated, p)) == []
    # a model whose probabilities are far too low: LOW fails far more often than 10 %
    inflated = (rng.uniform(0, 1, p.size) < np.sqrt(p)).astype(np.float64)
    said = m.band_warnings(bands, m.band_report(bands, inflated, p))
    assert any(w.startswith("LOW fails") for w in said), said
    # out of order
    upside_down = (rng.uniform(0, 1, p.size) < 1 - p).astype(np.float64)
    said = m.band_warnings(bands, m.band_report(bands, upside_down, p))
    assert any("fails less often" in w for w in said), said


def test_risk_bands_take_the_top_shares() -> None:
    scores = np.random.default_rng(3).beta(1, 25, 100_000)
    bands = m.choose_risk_bands(scores, SHARES)
    t = bands.thresholds
    assert 0 < t[0] < t[1] < t[2] < 1
    assigned = bands.assign(scores)
    assert (assigned >= 2).mean() == pytest.approx(0.20, abs=0.002)
    assert (assigned >= 3).mean() == pytest.approx(0.05, abs=0.002)
    assert (assigned == 4).mean() == pytest.approx(0.01, abs=0.002)


def test_risk_bands_stay_strictly_rising_on_ties() -> None:
    for scores in (np.full(1_000, 0.03), np.zeros(10), np.ones(10), np.array([0.2, 0.2, 0.9])):
        bands = m.choose_risk_bands(scores, SHARES)
        assert isinstance(bands, RiskBands)  # its constructor enforces strictly rising inside (0, 1)


def test_band_rule_is_documented_and_checked() -> None:
    assert SHARES.describe()["CRITICAL"].startswith("top 1%")
    with pytest.raises(ValueError):
        m.choose_risk_bands(np.linspace(0, 1, 10), m.BandRule("share", (0.01, 0.05, 0.2)))


def test_band_report() -> None:
    bands = RiskBands((0.1, 0.5, 0.9))
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.2, 0.6, 0.95])
    r = m.band_report(bands, y, p)
    assert r["band_low_share"] == 0.25 and r["band_critical_fail_rate"] == 1.0
