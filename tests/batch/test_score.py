"""engine score-batch: the serving bundle's features and ONNX model, partition-parallel, into Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.batch.errors import DataError
from engine.batch.score import score_batch
from engine.models.bundle import DEFAULT_BUNDLE
from engine.scoring.servable import load_serving_model
from engine.training.data import write_trades
from engine.training.synthetic import generate_trades

from .conftest import engine, quiet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trades_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 synthetic trades as three Parquet partitions, and the same trades as one CSV file."""
    trades, labels, _ = generate_trades(3_000, seed=5)
    root = tmp_path_factory.mktemp("trades")
    for i, part in enumerate((slice(0, 1_000), slice(1_000, 2_200), slice(2_200, 3_000))):
        write_trades(root / "parquet" / f"part-{i}.parquet", trades.take(part), labels[part])
    write_trades(root / "trades.csv", trades, labels)
    return root


def test_scores_equal_the_in_process_serving_model(cluster: Any, trades_dir: Path, tmp_path: Path) -> None:
    summary = score_batch(str(trades_dir / "parquet"), tmp_path / "out", str(DEFAULT_BUNDLE), cluster,
                          reasons="HIGH", log=quiet)  # fmt: skip
    got = pd.read_parquet(tmp_path / "out" / "scores")
    assert summary["scored"] == summary["rows"] == len(got) == 3_000 and summary["partitions"] == 3
    model = load_serving_model(DEFAULT_BUNDLE)
    from engine.features.columns import from_table
    from engine.trade_files import read_table

    trades = from_table(read_table(trades_dir / "trades.csv"))
    want = model.score(trades)
    assert got["trade_id"].tolist() == trades.trade_id.tolist()  # input order, partition by partition
    np.testing.assert_array_equal(got["fail_probability"].to_numpy(), want)
    bands = np.array(["LOW", "MEDIUM", "HIGH", "CRITICAL"])[model.bundle.manifest.risk_bands.assign(want) - 1]
    assert got["risk_band"].tolist() == bands.tolist()
    assert set(got["model_version"]) == {model.version}
    explained = got[got["risk_band"].isin(["HIGH", "CRITICAL"])]
    assert len(explained) == summary["explained"] > 0
    assert all(1 <= len(r) <= 3 and all(x["contribution"] > 0 for x in r) for r in explained["reasons"])
    assert all(len(r) == 0 for r in got[got["risk_band"].isin(["LOW", "MEDIUM"])]["reasons"])
    # the same contributions as the server's explainer
    row = explained.index[0]
    features = model.plan.compute(trades.take(np.array([row])))
    contributions = model.explainer.shap.contributions(features)[0]  # type: ignore[union-attr]
    first = explained.loc[row, "reasons"][0]
    assert first["code"] == model.explainer.codes[int(np.argmax(contributions))]  # type: ignore[union-attr]
    assert first["contribution"] == pytest.approx(float(contributions.max()))


def test_an_invalid_trade_names_file_line_and_field(cluster: Any, trades_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "trades.csv"
    lines = (trades_dir / "trades.csv").read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").replace('"', "").split(",")
    cells = lines[1500].split(",")
    cells[header.index("quantity")] = "-5"
    lines[1500] = ",".join(cells)
    csv.write_text("".join(lines))
    with pytest.raises(DataError, match=rf"{csv}, line 1,501: quantity: must be a number > 0"):
        score_batch(str(csv), tmp_path / "out", str(DEFAULT_BUNDLE), cluster, log=quiet)
    summary = score_batch(str(csv), tmp_path / "out2", str(DEFAULT_BUNDLE), cluster, drop_invalid=True,
                          block_bytes=200_000, log=quiet)  # fmt: skip
    assert summary["scored"] == 2_999 and summary["partitions"] > 1
    assert summary["dropped_invalid"] == {"quantity: must be a number > 0 and at most 1e+15": 1}


def test_score_batch_command(trades_dir: Path, tmp_path: Path) -> None:
    run = engine("score-batch", "--data", str(trades_dir / "parquet"), "--out", str(tmp_path / "out"),
                 "--workers", "1")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "score-batch: 3,000 trades" in run.stderr and run.stdout.strip().endswith("summary.json")
    assert "reasons" not in pd.read_parquet(tmp_path / "out" / "scores").columns
    missing = engine("score-batch", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
