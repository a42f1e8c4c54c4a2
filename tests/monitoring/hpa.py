"""The Horizontal Pod Autoscaler's replica decision, as the Kubernetes controller makes it.

Used to prove, without a cluster, what a KEDA ScaledObject (which hands its
`advanced.horizontalPodAutoscalerConfig.behavior` to an HPA with one External
metric of type AverageValue) would do with the engine's recorded metric.

Sources (facts, re-implemented here, not copied):
- https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ —
  desiredReplicas = ceil(currentReplicas * currentMetricValue / desiredMetricValue),
  skipped within the tolerance (0.1 by default); the controller runs every 15 s
  (--horizontal-pod-autoscaler-sync-period); stabilisation windows (scale-up: the
  lowest, scale-down: the highest recommendation within the window; defaults 0 s
  and 300 s); scaling policies with periodSeconds and selectPolicy Max / Min /
  Disabled; default policies (up: 100 % or 4 pods per 15 s, down: 100 % per 15 s).
- kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator.go,
  GetExternalPerPodMetricReplicas: usage = sum of the metric's values (milli-units),
  ratio = usage / (target * statusReplicas); outside the tolerance the proposal is
  ceil(usage / target).
- kubernetes/kubernetes pkg/controller/podautoscaler/horizontal.go: reconcileAutoscaler
  (replicas outside [min, max] are brought back first; the first sync records the current
  count as a recommendation), stabilizeRecommendationWithBehaviors (the current count is
  clamped between the scale-up and scale-down window bounds), convertDesiredReplicasWithBehaviorRate
  and calculateScale{Up,Down}Limit* (the period's starting count is the current count minus
  the pods added plus the pods removed within periodSeconds; Percent rounds up when adding and
  truncates when removing), storeScaleEvent.

Pods are assumed ready as soon as they are asked for (status replicas = spec replicas).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SYNC_PERIOD_S = 15.0
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Policy:
    type: str  # "Pods" or "Percent"
    value: int
    period_seconds: int


@dataclass(frozen=True)
class Rules:
    """One direction of `behavior` (HPAScalingRules), with the API server's defaults filled in."""

    stabilization_window_seconds: int
    select_policy: str  # "Max", "Min" or "Disabled"
    policies: tuple[Policy, ...]
    tolerance: float = DEFAULT_TOLERANCE

    @staticmethod
    def from_spec(raw: Mapping[str, Any] | None, direction: str) -> Rules:
        raw = raw or {}
        policies: tuple[Policy, ...]
        if direction == "scaleUp":
            window, policies = 0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15))
        else:
            window, policies = 300, (Policy("Percent", 100, 15),)
        if "policies" in raw:
            policies = tuple(
                Policy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in raw["policies"]
            )
        for p in policies:
            if p.type not in ("Pods", "Percent") or p.value <= 0 or not 0 < p.period_seconds <= 1800:
                raise ValueError(f"invalid {direction} policy {p}")
        select = raw.get("selectPolicy", "Max")
        if select not in ("Max", "Min", "Disabled"):
            raise ValueError(f"invalid {direction} selectPolicy {select!r}")
        tolerance = raw.get("tolerance", DEFAULT_TOLERANCE)
        return Rules(int(raw.get("stabilizationWindowSeconds", window)), select, policies, float(tolerance))


@dataclass(frozen=True)
class Spec:
    min_replicas: int
    max_replicas: int
    target_average_value: float
    scale_up: Rules
    scale_down: Rules


@dataclass
class Controller:
    """One HPA's controller state: replicas, past recommendations, past scale events."""

    spec: Spec
    replicas: int
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)

    def proposal(self, metric: float) -> int:
        """External metric, AverageValue target: the replica count the metric alone asks for."""
        usage = round(metric * 1000)  # quantities are compared in milli-units
        target = round(self.spec.target_average_value * 1000)
        ratio = usage / (target * self.replicas)
        tolerance_up, tolerance_down = self.spec.scale_up.tolerance, self.spec.scale_down.tolerance
        if (ratio > 1 and ratio - 1 <= tolerance_up) or (ratio <= 1 and 1 - ratio <= tolerance_down):
            return self.replicas
        return math.ceil(usage / target)

    def sync(self, now: float, metric: float | None) -> int:
        """One controller pass at time `now` (seconds) with the metric's value; returns the new count.

        `None`: the metric could not be read. The controller then records an error condition and
        changes nothing (no recommendation, no scale event).
        """
        s = self.spec
        current = self.replicas
        if not self.recommendations:
            self.recommendations.append((now, current))
        if current == 0 and s.min_replicas != 0:
            return current  # scaling disabled while the target is scaled to zero
        if current > s.max_replicas:
            desired = s.max_replicas
        elif current < s.min_replicas:
            desired = s.min_replicas
        elif metric is None:
            return current
        else:
            desired = self._rate_limited(now, self._stabilized(now, self.proposal(metric)))
        if desired != current:
            events = self.up_events if desired > current else self.down_events
            events.append((now, abs(desired - current)))
            self.replicas = desired
        return self.replicas

    def _stabilized(self, now: float, desired: int) -> int:
        up_cutoff = now - self.spec.scale_up.stabilization_window_seconds
        down_cutoff = now - self.spec.scale_down.stabilization_window_seconds
        up_bound, down_bound = desired, desired
        for at, recommendation in self.recommendations:
            if at > up_cutoff:
                up_bound = min(up_bound, recommendation)
            if at > down_cutoff:
                down_bound = max(down_bound, recommendation)
        self.recommendations.append((now, desired))
        return min(max(self.replicas, up_bound), down_bound)

    def _changed_within(self, events: list[tuple[float, int]], now: float, period: int) -> int:
        return sum(change for at, change in events if at > now - period)

    def _period_start(self, now: float, period: int) -> int:
        added = self._changed_within(self.up_events, now, period)
        removed = self._changed_within(self.down_events, now, period)
        return self.replicas - added + removed

    def _rate_limited(self, now: float, desired: int) -> int:
        s, current = self.spec, self.replicas
        if desired > current:
            rules = s.scale_up
            if rules.select_policy == "Disabled":
                limit = current
            else:
                proposals = []
                for p in rules.policies:
                    start = self._period_start(now, p.period_seconds)
                    proposals.append(
                        start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
                    )
                limit = max(proposals) if rules.select_policy == "Max" else min(proposals)
            return min(desired, s.max_replicas, max(limit, current))
        if desired < current:
            rules = s.scale_down
            if rules.select_policy == "Disabled":
                limit = current
            else:
                proposals = []
                for p in rules.policies:
                    start = self._period_start(now, p.period_seconds)
                    proposals.append(
                        start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
                    )
                limit = min(proposals) if rules.select_policy == "Max" else max(proposals)
            return max(desired, s.min_replicas, min(limit, current))
        return desired


def spec_from_scaled_object(scaled_object: Mapping[str, Any]) -> tuple[Spec, str]:
    """The HPA KEDA makes from a ScaledObject with one prometheus AverageValue trigger; and its query."""
    spec = scaled_object["spec"]
    triggers = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    if len(triggers) != 1:
        raise ValueError("expected exactly one prometheus trigger")
    trigger = triggers[0]
    if trigger.get("metricType", "AverageValue") != "AverageValue":
        raise ValueError(f"metricType {trigger.get('metricType')!r} is not modelled here")
    minimum = int(spec.get("minReplicaCount", 0))
    if minimum < 1:
        raise ValueError("minReplicaCount 0 (KEDA's scale-to-zero activation) is not modelled here")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    hpa = Spec(
        min_replicas=minimum,
        max_replicas=int(spec.get("maxReplicaCount", 100)),
        target_average_value=float(trigger["metadata"]["threshold"]),
        scale_up=Rules.from_spec(behavior.get("scaleUp"), "scaleUp"),
        scale_down=Rules.from_spec(behavior.get("scaleDown"), "scaleDown"),
    )
    return hpa, str(trigger["metadata"]["query"])


def settle_seconds(spec: Spec, start_replicas: int) -> float:
    """How long, with the metric at 0, until the HPA is back at min replicas from `start_replicas`."""
    controller = Controller(spec, start_replicas)
    now = 0.0
    controller.sync(now, spec.target_average_value * start_replicas)
    while controller.replicas > spec.min_replicas:
        now += SYNC_PERIOD_S
        controller.sync(now, 0.0)
        if now > 48 * 3600:
            raise ValueError("never scales down")
    return now
