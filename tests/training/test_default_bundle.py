"""The shipped default bundle: it loads, its figures are sane, and its documented command rebuilds it."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from engine.models.bundle import DEFAULT_BUNDLE, MANIFEST, ModelBundle
from engine.training import cli


def _documented_command() -> list[str]:
    """The `engine train ...` command in engine.training.cli's docstring, as argv after `engine`."""
    doc = cli.__doc__ or ""
    match = re.search(r"^\s+(engine train .*?)(?<!\\)$", doc.replace("\\\n", " "), re.M)
    assert match, "the rebuild command is missing from engine.training.cli's docstring"
    return shlex.split(match.group(1))[1:]


def _documented_pairs_command() -> list[str]:
    """The `engine train-pairs ...` command that follows it in the docstring, as argv after `engine`."""
    match = re.search(r"^\s+(engine train-pairs .*?)$", cli.__doc__ or "", re.M)
    assert match, "the pair model's rebuild command is missing from engine.training.cli's docstring"
    return shlex.split(match.group(1))[1:]


def test_documented_command_targets_the_shipped_bundle() -> None:
    args = _documented_command()
    out = Path(args[args.index("--out") + 1])
    assert (Path(__file__).resolve().parents[2] / out).resolve() == DEFAULT_BUNDLE
    assert args[:3] == ["train", "--synthetic-rows", "400000"]
    pairs = _documented_pairs_command()
    bundle = Path(pairs[pairs.index("--bundle") + 1])
    assert (Path(__file__).resolve().parents[2] / bundle).resolve() == DEFAULT_BUNDLE


def test_default_bundle_loads_with_sane_figures() -> None:
    bundle = ModelBundle.load(DEFAULT_BUNDLE)
    m = bundle.manifest
    assert m.name == "settlement-fail" and m.version == "1.0.0"
    assert len(m.features) == 15
    assert 0.78 < m.metrics["roc_auc"] < 0.92
    assert 0.02 <= m.metrics["base_rate"] <= 0.06
    assert m.metrics["pr_auc"] > 3 * m.metrics["base_rate"]  # far better than chance (= base rate)
    assert m.metrics["brier"] < m.metrics["base_rate"] * (1 - m.metrics["base_rate"])
    assert m.metrics["log_loss"] < 0.16
    assert m.parity["max_abs_diff"] <= 1e-5 and m.parity["rows"] == 100_000
    low, mid, high = m.risk_bands.thresholds
    assert 0 < low < mid < high < 1
    assert (
        m.metrics["band_critical_fail_rate"]
        > m.metrics["band_high_fail_rate"]
        > m.metrics["band_low_fail_rate"]
    )
    training = m.raw["training"]
    assert training["source"] == {
        "kind": "synthetic",
        "generator": "engine.training.synthetic.generate_trades",
        "rows": 400_000,
        "seed": 20261121,
        "base_rate_target": 0.035,
    }
    assert training["params"]["num_threads"] == 2 and training["params"]["deterministic"] is True


def test_default_bundle_is_small() -> None:
    size = sum(p.stat().st_size for p in DEFAULT_BUNDLE.rglob("*") if p.is_file())
    assert size < 2_000_000
    manifest = json.loads((DEFAULT_BUNDLE / MANIFEST).read_text())
    assert set(manifest["files"]) == {
        "model.onnx",
        "model.lgb.txt",
        "reference/counterparties.csv",
        "reference/instruments.csv",
        "reference/fx.csv",
        "pairs/model.onnx",
    }


@pytest.mark.slow
def test_documented_command_reproduces_the_default_bundle(tmp_path: Path) -> None:
    args = _documented_command()
    args[args.index("--out") + 1] = str(tmp_path / "rebuilt")
    lines: list[str] = []
    assert cli.run_train(cli_namespace(args), log=lines.append) == 0, "\n".join(lines)
    pairs = _documented_pairs_command()
    pairs[pairs.index("--bundle") + 1] = str(tmp_path / "rebuilt")
    assert cli.run_train_pairs(cli_namespace(pairs), log=lines.append) == 0, "\n".join(lines)
    shipped = ModelBundle.load(DEFAULT_BUNDLE)
    rebuilt = ModelBundle.load(tmp_path / "rebuilt")
    golden = shipped.manifest.golden_inputs
    np.testing.assert_allclose(
        rebuilt.predict(golden), shipped.manifest.golden_probabilities, rtol=0, atol=1e-6
    )
    assert rebuilt.manifest.files == shipped.manifest.files  # the very same model and tables, byte for byte
    assert rebuilt.manifest.metrics == shipped.manifest.metrics


def cli_namespace(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.add_train_parser(sub)
    cli.add_train_pairs_parser(sub)
    return parser.parse_args(args)
