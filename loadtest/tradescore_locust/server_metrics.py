"""The engine's own latency histograms, read from its Prometheus endpoint before and after a run.

Locust times calls to the millisecond; the engine's histograms start at 10 µs.
Of what an engine exports, this reads:

- `engine_call_seconds` (the engine's time per scoring call, by size class): its
  unary `Score` series, one-trade calls (`trades="1"`: the `single` group) apart
  from multi-trade ones (the `batch` group), so that each is judged on its own;
- `grpc_server_handling_seconds` (the gRPC server interceptor's histogram, when
  the engine has one): the series of unary `Score` calls (`grpc_method="Score"`;
  a stream's series times the whole stream, not its messages), summed over the
  other labels;
- `engine_queue_wait_seconds` and `engine_inference_seconds` (per batch: how long
  the oldest trade waited for the micro-batcher, and the ONNX Runtime call);
- `engine_rows_scored_total` (trades scored) and `engine_batches_total`.

Several URLs (one per pod) are added up. A window is `after - before`; a counter
that went down (the pod restarted) counts from zero.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

GRPC_HANDLING = "grpc_server_handling_seconds"
QUEUE_WAIT = "engine_queue_wait_seconds"
INFERENCE = "engine_inference_seconds"
ENGINE_CALLS = "engine_call_seconds"
#: engine_call_seconds{method="Score"} split by size: one-trade calls, and the others
CALL_GROUPS = {"single": f"{ENGINE_CALLS}:single", "batch": f"{ENGINE_CALLS}:batch"}
HISTOGRAMS = (GRPC_HANDLING, QUEUE_WAIT, INFERENCE, *CALL_GROUPS.values())
ROWS_SCORED = "engine_rows_scored"
BATCHES = "engine_batches"
COUNTERS = (ROWS_SCORED, BATCHES)

#: cumulative count by bucket upper bound (`le`), +Inf included
Buckets = dict[float, float]


@dataclass
class Snapshot:
    histograms: dict[str, Buckets] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)

    def add(self, other: Snapshot) -> None:
        for name, buckets in other.histograms.items():
            mine = self.histograms.setdefault(name, {})
            for le, count in buckets.items():
                mine[le] = mine.get(le, 0.0) + count
        for name, value in other.counters.items():
            self.counters[name] = self.counters.get(name, 0.0) + value


def _selected(family: str, labels: Mapping[str, str]) -> bool:
    if family != GRPC_HANDLING:
        return True
    if labels.get("grpc_method", "Score") != "Score":
        return False
    return labels.get("grpc_type", "unary") == "unary"


def parse(text: str) -> Snapshot:
    """The histograms and counters above from one Prometheus text exposition."""
    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        if family.name == ENGINE_CALLS:
            for sample in family.samples:
                if not sample.name.endswith("_bucket") or sample.labels.get("method") != "Score":
                    continue
                group = CALL_GROUPS["single" if sample.labels.get("trades") == "1" else "batch"]
                buckets = snap.histograms.setdefault(group, {})
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
        elif family.name in HISTOGRAMS:
            buckets = snap.histograms.setdefault(family.name, {})
            for sample in family.samples:
                if not sample.name.endswith("_bucket") or not _selected(family.name, sample.labels):
                    continue
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
        elif family.name in COUNTERS:
            for sample in family.samples:
                if sample.name == family.name + "_total":
                    snap.counters[family.name] = snap.counters.get(family.name, 0.0) + float(sample.value)
    return snap


def scrape(urls: Sequence[str], timeout_s: float = 5.0) -> Snapshot:
    """Read every URL (raises OSError / ValueError when one cannot be read) and add them up."""
    total = Snapshot()
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            total.add(parse(response.read().decode("utf-8")))
    return total


def window(before: Snapshot, after: Snapshot) -> Snapshot:
    """What happened between two snapshots."""
    out = Snapshot()
    for name, buckets in after.histograms.items():
        old = before.histograms.get(name, {})
        diff = {le: count - old.get(le, 0.0) for le, count in buckets.items()}
        out.histograms[name] = buckets if any(v < 0 for v in diff.values()) else diff
    for name, value in after.counters.items():
        delta = value - before.counters.get(name, 0.0)
        out.counters[name] = value if delta < 0 else delta
    return out


def count(buckets: Buckets) -> float:
    return buckets.get(math.inf, 0.0)


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' `histogram_quantile`: linear within the bucket that holds the rank.

    None when the histogram is empty; the largest finite bound when the rank
    falls in the +Inf bucket; the lower edge of the first bucket is 0.
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][0] != math.inf:
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in ordered:
        if cumulative >= rank:
            if le == math.inf:
                return lower
            if cumulative == below:
                return le
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return lower


@dataclass(frozen=True, slots=True)
class ServerLatency:
    """The server-side p99 the gate reads, and what it was computed from."""

    p99_s: float | None
    source: str
    calls: float


def server_p99(snap: Snapshot, group: str = "single") -> ServerLatency:
    """p99 of the engine's time for `Score` calls of one size group ("single": one trade; "batch":
    more), or the best bound its metrics allow.

    With `engine_call_seconds`: its p99 over the group's unary `Score` calls. An engine without it:
    for "single", the p99 of `grpc_server_handling_seconds` over unary `Score` calls (all sizes
    together), else the p99 of the batcher's queue wait plus the p99 of the model call (each per
    batch) — an upper bound of the batched part of a call's time at the 99th percentile,
    excluding decode and gRPC; for "batch", nothing.
    """
    calls = snap.histograms.get(CALL_GROUPS[group])
    if calls and count(calls) > 0:
        label = 'trades="1"' if group == "single" else 'trades!="1"'
        return ServerLatency(
            histogram_quantile(0.99, calls), f"{ENGINE_CALLS}{{Score, {label}}}", count(calls)
        )
    if group != "single":
        return ServerLatency(None, f"no {ENGINE_CALLS} observations for {group} calls", 0.0)
    grpc_hist = snap.histograms.get(GRPC_HANDLING)
    if grpc_hist and count(grpc_hist) > 0:
        p99 = histogram_quantile(0.99, grpc_hist)
        return ServerLatency(p99, f"{GRPC_HANDLING}{{Score}}", count(grpc_hist))
    wait, infer = snap.histograms.get(QUEUE_WAIT), snap.histograms.get(INFERENCE)
    if wait and infer and count(infer) > 0:
        w, i = histogram_quantile(0.99, wait), histogram_quantile(0.99, infer)
        p99 = None if w is None or i is None else w + i
        return ServerLatency(p99, f"p99 {QUEUE_WAIT} + p99 {INFERENCE}", count(infer))
    return ServerLatency(None, "no server histogram with observations", 0.0)


def summary(snap: Snapshot, seconds: float) -> dict[str, float | None]:
    """The window's figures for the report (seconds: the window's length)."""
    out: dict[str, float | None] = {}
    for name in HISTOGRAMS:
        buckets = snap.histograms.get(name)
        if buckets:
            out[f"{name}_count"] = count(buckets)
            for q in (0.5, 0.99):
                out[f"{name}_p{round(q * 100)}"] = histogram_quantile(q, buckets)
    rows, batches = snap.counters.get(ROWS_SCORED), snap.counters.get(BATCHES)
    if rows is not None:
        out["rows_scored"] = rows
        out["rows_scored_per_s"] = rows / seconds if seconds > 0 else None
    if rows is not None and batches:
        out["rows_per_batch"] = rows / batches
    return out
