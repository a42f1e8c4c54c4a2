"""The Grafana dashboard: the committed JSON is the generator's output, and every query works."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

import pytest

from tests.monitoring.conftest import Recording
from tests.monitoring.prom import ROOT, PrometheusError

#: a real Prometheus scraping real engines (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow

DASHBOARD = ROOT / "k8s" / "monitoring" / "dashboards" / "tradescore.json"

#: queries over kube-state-metrics and KEDA's own metrics: they parse here, but only a cluster has data
CLUSTER_ONLY = {
    ("Replicas vs desired", "A"),
    ("Replicas vs desired", "B"),
    ("Replicas vs desired", "C"),
    ("Replicas vs desired", "D"),
    ("Pods needed by the scaler's query", "B"),
    ("KEDA scaler", "A"),
    ("KEDA scaler", "B"),
}
#: what Grafana substitutes: $__rate_interval is 4 scrape intervals (1 s in the test Prometheus)
VARIABLES = {"$__rate_interval": "4s", "$namespace": "tradescore"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_dashboard", ROOT / "scripts" / "gen_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _targets() -> list[tuple[str, str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def test_committed_json_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == _generator().render(), "stale: run python scripts/gen_dashboard.py"


def test_layout() -> None:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Traffic, errors, latency", "Saturation", "Model", "Sync breaks", "Autoscaling"]
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p.get("targets") and p.get("description"), p["title"]
    names = {(title, ref) for title, ref, _ in _targets()}
    assert CLUSTER_ONLY <= names, "a cluster-only query listed here is no longer on the dashboard"


def test_namespace_variable_finds_the_engine(observed: Recording) -> None:
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    variable = next(v for v in variables if v["name"] == "namespace")
    assert variable["query"] == 'label_values(engine_model_info{job="tradescore"}, namespace)'
    # what Grafana's label_values(series, label) asks Prometheus
    match = {"match[]": 'engine_model_info{job="tradescore"}'}
    values = observed.prometheus.api("label/namespace/values", **match)
    assert values == ["tradescore"]


@pytest.mark.parametrize(("title", "ref", "expr"), _targets(), ids=lambda v: str(v)[:40])
def test_every_query_parses_and_returns_data(observed: Recording, title: str, ref: str, expr: str) -> None:
    promql = expr
    for name, value in VARIABLES.items():
        promql = promql.replace(name, value)
    assert "$" not in promql, f"{title}/{ref}: unknown variable in {expr}"
    start, end = observed.steps[0][0], observed.load_end
    try:
        result = observed.prometheus.query_range(promql, start, end, 2)
    except PrometheusError as exc:
        pytest.fail(f"{title}/{ref}: {exc}")
    if (title, ref) in CLUSTER_ONLY:
        assert result == [], f"{title}/{ref} is listed as cluster-only but has data here"
    else:
        assert result, f"{title}/{ref} returned no data: {promql}"
        assert any(float(v) == float(v) for s in result for _, v in s["values"]), f"{title}/{ref}: only NaN"
