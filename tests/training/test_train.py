"""Training end to end: small model -> bundle -> ModelBundle; files in; CLI commands; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from engine.features.compute import FeaturePlan
from engine.models.bundle import MANIFEST, ModelBundle
from engine.training import cli
from engine.training.data import read_trades, split_history, tables_from_history, write_trades
from engine.training.errors import DataError
from engine.training.synthetic import SyntheticData, fx_table, generate_trades
from engine.training.train import TrainedModel, split_rows

# ------------------------------------------------------------------ the small model and its bundle


def test_held_out_auc_is_informative_but_far_from_perfect(small_model: TrainedModel) -> None:
    auc = small_model.metrics["roc_auc"]
    assert 0.7 < auc < 0.95, auc
    assert 0.02 <= small_model.metrics["base_rate"] <= 0.06
    assert small_model.metrics["brier"] < small_model.metrics["base_rate"]  # beats a constant guess
    assert small_model.booster.num_trees() == small_model.best_iteration <= 40


def test_bundle_round_trip(small_model: TrainedModel, small_bundle: Path, small_data: SyntheticData) -> None:
    manifest = json.loads((small_bundle / MANIFEST).read_text())
    parity = manifest["parity"]
    assert parity["max_abs_diff"] <= 1e-5 and parity["threshold"] == 1e-5
    assert parity["rows"] == small_model.heldout.shape[0]  # every held-out row (fewer than 100k exist)
    assert {"rows", "max_abs_diff", "mean_abs_diff", "threshold", "method"} <= set(parity)
    # the compiled backend against ONNX Runtime, on the held-out rows and 100k random rows
    compiled = parity["compiled"]
    assert compiled["passed"] is True and compiled["max_abs_diff"] <= 1e-6 and compiled["threshold"] == 1e-6
    assert compiled["rows"]["heldout"]["rows"] == small_model.heldout.shape[0]
    assert compiled["rows"]["random"]["rows"] == 100_000
    for key in ("roc_auc", "pr_auc", "brier", "log_loss", "base_rate", "rows"):
        assert isinstance(manifest["metrics"][key], float), key
    assert manifest["name"] == "settlement-fail" and manifest["version"] == "0.0.1-test"
    assert list(manifest["risk_bands"]) == ["MEDIUM", "HIGH", "CRITICAL"]
    golden = manifest["golden"]
    assert len(golden["inputs"]) == 64 == len(golden["probabilities"])
    assert any(v is None for row in golden["inputs"] for v in row)  # missing values, as JSON null
    training = manifest["training"]
    assert {"lightgbm", "onnx", "onnxruntime", "onnxmltools"} <= set(training["versions"])

    bundle = ModelBundle.load(small_bundle)  # hashes, input width, golden rows
    trades = small_data.trades
    x = FeaturePlan(bundle.manifest.features, bundle.references).compute(trades)
    served = bundle.predict(x).astype(np.float64)
    from_lgb = lgb.Booster(model_file=str(small_bundle / "model.lgb.txt")).predict(x)
    assert np.abs(served - from_lgb).max() <= 1e-5
    assert np.array_equal(from_lgb, small_model.booster.predict(x))


def test_split_is_stratified_disjoint_and_seeded() -> None:
    y = (np.random.default_rng(0).random(10_000) < 0.04).astype(np.int8)
    s = split_rows(y, 0.2, seed=1)
    all_rows = np.concatenate([s.train, s.valid, s.test])
    assert np.array_equal(np.sort(all_rows), np.arange(10_000))
    assert s.valid.size == pytest.approx(1_000, abs=2) and s.test.size == pytest.approx(1_000, abs=2)
    for part in (s.train, s.valid, s.test):
        assert y[part].mean() == pytest.approx(y.mean(), abs=0.003)
    again = split_rows(y, 0.2, seed=1)
    assert np.array_equal(s.test, again.test)
    with pytest.raises(DataError, match="failed"):
        split_rows(np.zeros(100, dtype=np.int8), 0.2, seed=1)


# ------------------------------------------------------------------ files


@pytest.fixture(scope="module")
def trades_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    data = generate_trades(30_000, seed=21, history_rows=60_000)
    return {
        s: write_trades(root / f"trades.{s}", data.trades, data.labels) for s in ("csv", "parquet", "jsonl")
    }


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_written_files_read_back_identically(trades_files: dict[str, Path], suffix: str) -> None:
    original = generate_trades(30_000, seed=21, history_rows=60_000)
    read = read_trades(trades_files[suffix])
    assert read.labels is not None and np.array_equal(read.labels, original.labels)
    refs = original.references
    from engine.features.compute import default_spec

    spec = default_spec(original.trades.settlement_venue, original.trades.currency)
    a = FeaturePlan(spec, refs).compute(original.trades)
    b = FeaturePlan(spec, refs).compute(read.trades)
    assert np.array_equal(a, b, equal_nan=True)


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--num-boost-round",
        "30",
        "--learning-rate",
        "0.1",
        "--early-stopping-rounds",
        "10",
        "--parity-rows",
        "5000",
        *extra,
    ]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_train_on_a_file(trades_files: dict[str, Path], tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "bundle"
    assert cli.main(_train_args(trades_files[suffix], out)) == 0
    bundle = ModelBundle.load(out)
    source = bundle.manifest.raw["training"]["source"]
    assert source["kind"] == "file" and source["path"].endswith(f"trades.{suffix}")
    assert "earliest" in source["references"]
    assert 0.6 < bundle.manifest.metrics["roc_auc"] < 0.95
    assert bundle.manifest.parity["rows"] == 5000


def test_train_with_reference_tables_from_a_bundle(
    trades_files: dict[str, Path], small_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    assert cli.main(_train_args(trades_files["parquet"], out, "--reference-from", str(small_bundle))) == 0
    rows = ModelBundle.load(out).manifest.raw["training"]["rows"]
    assert rows["total"] == 30_000  # no history split needed


def _csv(
    path: Path, data: SyntheticData, edit: dict[str, tuple[int, str]] | None = None, drop: str | None = None
) -> Path:
    write_trades(path, data.trades, data.labels)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    names = [h.strip('"') for h in header]
    if drop is not None:
        j = names.index(drop)
        lines = [",".join(c for i, c in enumerate(line.split(",")) if i != j) for line in lines]
    for column, (row, value) in (edit or {}).items():
        cells = lines[row + 1].split(",")
        cells[names.index(column)] = value
        lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny() -> SyntheticData:
    return generate_trades(200, seed=4, history_rows=2_000)


def test_missing_column_is_named(tiny: SyntheticData, tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", tiny, drop="quantity")
    with pytest.raises(DataError, match="quantity"):
        read_trades(path)
    path = _csv(tmp_path / "t.csv", tiny, drop="failed")
    with pytest.raises(DataError, match="label column 'failed'"):
        read_trades(path)


def test_unparseable_value_names_column_and_row(tiny: SyntheticData, tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", tiny, {"quantity": (7, "12abc")})
    with pytest.raises(DataError, match=r"row 7, line 9: quantity: must be a number, got '12abc'"):
        read_trades(path)
    path = _csv(tmp_path / "t.csv", tiny, {"trade_date": (3, "2024-13-45")})
    with pytest.raises(DataError, match=r"row 3, line 5: trade_date"):
        read_trades(path)
    path = _csv(tmp_path / "t.csv", tiny, {"failed": (5, "maybe")})
    with pytest.raises(DataError, match=r"row 5: failed must be 0/1 or true/false, got 'maybe'"):
        read_trades(path)


def test_invalid_rows_are_refused_or_dropped_with_counts(tiny: SyntheticData, tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", tiny, {"quantity": (12, "-5"), "side": (40, "SIDEWAYS")})
    with pytest.raises(
        DataError, match=r"row 12, line 14: quantity: must be a number > 0 and at most 1e\+15.*--drop-invalid"
    ):
        read_trades(path)
    lines: list[str] = []
    read = read_trades(path, drop_invalid=True, log=lines.append)
    assert len(read.trades) == 198 and read.labels is not None and read.labels.size == 198
    assert read.dropped == {
        "quantity: must be a number > 0 and at most 1e+15": 1,
        "side: is unspecified or not a known Side value": 1,
    }
    assert lines[0].startswith("dropped 2 invalid row(s) of 200")


def test_cli_reports_bad_files_with_exit_code_1(
    tiny: SyntheticData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(tmp_path / "t.csv", tiny, {"price": (2, "0")})
    assert cli.main(["train", "--data", str(path), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "engine train: error:" in err and "row 2, line 4: price" in err
    assert not (tmp_path / "b").exists()
    assert cli.main(["train", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "b")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_history_tables_exclude_the_rows_trained_on(tiny: SyntheticData) -> None:
    trades, labels, _ = tiny
    history, rest = split_history(trades, 0.3)
    assert history.size + rest.size == len(trades)
    assert trades.trade_date[history].max() < trades.trade_date[rest].min()
    refs = tables_from_history(trades.take(history), labels[history], fx_table())
    ids, counts = np.unique(trades.counterparty_id[history], return_counts=True)
    pos, found = refs.counterparties.positions(ids)
    assert found.all() and np.array_equal(refs.counterparties.columns["trades"][pos], counts)
    assert refs.counterparties.columns["trades"].sum() == history.size
    with pytest.raises(DataError):
        split_history(trades.take(np.flatnonzero(trades.trade_date == trades.trade_date[0])), 0.3)


# ------------------------------------------------------------------ export and generate commands


def test_export_command_packages_an_external_model(
    small_model: TrainedModel, small_bundle: Path, tmp_path: Path
) -> None:
    model_file = tmp_path / "external.txt"
    model_file.write_text(small_model.booster_text)
    out = tmp_path / "exported"
    args = [
        "export",
        "--lgb-model",
        str(model_file),
        "--reference-from",
        str(small_bundle),
        "--synthetic-rows",
        "3000",
        "--seed",
        "5",
        "--out",
        str(out),
        "--version",
        "9",
    ]
    assert cli.main(args) == 0
    bundle = ModelBundle.load(out)
    assert bundle.version == "9" and bundle.manifest.parity["rows"] == 3000
    assert "roc_auc" in bundle.manifest.metrics


def test_export_refuses_a_model_of_another_width(small_bundle: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    other = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, (x[:, 0] > 0).astype(int)), 2)
    other.save_model(str(tmp_path / "m.txt"))
    args = [
        "export",
        "--lgb-model",
        str(tmp_path / "m.txt"),
        "--reference-from",
        str(small_bundle),
        "--synthetic-rows",
        "500",
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(args) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_generate_command(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"g.{suffix}"
    assert cli.main(["generate", "--rows", "1000", "--seed", "3", "--out", str(out)]) == 0
    read = read_trades(out)
    assert len(read.trades) == 1000 and read.labels is not None
    assert cli.main(["generate", "--rows", "10", "--out", str(tmp_path / "g.xlsx")]) == 1


@pytest.mark.slow
def test_every_option_has_help_with_its_default() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for add in (cli.add_train_parser, cli.add_export_parser, cli.add_generate_parser):
        p = add(sub)
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help, (p.prog, action.dest)
            if action.default not in (None, False) and not action.required:
                assert "default" in action.help, (p.prog, action.dest)
