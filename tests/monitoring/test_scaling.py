"""Autoscaling proof without a cluster: the engine's real in-flight metric -> KEDA's query -> the HPA.

1. The `observed` fixture recorded `engine_inflight_calls` from a real engine under
   a load ramp (4 -> 24 -> 60 -> 120 -> 48 -> 0 closed-loop callers), scraped every
   second by a real Prometheus.
2. Those samples, exactly as scraped, are replayed into a second real Prometheus
   (`promtool tsdb create-blocks-from openmetrics`) on the autoscaler's clock: one
   recorded second stands for DILATION seconds. The in-flight gauge is a level, not
   a rate: how many calls are inside the engine at a moment does not depend on how
   long the load holds, so stretching time changes no sample. It lets a
   ~30-second recording exercise the ScaledObject's 1-minute window and the
   behaviour's minutes-long stabilisation windows.
3. The ScaledObject's own query, read from its YAML, is evaluated by that Prometheus
   every 15 s of the autoscaler's clock (the HPA's sync period; KEDA's metrics
   server evaluates the query when the HPA asks).
4. Each value goes through the HPA algorithm (tests/monitoring/hpa.py: tolerance,
   stabilisation windows, scale-up/down policies, min/max replicas) with the
   ScaledObject's threshold, replica bounds and behaviour.

The sum over pods in the query is what a fleet of pods would report too: the
callers are closed-loop, so the calls in flight are spread over the pods, not
multiplied by them. Pods are assumed ready at once (no start-up delay).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from tests.monitoring.conftest import DILATION, RAMP, SCALED_OBJECT, Recording, load_scaled_object
from tests.monitoring.hpa import SYNC_PERIOD_S, Controller, spec_from_scaled_object
from tests.monitoring.prom import Prometheus, promtool

#: a real Prometheus scraping real engines (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow


def _replay(rec: Recording, tmp_path: Path) -> tuple[Prometheus, float, float, float]:
    """The recorded samples on the autoscaler's clock, in a second Prometheus; returns it and the clock."""
    first = rec.started - 2.0
    last = time.time()
    window = math.ceil(last - first)
    raw = rec.prometheus.query(f'engine_inflight_calls{{job="tradescore"}}[{window}s]', at=last)
    assert len(raw) == 1, raw
    labels = raw[0]["metric"]
    samples = [(float(t), v) for t, v in raw[0]["values"] if float(t) >= first]
    assert len(samples) > 20
    span = (samples[-1][0] - first) * DILATION
    origin = math.floor(time.time() - span - 3600)  # ends an hour ago: every sample is in the past

    def virtual(t: float) -> float:
        return origin + (t - first) * DILATION

    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    lines = ["# TYPE engine_inflight_calls gauge"]
    lines += [f"engine_inflight_calls{{{label_text}}} {v} {virtual(t):.3f}" for t, v in samples]
    lines.append("# EOF")
    openmetrics = tmp_path / "inflight.om"
    openmetrics.write_text("\n".join(lines) + "\n")
    data = tmp_path / "replay-data"
    made = promtool("tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data))
    assert made.returncode == 0, made.stdout + made.stderr
    return Prometheus(tmp_path / "replay", data_dir=data), origin, virtual(samples[-1][0]), first


def test_keda_query_through_the_hpa_scales_up_with_the_ramp_and_back_down(
    observed: Recording, tmp_path: Path
) -> None:
    hpa_spec, query = spec_from_scaled_object(load_scaled_object())
    observed.wait_idle_tail()
    time.sleep(1.5)  # the tail's last samples are scraped
    replay, start, end, first = _replay(observed, tmp_path)
    try:
        result = replay.query_range(query, start + 60, end, SYNC_PERIOD_S)
    finally:
        replay.stop()
    assert len(result) == 1, f"{SCALED_OBJECT}: the query must give one series, got {result}"
    answered = {round(float(t)): float(v) for t, v in result[0]["values"]}
    syncs = [start + 60 + i * SYNC_PERIOD_S for i in range(int((end - start - 60) // SYNC_PERIOD_S) + 1)]
    # a late scrape on this shared machine can leave a window empty: KEDA then fails that poll and the
    # HPA changes nothing; three failures in a row would bring in KEDA's fallback, which is not modelled
    points: list[tuple[float, float | None]] = [(t, answered.get(round(t))) for t in syncs]
    missing = [v is None for _, v in points]
    runs = [all(missing[i : i + 3]) for i in range(len(missing))]
    seconds = math.ceil(time.time() - first)
    scrapes = observed.prometheus.value(f'count_over_time(up{{job="tradescore"}}[{seconds}s])')
    assert not any(runs), (
        f"3 empty answers in a row; {scrapes:.0f} scrapes recorded in {seconds} s (fewer: Prometheus or the "
        f"engine was starved of CPU by something else on this machine): {points}"
    )
    assert sum(missing) <= 0.1 * len(points), f"too many empty answers: {points}"

    def real(t: float) -> float:
        return first + (t - start) / DILATION

    peak_start, peak_end, peak_callers = max(observed.steps, key=lambda s: s[2])
    at_peak = [v for t, v in points if v is not None and peak_start + 1 < real(t) <= peak_end]
    assert at_peak and max(at_peak) >= 0.6 * peak_callers, (
        f"KEDA's query should see the engine's in-flight calls follow the callers: {points}"
    )

    hpa = Controller(hpa_spec, replicas=hpa_spec.min_replicas)
    timeline = [(t, v, hpa.sync(t, v)) for t, v in points]
    replicas = [r for _, _, r in timeline]
    changes = [
        f"t={(t - start) / 60:5.1f} min  query={'-' if v is None else f'{v:6.1f}'}  replicas={r}"
        for i, (t, v, r) in enumerate(timeline)
        if i == 0 or r != timeline[i - 1][2]
    ]
    story = "\n".join(changes)
    print(f"\nHPA decisions ({SCALED_OBJECT.name}, one recorded second = {DILATION:.0f} s):\n{story}")

    assert min(replicas) >= hpa_spec.min_replicas and max(replicas) <= hpa_spec.max_replicas, story
    # before the open: the minimum
    before = [r for t, _, r in timeline if real(t) < observed.steps[1][0]]
    assert before and set(before) == {hpa_spec.min_replicas}, story
    # the ramp: scaled up, to what the peak's in-flight calls need at the threshold per pod
    need = math.ceil(0.75 * max(c for _, c in RAMP) / hpa_spec.target_average_value)
    most = min(hpa_spec.max_replicas, math.ceil((peak_callers + 3) / hpa_spec.target_average_value))
    top = max(replicas)
    assert min(need, hpa_spec.max_replicas) <= top <= most, story
    reached = next(t for t, _, r in timeline if r == top)
    assert real(reached) <= observed.load_end, f"scaled up only after the load ended:\n{story}"
    # up while the load rises, down only after it falls, never back up
    top_index = replicas.index(top)
    assert replicas[: top_index + 1] == sorted(replicas[: top_index + 1]), story
    assert replicas[top_index:] == sorted(replicas[top_index:], reverse=True), story
    # the scale-down waits out its stabilisation window after the last high recommendation
    last_high = max(
        t for t, v, _ in timeline if v is not None and math.ceil(v / hpa_spec.target_average_value) >= top
    )
    first_down = next(t for t, _, r in timeline[top_index:] if r < top)
    assert first_down - last_high >= hpa_spec.scale_down.stabilization_window_seconds, story
    # after the close: back to the minimum
    assert replicas[-1] == hpa_spec.min_replicas, story
