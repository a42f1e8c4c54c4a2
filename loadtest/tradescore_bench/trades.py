"""The requests the benchmark sends: trades from the engine's synthetic generator (or a fallback),
serialized once as ScoreRequest bytes (single-trade and batch), and the Open Inference Protocol
requests carrying the same batches' feature matrices."""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine._proto.tradescore.v1 import tradescore_pb2 as pb


def _reference_ids(path: Path) -> list[str]:
    try:
        with path.open(newline="") as fh:
            return [row[0] for row in list(csv.reader(fh))[1:] if row]
    except OSError:
        return []


def _fallback_trades(n: int, seed: int, bundle: Path) -> list[pb.Trade]:
    """Varied, valid trades in the spirit of tests/conftest.make_trade (until the generator exists).

    Counterparties and instruments come from the bundle's reference tables (5%
    unknown ones exercise the "not in the table" path); some trades give a
    settlement cycle instead of a date; optional signals are set or left unset.
    """
    rng = np.random.default_rng(seed)
    cps = _reference_ids(bundle / "reference" / "counterparties.csv") or ["CP0001"]
    insts = _reference_ids(bundle / "reference" / "instruments.csv") or ["US0378331005"]
    currencies = np.array(["USD"] * 6 + ["EUR"] * 2 + ["GBP", "JPY"])
    venues = np.array(["DTC"] * 5 + ["EUROCLEAR"] * 2 + ["CREST"] * 2 + ["SIX"])
    trade_days = np.busday_offset(np.datetime64("2026-01-05"), rng.integers(0, 240, n), roll="forward")
    cycles = rng.choice([0, 1, 1, 2, 2, 2, 3], n)
    settle_days = np.busday_offset(trade_days, cycles)
    cp_idx, inst_idx = rng.integers(0, len(cps), n), rng.integers(0, len(insts), n)
    unknown = rng.random(n) < 0.05
    u = rng.random((n, 6))
    quantity = np.round(rng.lognormal(7.0, 1.5, n)) + 1
    price = np.round(rng.lognormal(4.0, 1.0, n), 2) + 0.01
    out: list[pb.Trade] = []
    for i in range(n):
        t = pb.Trade(
            trade_id=f"T{i:07d}",
            account_id=f"ACC-{int(rng.integers(0, 200)):03d}",
            counterparty_id=f"CPX{i % 97:04d}" if unknown[i] else cps[cp_idx[i]],
            instrument_id=f"XX{i % 89:010d}" if unknown[i] else insts[inst_idx[i]],
            asset_class=pb.AssetClass.ValueType(1 + i % 7),
            side=pb.Side.ValueType(1 + (i * 7) % 3),
            quantity=float(quantity[i]),
            price=float(price[i]),
            currency=str(currencies[i % len(currencies)]),
            trade_date=str(trade_days[i]),
            settlement_venue=str(venues[(i * 3) % len(venues)]),
        )
        if u[i, 0] < 0.85:
            t.settlement_date = str(settle_days[i])
        else:
            t.settlement_cycle_days = int(cycles[i])
        if u[i, 1] < 0.8:
            t.inventory_ratio = float(np.round(rng.uniform(0.0, 1.5), 3))
        if u[i, 2] < 0.5:
            t.on_loan_recall_pending = bool(u[i, 2] < 0.05)
        if u[i, 3] < 0.9:
            t.ssi_matched = bool(u[i, 3] < 0.8)
        if u[i, 4] < 0.2:
            t.counterparty_fail_rate = float(np.round(rng.uniform(0.0, 0.2), 4))
        if u[i, 5] < 0.2:
            t.instrument_adv = float(np.round(rng.lognormal(10.0, 1.5), 0) + 1)
        out.append(t)
    return out


def make_trades(n: int, seed: int, bundle: Path) -> tuple[list[pb.Trade], str]:
    """`n` trades from the engine's synthetic generator, or the fallback above; and their source."""
    try:
        synthetic = importlib.import_module("engine.training.synthetic")
        messages = importlib.import_module("engine.scoring.messages")
        cols, _labels, _history = synthetic.generate_trades(n, seed=seed)
        trades: list[pb.Trade] = list(messages.columns_to_trades(cols))
        source = "engine.training.synthetic.generate_trades"
    except Exception as exc:  # noqa: BLE001 - the generator is optional: say why it was not used
        trades = _fallback_trades(n, seed, bundle)
        source = f"bench fallback generator ({type(exc).__name__}: {exc})"
    for i, t in enumerate(trades):  # unique ids whatever the source, so no request repeats an id
        t.trade_id = f"T{i:07d}"
    return trades, source


@dataclass(frozen=True, slots=True)
class RequestSet:
    singles: list[bytes]  # serialized ScoreRequest, 1 trade each
    batches: list[bytes]  # serialized ScoreRequest, `batch_trades` trades each
    batch_trades: int
    source: str


def build_requests(n_singles: int, n_batches: int, batch_trades: int, seed: int, bundle: Path) -> RequestSet:
    trades, source = make_trades(n_singles + n_batches * batch_trades, seed, bundle)
    singles = [
        pb.ScoreRequest(request_id=f"s{i}", trades=[trades[i]]).SerializeToString() for i in range(n_singles)
    ]
    batches = []
    for b in range(n_batches):
        start = n_singles + b * batch_trades
        batches.append(
            pb.ScoreRequest(
                request_id=f"b{b}", trades=trades[start : start + batch_trades]
            ).SerializeToString()
        )
    return RequestSet(singles, batches, batch_trades, source)


def oip_requests(batches: Sequence[bytes], bundle: Path) -> list[bytes]:
    """ModelInferRequest bytes carrying, as raw FP32 contents, the feature matrices of the (b)
    requests: the very matrices in-process ORT is timed on (`prepare_request`, as the server)."""
    from engine._proto.inference import grpc_predict_v2_pb2 as oip
    from engine.config import Settings
    from engine.scoring.servable import load_serving_model
    from engine.scoring.wire import prepare_request

    model = load_serving_model(bundle)
    limit = Settings().max_trades_per_request
    out = []
    for i, raw in enumerate(batches):
        matrix = prepare_request(raw, model.wire, model.plan, limit)[1]
        request = oip.ModelInferRequest(model_name=model.name, model_version=model.version, id=f"o{i}")
        request.raw_input_contents.append(matrix.tobytes())
        request.inputs.add(name=model.bundle.input_name, datatype="FP32", shape=list(matrix.shape))
        out.append(request.SerializeToString())
    return out
