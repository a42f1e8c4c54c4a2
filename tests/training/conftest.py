"""Shared fixtures for the training tests: one small trained model, reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.training.synthetic import SyntheticData, generate_trades
from engine.training.train import TrainConfig, TrainedModel, train_model

#: small but not trivial: ~40 trees on 30k trades trains in a few seconds
SMALL_ROWS = 30_000
SMALL_CONFIG = TrainConfig(
    seed=11, num_boost_round=40, early_stopping_rounds=10, learning_rate=0.1, parity_rows=100_000, threads=2
)


def quiet(_: str) -> None:
    """A printer that drops progress lines."""


@pytest.fixture(scope="session")
def small_data() -> SyntheticData:
    return generate_trades(SMALL_ROWS, seed=11, history_rows=60_000)


@pytest.fixture(scope="session")
def small_model(small_data: SyntheticData) -> TrainedModel:
    trades, labels, refs = small_data
    return train_model(trades, labels, refs, SMALL_CONFIG, log=quiet)


@pytest.fixture(scope="session")
def small_bundle(small_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.training.package import package

    out = tmp_path_factory.mktemp("bundles") / "small"
    package(
        out,
        booster=small_model.booster,
        booster_text=small_model.booster_text,
        rewrite=small_model.rewrite,
        spec=small_model.spec,
        references=small_model.references,
        bands=small_model.bands,
        metrics=small_model.metrics,
        heldout=small_model.heldout,
        training={"source": {"kind": "test"}},
        version="0.0.1-test",
        log=quiet,
    )
    return out
