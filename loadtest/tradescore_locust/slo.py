"""SLO gates: what a run must show for Locust to exit 0.

| gate | measured | passes when |
| --- | --- | --- |
| `p99 single` | client p99 of successful one-trade calls (µs histogram, `latency`) | ≤ `--slo-p99-ms` |
| `p99 batch` | the same for multi-trade calls | ≤ `--slo-batch-p99-ms` |
| `p99 server` | the engine's p99 of one-trade calls (`--metrics-url`) | ≤ `--slo-server-p99-ms` |
| `p99 server batch` | the same for multi-trade calls | ≤ `--slo-server-batch-p99-ms` |
| `error ratio` | failed calls / calls (Locust's stats: every RPC) | ≤ `--slo-error-ratio` |
| `achieved / offered` | completed calls / calls the paced users were due to send | ≥ `--slo-rate-ratio` |

A gate with nothing to measure is `n/a` and does not fail the run (no
multi-trade calls in the `single` mix, no `--metrics-url`, closed-loop users have
no offered rate); a run that completed no call at all fails, as does a
`--metrics-url` that could not be read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .latency import LatencyBook
from .server_metrics import ServerLatency


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The gates' limits (`--slo-*` options)."""

    p99_ms: float
    batch_p99_ms: float
    server_p99_ms: float
    server_batch_p99_ms: float
    error_ratio: float
    rate_ratio: float


@dataclass(frozen=True, slots=True)
class Gate:
    name: str
    measured: float | None
    limit: float
    #: "max": measured must be <= limit; "min": >= limit
    kind: str
    unit: str
    detail: str
    #: None: not applicable
    ok: bool | None

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.ok]
        op = "<=" if self.kind == "max" else ">="
        value = "-" if self.measured is None else f"{self.measured:,.4g}"
        return f"{verdict}  {self.name:<20} {value:>10} {op} {self.limit:g} {self.unit:<5} {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the gates read, gathered by `hooks` on the master (or the local runner)."""

    calls: int
    failures: int
    latencies: LatencyBook
    #: calls the paced users were due to send (None: closed loop)
    offered_calls: float | None
    #: of those, the calls they completed (failed or not)
    paced_calls: int
    #: None: no --metrics-url; a ServerLatency with p99 None and source "error: ..." when unreadable
    server: ServerLatency | None
    #: the same for multi-trade calls
    server_batch: ServerLatency | None = None


def _max_gate(name: str, measured: float | None, limit: float, unit: str, detail: str) -> Gate:
    ok = None if measured is None else measured <= limit
    return Gate(name, measured, limit, "max", unit, detail, ok)


def evaluate(limits: Thresholds, facts: RunFacts) -> list[Gate]:
    gates: list[Gate] = []
    for group, limit, label in (
        ("single", limits.p99_ms, "p99 single"),
        ("batch", limits.batch_p99_ms, "p99 batch"),
    ):
        hist = facts.latencies.groups.get(group)
        p99 = hist.quantile(0.99) if hist is not None else None
        calls = hist.total if hist is not None else 0
        gates.append(
            _max_gate(label, None if p99 is None else p99 * 1e3, limit, "ms", f"client, {calls:,} calls")
        )
    for name, server, server_limit in (
        ("p99 server", facts.server, limits.server_p99_ms),
        ("p99 server batch", facts.server_batch, limits.server_batch_p99_ms),
    ):
        if server is None:
            gates.append(Gate(name, None, server_limit, "max", "ms", "no --metrics-url", None))
        elif server.source.startswith("error"):
            gates.append(Gate(name, None, server_limit, "max", "ms", server.source, False))
        else:
            p99_ms = None if server.p99_s is None else server.p99_s * 1e3
            detail = f"{server.source}, {server.calls:,.0f} observations"
            gates.append(_max_gate(name, p99_ms, server_limit, "ms", detail))
    if facts.calls == 0:
        gates.append(Gate("error ratio", None, limits.error_ratio, "max", "", "no calls", False))
    else:
        ratio = facts.failures / facts.calls
        detail = f"{facts.failures:,} of {facts.calls:,} calls failed"
        gates.append(_max_gate("error ratio", ratio, limits.error_ratio, "", detail))
    if facts.offered_calls is None or facts.offered_calls <= 0:
        gates.append(Gate("achieved / offered", None, limits.rate_ratio, "min", "", "closed loop", None))
    else:
        ratio = facts.paced_calls / facts.offered_calls
        detail = f"{facts.paced_calls:,} calls completed of {facts.offered_calls:,.0f} due"
        ok = ratio >= limits.rate_ratio
        gates.append(Gate("achieved / offered", ratio, limits.rate_ratio, "min", "", detail, ok))
    return gates


def passed(gates: list[Gate]) -> bool:
    return all(g.ok is not False for g in gates)
