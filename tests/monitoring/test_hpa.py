"""The HPA model in tests/monitoring/hpa.py against cases worked out by hand from the Kubernetes rules."""

from __future__ import annotations

import pytest

from tests.monitoring.hpa import Controller, Policy, Rules, Spec, settle_seconds, spec_from_scaled_object

DEFAULT_UP = Rules.from_spec(None, "scaleUp")
DEFAULT_DOWN = Rules.from_spec(None, "scaleDown")


def spec(
    min_replicas: int = 1, max_replicas: int = 10, up: Rules = DEFAULT_UP, down: Rules = DEFAULT_DOWN
) -> Spec:
    return Spec(min_replicas, max_replicas, 24.0, up, down)


def test_defaults_are_the_api_servers() -> None:
    assert DEFAULT_UP == Rules(0, "Max", (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
    assert DEFAULT_DOWN == Rules(300, "Max", (Policy("Percent", 100, 15),))
    partial = Rules.from_spec({"stabilizationWindowSeconds": 60}, "scaleDown")
    assert partial.policies == DEFAULT_DOWN.policies and partial.select_policy == "Max"


def test_tolerance_skips_small_changes() -> None:
    hpa = Controller(spec(), replicas=2)
    assert hpa.sync(0, 52.0) == 2  # 52 / (24 * 2) = 1.083: within 10 %
    assert hpa.sync(15, 53.0) == 3  # 1.104: ceil(53 / 24)
    assert hpa.sync(30, 66.0) == 3  # 66 / 72 = 0.917: within 10 %


def test_default_scale_up_is_the_larger_of_double_or_four_pods_per_15s() -> None:
    hpa = Controller(spec(max_replicas=30), replicas=1)
    assert hpa.sync(0, 24.0 * 20) == 5  # max(ceil(1 * 2), 1 + 4)
    assert hpa.sync(10, 24.0 * 20) == 5  # the +4 of t=0 is inside the 15 s period: start is still 1
    assert hpa.sync(15, 24.0 * 20) == 10  # t=0 is no longer inside (strictly after now - period)
    assert hpa.sync(30, 24.0 * 20) == 20
    assert hpa.sync(45, 24.0 * 40) == 30  # maxReplicas


def test_default_scale_down_waits_for_the_300s_window() -> None:
    hpa = Controller(spec(), replicas=1)
    assert hpa.sync(0, 24.0 * 5) == 5
    for t in range(15, 300, 15):
        assert hpa.sync(t, 0.0) == 5, t  # the highest recommendation within 300 s is still 5
    assert hpa.sync(300, 0.0) == 1  # t=0 has left the window; 100 % per 15 s, floored at minReplicas


def test_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    up = Rules(60, "Max", (Policy("Pods", 10, 15),))
    hpa = Controller(spec(up=up), replicas=2)
    assert hpa.sync(0, 24.0 * 2) == 2
    assert hpa.sync(15, 24.0 * 8) == 2  # min(2 from t=0, 8) within 60 s
    assert hpa.sync(60, 24.0 * 8) == 8  # t=0 left the window; t=15 and t=60 both say 8


def test_policies_percent_rounding_and_select() -> None:
    up = Rules(0, "Max", (Policy("Percent", 50, 60),))
    down = Rules(0, "Max", (Policy("Percent", 50, 60),))
    hpa = Controller(spec(up=up, down=down), replicas=3)
    assert hpa.sync(0, 24.0 * 9) == 5  # ceil(3 * 1.5)
    assert hpa.sync(15, 24.0 * 9) == 5  # same period: start 3 -> limit 5
    assert hpa.sync(75, 24.0 * 1) == 2  # int(5 * 0.5): the scale-down truncates
    slow = Rules(0, "Min", (Policy("Pods", 1, 60), Policy("Percent", 50, 60)))
    hpa = Controller(spec(down=slow), replicas=8)
    assert hpa.sync(0, 0.0) == 7  # Min picks the smaller change: 1 pod
    assert hpa.sync(30, 0.0) == 7  # start of the period is 8: 8 - 1
    assert hpa.sync(60, 0.0) == 6


def test_unreadable_metric_changes_nothing() -> None:
    hpa = Controller(spec(), replicas=3)
    assert hpa.sync(0, None) == 3
    assert hpa.sync(15, 24.0 * 6) == 6
    assert hpa.sync(30, None) == 6 and len(hpa.recommendations) == 2  # the initial one and t=15
    assert Controller(spec(min_replicas=4), replicas=2).sync(0, None) == 4  # bounds still apply


def test_disabled_and_out_of_range() -> None:
    hpa = Controller(spec(up=Rules(0, "Disabled", DEFAULT_UP.policies)), replicas=2)
    assert hpa.sync(0, 24.0 * 8) == 2
    assert Controller(spec(), replicas=12).sync(0, 24.0 * 12) == 10  # above max: back to max first
    assert Controller(spec(min_replicas=3), replicas=1).sync(0, 0.0) == 3
    assert Controller(spec(), replicas=0).sync(0, 24.0 * 5) == 0  # scaled to zero: autoscaling off


def test_settle_seconds() -> None:
    assert settle_seconds(spec(), 5) == 300
    slow = Rules(120, "Max", (Policy("Pods", 1, 60),))
    assert settle_seconds(spec(down=slow), 4) == 120 + 60 + 60  # 4 -> 3 at 120 s, 2 at 180 s, 1 at 240 s


def test_spec_from_scaled_object() -> None:
    behavior = {"scaleDown": {"selectPolicy": "Min"}}
    metadata = {"query": "q", "threshold": "24"}
    trigger = {"type": "prometheus", "metricType": "AverageValue", "metadata": metadata}
    scaled = {
        "spec": {
            "minReplicaCount": 2,
            "maxReplicaCount": 12,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
            "triggers": [trigger],
        }
    }
    hpa, query = spec_from_scaled_object(scaled)
    assert query == "q"
    assert (hpa.min_replicas, hpa.max_replicas, hpa.target_average_value) == (2, 12, 24.0)
    assert hpa.scale_up == DEFAULT_UP and hpa.scale_down.select_policy == "Min"
    scaled["spec"]["minReplicaCount"] = 0
    with pytest.raises(ValueError, match="scale-to-zero"):
        spec_from_scaled_object(scaled)
