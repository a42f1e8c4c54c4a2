"""Retraining one model of a served bundle keeps the other, through the real `engine` CLI.

A bundle holds the trade model (`engine train`) and the sync-break model (`engine train-pairs`).
`engine train --out BUNDLE` over a bundle with a pair model carries the pair model over (its file
checked against the replaced manifest, reloaded with the server's checks, and recorded in
`pairs.carried_over`), so ScorePairs keeps serving after the hot reload; `engine train-pairs` over a
bundle keeps its trade model (checked, recorded in `pairs.beside_trade_model`). Every refusal says
what is wrong and what to do, and leaves the bundle as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models.bundle import DEFAULT_BUNDLE, MANIFEST, ModelBundle, sha256_file
from engine.scoring.servable import PairModel, load_serving_model

pytestmark = pytest.mark.slow

SMALL_TRAIN = (
    "--synthetic-rows", "12000", "--num-boost-round", "20", "--learning-rate", "0.2", "--threads", "1",
    "--parity-rows", "1000",
)  # fmt: skip
SMALL_PAIRS = ("--pairs", "12000", "--trees", "20", "--max-samples", "512")


def engine(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def manifest(bundle: Path) -> dict[str, object]:
    raw: dict[str, object] = json.loads((bundle / MANIFEST).read_text())
    return raw


def section(bundle: Path, name: str) -> dict[str, object]:
    value = manifest(bundle)[name]
    assert isinstance(value, dict)
    return value


def snapshot(bundle: Path) -> dict[str, str]:
    return {
        p.relative_to(bundle).as_posix(): sha256_file(p) for p in sorted(bundle.rglob("*")) if p.is_file()
    }


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """A copy of the shipped default bundle: a trade model and a pair model."""
    out = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, out)
    return out


def test_train_over_a_bundle_with_a_pair_model_keeps_it(shipped: Path) -> None:
    pairs_before = section(shipped, "pairs")
    pair_file = sha256_file(shipped / "pairs" / "model.onnx")
    run = engine("train", *SMALL_TRAIN, "--out", shipped, "--version", "2.0.0-test")
    assert run.returncode == 0, run.stderr
    assert "carried over" in run.stderr
    raw = manifest(shipped)
    assert raw["version"] == "2.0.0-test"
    pairs = section(shipped, "pairs")
    carried = pairs.pop("carried_over")
    assert isinstance(carried, dict)
    assert carried["from_trade_model"] == {"name": "settlement-fail", "version": "1.0.0"}
    assert "golden rows" in carried["checked"]
    assert pairs == {k: v for k, v in pairs_before.items() if k != "carried_over"}
    assert sha256_file(shipped / "pairs" / "model.onnx") == pair_file
    # what a server loads at the hot reload: the new trade model and the same pair model
    served = load_serving_model(shipped)
    assert served.version == "2.0.0-test"
    assert served.pairs is not None and served.pairs.version == pairs_before["version"]
    # twice: the carried-over model carries over again
    run = engine("train", *SMALL_TRAIN, "--out", shipped, "--version", "3.0.0-test")
    assert run.returncode == 0, run.stderr
    assert section(shipped, "pairs")["version"] == pairs_before["version"]
    assert section(shipped, "pairs")["carried_over"]["from_trade_model"]["version"] == "2.0.0-test"  # type: ignore[index]


def test_drop_pair_model_writes_the_trade_model_alone(shipped: Path) -> None:
    run = engine("train", *SMALL_TRAIN, "--out", shipped, "--drop-pair-model")
    assert run.returncode == 0, run.stderr
    assert "pairs" not in manifest(shipped) and not (shipped / "pairs").exists()
    assert PairModel.load(ModelBundle.load(shipped)) is None


def test_train_pairs_over_a_trade_model_keeps_it(shipped: Path) -> None:
    run = engine("train", *SMALL_TRAIN, "--out", shipped, "--drop-pair-model", "--version", "4.0.0-test")
    assert run.returncode == 0, run.stderr
    trade = {k: v for k, v in snapshot(shipped).items() if k != MANIFEST}
    before = manifest(shipped)
    run = engine("train-pairs", "--bundle", shipped, *SMALL_PAIRS)
    assert run.returncode == 0, run.stderr
    after = manifest(shipped)
    files = snapshot(shipped)
    assert {k: files[k] for k in trade} == trade  # the trade model's files, byte for byte
    for key in ("name", "version", "created_at", "risk_bands", "metrics", "features", "golden", "training"):
        assert after[key] == before[key], key
    beside = section(shipped, "pairs")["beside_trade_model"]
    assert isinstance(beside, dict) and beside["version"] == "4.0.0-test"
    served = load_serving_model(shipped)
    assert served.version == "4.0.0-test" and served.pairs is not None
    assert sorted(p.name for p in shipped.parent.iterdir()) == ["bundle"]  # no staging leftovers


def test_a_pair_model_that_does_not_match_its_hash_is_not_carried_silently(shipped: Path) -> None:
    (shipped / "pairs" / "model.onnx").write_bytes(b"not the model the manifest hashed")
    before = snapshot(shipped)
    run = engine("train", *SMALL_TRAIN, "--out", shipped)
    assert run.returncode == 1
    assert "does not match its sha256 in the manifest" in run.stderr
    assert f"engine train-pairs --bundle {shipped}" in run.stderr and "--drop-pair-model" in run.stderr
    assert "not a model bundle" not in run.stderr
    assert snapshot(shipped) == before
    # what the message says to do works
    run = engine("train", *SMALL_TRAIN, "--out", shipped, "--drop-pair-model")
    assert run.returncode == 0, run.stderr


def test_a_folder_that_is_not_a_bundle_is_refused_with_what_to_do(tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    run = engine("train", *SMALL_TRAIN, "--out", folder)
    assert run.returncode == 1
    assert "without manifest.json (notes.txt)" in run.stderr and "choose a new or empty --out" in run.stderr
    assert (folder / "notes.txt").read_text() == "keep me"


def test_a_bundle_with_foreign_files_is_refused_with_what_to_do(shipped: Path) -> None:
    (shipped / "notes.txt").write_text("keep me")
    before = snapshot(shipped)
    run = engine("train", *SMALL_TRAIN, "--out", shipped)
    assert run.returncode == 1
    assert "files a bundle does not have (notes.txt)" in run.stderr and "move them out" in run.stderr
    assert snapshot(shipped) == before


def test_train_pairs_refusals_say_what_to_do(shipped: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run = engine("train-pairs", "--bundle", empty, *SMALL_PAIRS)
    assert run.returncode == 1
    assert "not a model bundle" in run.stderr and f"engine train --out {empty}" in run.stderr
    (shipped / "model.onnx").write_bytes(b"broken")
    before = snapshot(shipped)
    run = engine("train-pairs", "--bundle", shipped, *SMALL_PAIRS)
    assert run.returncode == 1
    assert "the trade model of" in run.stderr and "does not match its sha256" in run.stderr
    assert f"engine train --out {shipped}" in run.stderr and "keeps the pair model" in run.stderr
    assert snapshot(shipped) == before
