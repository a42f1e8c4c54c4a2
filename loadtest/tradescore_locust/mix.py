"""The trade mix an order-management system sends, as pre-serialized `ScoreRequest` bytes.

An OMS scores most trades one at a time, as each execution is booked; trading
gateways flush small batches, and allocation blocks (one block order split
over many accounts) arrive as one large call. The default mix:

| tier | share of calls | trades per call |
| --- | --- | --- |
| single | 97 % | 1 |
| gateway | 2 % | 50-200 |
| block | 1 % | 201-500 |

so most *calls* carry one trade while about half of the *trades* come in
batches (mean ≈ 7.0 trades per call). The trades are drawn from the engine's
own simulator (`engine.training.synthetic.generate_trades`, with the shipped
bundle's seed, so counterparties and instruments are the ones its reference
tables know) and serialized once per process: a call picks a ready `bytes`
object and sends it, with no protobuf work on the load generator's hot path.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine._proto.tradescore.v1 import tradescore_pb2 as pb

#: the shipped default bundle was trained on this seed (docs/training.md: "The shipped default bundle")
DEFAULT_SEED = 20261121


@dataclass(frozen=True, slots=True)
class Tier:
    """One kind of call in the mix: its share of calls and its trades per call (inclusive range)."""

    name: str
    share: float
    min_trades: int
    max_trades: int

    @property
    def label(self) -> str:
        """The request name suffix Locust shows, e.g. `1` or `50-200`."""
        if self.min_trades == self.max_trades:
            return str(self.min_trades)
        return f"{self.min_trades}-{self.max_trades}"

    @property
    def mean_trades(self) -> float:
        return (self.min_trades + self.max_trades) / 2


OMS_MIX = (
    Tier("single", 0.97, 1, 1),
    Tier("gateway", 0.02, 50, 200),
    Tier("block", 0.01, 201, 500),
)
SINGLE_MIX = (Tier("single", 1.0, 1, 1),)
MIXES: dict[str, tuple[Tier, ...]] = {"oms": OMS_MIX, "single": SINGLE_MIX}


def mean_trades_per_call(tiers: Sequence[Tier]) -> float:
    total = sum(t.share for t in tiers)
    return sum(t.share * t.mean_trades for t in tiers) / total


@dataclass(frozen=True, slots=True)
class Prepared:
    """Serialized requests of one tier and their trade counts (same order)."""

    tier: Tier
    payloads: tuple[bytes, ...]
    trades: tuple[int, ...]


class RequestMix:
    """Pre-serialized requests for every tier of a mix; `pick()` draws one by the tiers' shares."""

    def __init__(self, tiers: Sequence[Tier], prepared: Sequence[Prepared], rng: random.Random) -> None:
        self.tiers = tuple(tiers)
        self.prepared = tuple(prepared)
        total = sum(t.share for t in self.tiers)
        acc = 0.0
        cumulative: list[float] = []
        for t in self.tiers:
            acc += t.share / total
            cumulative.append(acc)
        cumulative[-1] = 1.0
        self._cumulative = tuple(cumulative)
        self._rng = rng

    def pick(self) -> tuple[Prepared, int]:
        """A tier (by share) and the index of one of its requests (uniform)."""
        r = self._rng.random()
        for prepared, edge in zip(self.prepared, self._cumulative, strict=True):
            if r < edge:
                return prepared, self._rng.randrange(len(prepared.payloads))
        return self.prepared[-1], self._rng.randrange(len(self.prepared[-1].payloads))

    @property
    def trades_per_call(self) -> float:
        return mean_trades_per_call(self.tiers)


def build_mix(
    tiers: Sequence[Tier], *, seed: int = DEFAULT_SEED, singles: int = 2048, batches_per_tier: int = 24
) -> RequestMix:
    """Draw trades from the engine's generator and serialize the requests of every tier once.

    `singles` distinct one-trade requests; `batches_per_tier` requests per
    multi-trade tier, with sizes drawn uniformly from its range. Trade ids are
    unique within the pool, so no request repeats one.
    """
    from engine.scoring.messages import columns_to_trades
    from engine.training.synthetic import generate_trades

    rng = random.Random(seed)
    plans: list[list[int]] = []
    for tier in tiers:
        if tier.min_trades == tier.max_trades == 1:
            plans.append([1] * singles)
        else:
            plans.append([rng.randint(tier.min_trades, tier.max_trades) for _ in range(batches_per_tier)])
    largest = max(max(plan) for plan in plans)
    pool_size = max(4 * largest, singles, 4096)
    trades = columns_to_trades(generate_trades(pool_size, seed=seed).trades)
    cursor = 0
    prepared: list[Prepared] = []
    for tier, plan in zip(tiers, plans, strict=True):
        payloads: list[bytes] = []
        for k, n in enumerate(plan):
            if cursor + n > len(trades):
                cursor = 0
            chunk = trades[cursor : cursor + n]
            cursor += n
            request = pb.ScoreRequest(request_id=f"{tier.name}-{k}", trades=chunk)
            payloads.append(request.SerializeToString())
        prepared.append(Prepared(tier, tuple(payloads), tuple(plan)))
    return RequestMix(tiers, prepared, random.Random(rng.random()))


def oip_payloads(mix: RequestMix, bundle: str | Path) -> tuple[tuple[bytes, ...], ...]:
    """For every request of `mix`, the Open Inference Protocol `ModelInferRequest` bytes carrying
    its trades' feature matrix as raw FP32 contents, in the same tiers and order.

    The features are computed here, on the load generator, by the engine's own code for
    `bundle` (`engine.scoring.wire.prepare_request`), as a client that keeps a feature store
    would send them; the model is named by the bundle's manifest.
    """
    from engine._proto.inference import grpc_predict_v2_pb2 as oip
    from engine.scoring.servable import load_serving_model
    from engine.scoring.wire import prepare_request

    model = load_serving_model(Path(bundle))
    out: list[tuple[bytes, ...]] = []
    for prepared in mix.prepared:
        requests: list[bytes] = []
        limit = max(prepared.trades)
        for k, payload in enumerate(prepared.payloads):
            _, matrix = prepare_request(payload, model.wire, model.plan, limit)
            request = oip.ModelInferRequest(model_name=model.name, id=f"{prepared.tier.name}-{k}")
            request.inputs.add(name=model.bundle.input_name, datatype="FP32", shape=list(matrix.shape))
            request.raw_input_contents.append(matrix.astype("<f4", copy=False).tobytes())
            requests.append(request.SerializeToString())
        out.append(tuple(requests))
    return tuple(out)
