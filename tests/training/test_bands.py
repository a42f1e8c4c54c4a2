"""Risk bands mean the same thing on any data: trained by the real CLI on a file where most trades fail.

Under the old rule (bounds at the top 20 % / 5 % / 1 % of validation scores, still there as
`--risk-bands share:...`) such a file put 80 % of the trades in LOW, and they failed about half the
time. Under the default rule a band's bounds are calibrated fail probabilities, so each band's
observed fail rate on held-out trades lies inside its bounds and the rates rise band by band.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models.spec import BAND_NAMES
from engine.training import metrics as m

pytestmark = pytest.mark.slow

FAIL_RATE = 0.54
#: a band holding fewer held-out trades than this share is too small to judge its fail rate
MIN_SHARE = 0.01


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def high_fail_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bands") / "trades.csv"
    run = engine(
        "generate", "--rows", "24000", "--seed", "5", "--base-rate", str(FAIL_RATE), "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert "failed" in run.stderr
    return out


def train(data: Path, out: Path, *extra: str) -> tuple[dict[str, object], str]:
    run = engine(
        "train", "--data", str(data), "--out", str(out), "--num-boost-round", "80", "--learning-rate", "0.1",
        "--threads", "1", "--parity-rows", "2000", "--version", "0.0.1-bands", *extra,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    manifest: dict[str, object] = json.loads((out / "manifest.json").read_text())
    return manifest, run.stderr


def band_rates(metrics: dict[str, float]) -> list[tuple[str, float, float]]:
    return [
        (name, metrics[f"band_{name.lower()}_share"], metrics[f"band_{name.lower()}_fail_rate"])
        for name in BAND_NAMES
    ]


def test_bands_mean_their_probabilities_on_a_high_fail_rate_file(
    high_fail_file: Path, tmp_path: Path
) -> None:
    manifest, report = train(high_fail_file, tmp_path / "bundle")
    metrics = manifest["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["base_rate"] > 0.45
    assert manifest["risk_bands"] == dict(zip(BAND_NAMES[1:], m.DEFAULT_BAND_PROBABILITIES, strict=True))
    training = manifest["training"]
    assert isinstance(training, dict)
    assert training["risk_band_rule"]["MEDIUM"] == "calibrated fail probability >= 0.04"
    # the report shows every band's observed fail rate
    line = next(x for x in report.splitlines() if "test fail rate by band" in x)
    for name in BAND_NAMES:
        assert f"{name} " in line.split("test fail rate by band:")[1]
    edges = (0.0, *m.DEFAULT_BAND_PROBABILITIES, 1.0)
    judged = [
        (i, name, rate) for i, (name, share, rate) in enumerate(band_rates(metrics)) if share >= MIN_SHARE
    ]
    assert len(judged) >= 2, band_rates(metrics)
    for i, name, rate in judged:
        # inside the band's bounds, with room for sampling noise on a few thousand held-out trades
        assert edges[i] - m.BAND_SLACK <= rate < edges[i + 1] + m.BAND_SLACK, (
            name,
            rate,
            band_rates(metrics),
        )
    rates = [rate for _, _, rate in judged]
    assert rates == sorted(rates), band_rates(metrics)
    # LOW never holds a crowd of failing trades: whatever it holds fails less than MEDIUM's bound + slack
    assert metrics["band_low_fail_rate"] < m.DEFAULT_BAND_PROBABILITIES[0] + m.BAND_SLACK
    assert "warning: risk band" not in report


def test_the_share_rule_is_still_there_and_shows_what_it_does(high_fail_file: Path, tmp_path: Path) -> None:
    manifest, report = train(high_fail_file, tmp_path / "bundle", "--risk-bands", "share:0.20,0.05,0.01")
    metrics = manifest["metrics"]
    assert isinstance(metrics, dict)
    training = manifest["training"]
    assert isinstance(training, dict)
    assert training["risk_band_rule"]["MEDIUM"] == "top 20% of validation trades by fail probability"
    assert metrics["band_low_share"] == pytest.approx(0.8, abs=0.03)
    # the defect the default rule removes: most trades in LOW, and they fail about as often as any
    assert metrics["band_low_fail_rate"] > 0.3
    assert "(share rule)" in report
    # because LOW then reaches up to a fail probability above one half
    bounds = manifest["risk_bands"]
    assert isinstance(bounds, dict) and bounds["MEDIUM"] > 0.5


def test_a_bad_rule_is_refused_with_what_to_write(tmp_path: Path) -> None:
    run = engine(
        "train", "--synthetic-rows", "100", "--out", str(tmp_path / "b"), "--risk-bands", "top:1,2,3"
    )
    assert run.returncode == 2
    assert "unknown risk band rule 'top'" in run.stderr and "probability, share" in run.stderr
    assert not (tmp_path / "b").exists()
