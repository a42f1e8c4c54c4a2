"""The Kubernetes manifests, validated offline.

Each deployable kustomization is rendered by the real kubectl (kustomize
inside it). Built-in kinds are checked against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields fail); the CRD kinds against the
published CRD schemas vendored in tests/deploy/schemas (check-jsonschema).
Then what a reviewer would check by hand: ports, probes, drain time, labels and
selectors, and the autoscaler's target and metric against the engine itself.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from engine.config import ENV_PREFIX, Settings
from engine.metrics import EngineMetrics
from engine.scoring.trades import SERVICE as SCORER_SERVICE
from tests.conftest import ROOT

#: renders every overlay and validates it against the published schemas (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow

K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).parent / "schemas"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.37.0"
NAMESPACE = "tradescore"
APP = {"app.kubernetes.io/name": "tradescore"}
#: the kustomizations an SRE applies
TARGETS = ("", "overlays/prod", "overlays/tls")
#: CRD kind -> vendored schema (see tests/deploy/schemas/README.md)
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda.sh/scaledobject_v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "monitoring.coreos.com/podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "monitoring.coreos.com/prometheusrule_v1.json",
}
#: the kubelet may still be flushing the batcher and exiting after the engine's grace period
ENGINE_EXIT_SECONDS = 2

Doc = dict[str, Any]


@functools.cache
def render(target: str) -> tuple[Doc, ...]:
    done = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def one(docs: tuple[Doc, ...], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(docs: tuple[Doc, ...]) -> Doc:
    (engine,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    result: Doc = engine
    return result


def env_of(docs: tuple[Doc, ...]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs).get("env", [])}


def port(docs: tuple[Doc, ...], name: str) -> int:
    (number,) = [p["containerPort"] for p in container(docs)["ports"] if p["name"] == name]
    result: int = number
    return result


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def without_go_inline_flags(node: Any) -> Any:
    """The schema with Go's case-insensitive `(?i)` spelled out per letter.

    The API server matches CRD patterns with Go's regexp; the PrometheusRule schema has one,
    `^(?i)(abort|warn)?$`, whose inline flag neither ECMAScript (check-jsonschema's default)
    nor Python (flag not at the start) accepts, so check-jsonschema refuses the whole schema.
    `^([aA][bB][oO][rR][tT]|[wW][aA][rR][nN])?$` matches exactly the same strings.
    """
    if isinstance(node, dict):
        out = {k: without_go_inline_flags(v) for k, v in node.items()}
        pattern = node.get("pattern")
        if isinstance(pattern, str) and "(?i)" in pattern:
            assert "[" not in pattern, f"cannot translate {pattern!r}"
            bare = pattern.replace("(?i)", "")
            out["pattern"] = re.sub(r"[A-Za-z]", lambda m: f"[{m.group().lower()}{m.group().upper()}]", bare)
        return out
    if isinstance(node, list):
        return [without_go_inline_flags(v) for v in node]
    return node


def check_jsonschema(schema: Path, docs: list[Doc], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    files = []
    for i, doc in enumerate(docs):
        f = tmp_path / f"{schema.stem}-{i}.json"
        f.write_text(json.dumps(doc))
        files.append(str(f))
    usable = tmp_path / f"{schema.stem}.schema.json"
    usable.write_text(json.dumps(without_go_inline_flags(json.loads(schema.read_text()))))
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(usable), *files],
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_builtin_kinds_match_the_kubernetes_schemas(target: str) -> None:
    docs = render(target)
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_SCHEMAS]
    assert {d["kind"] for d in builtin} >= {"Namespace", "Deployment", "Service", "PodDisruptionBudget"}
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_match_their_published_schemas(target: str, tmp_path: Path) -> None:
    docs = render(target)
    unknown = {(d["apiVersion"], d["kind"]) for d in docs if "." in d["apiVersion"].split("/")[0]}
    assert unknown <= set(CRD_SCHEMAS), f"no vendored schema for {unknown - set(CRD_SCHEMAS)}"
    for (api_version, kind), schema in CRD_SCHEMAS.items():
        objects = [d for d in docs if (d["apiVersion"], d["kind"]) == (api_version, kind)]
        if kind == "PrometheusRule" and not objects:
            continue  # no rule files yet (see test_generated_prometheus_rules_validate)
        assert objects, f"no {kind} rendered"
        done = check_jsonschema(schema, objects, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr


def test_validators_reject_broken_objects(tmp_path: Path) -> None:
    docs = render("")
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(one(docs, "ScaledObject"))
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behaviour"] = {}
    schema = CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]
    assert check_jsonschema(schema, [scaled], tmp_path).returncode != 0
    monitor = copy.deepcopy(one(docs, "PodMonitor"))
    del monitor["spec"]["selector"]
    schema = CRD_SCHEMAS[("monitoring.coreos.com/v1", "PodMonitor")]
    assert check_jsonschema(schema, [monitor], tmp_path).returncode != 0


def test_go_inline_flag_translation_matches_the_same_strings(tmp_path: Path) -> None:
    schema = CRD_SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")]

    def rule(strategy: str) -> Doc:
        group = {"name": "g", "partial_response_strategy": strategy, "rules": [{"record": "r", "expr": "1"}]}
        return {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "spec": {"groups": [group]},
        }

    for ok in ("abort", "WARN", "Warn", ""):
        assert check_jsonschema(schema, [rule(ok)], tmp_path).returncode == 0, ok
    for bad in ("skip", "aborts", "warn "):
        assert check_jsonschema(schema, [rule(bad)], tmp_path).returncode != 0, bad


# -- what a reviewer checks --------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_everything_lives_in_the_tradescore_namespace(target: str) -> None:
    docs = render(target)
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]


def test_engine_settings_are_real_settings() -> None:
    docs = render("")
    env = env_of(docs)
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    engine_vars = {k for k in env if k.startswith(ENV_PREFIX)}
    # an unknown ENGINE_* variable would be ignored silently by the engine
    assert engine_vars <= known, f"not engine settings: {sorted(engine_vars - known)}"
    assert int(env["ENGINE_PORT"]) == port(docs, "grpc") == 50051
    assert int(env["ENGINE_METRICS_PORT"]) == port(docs, "metrics") == 9095
    assert int(env.get("ENGINE_WORKERS", "1")) == 1, "/metrics covers one worker; scale with pods"


def test_probes_are_native_grpc_on_the_serving_port() -> None:
    docs = render("")
    engine = container(docs)
    grpc_port = port(docs, "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(engine[probe]) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, probe
        assert engine[probe]["grpc"]["port"] == grpc_port, probe
    assert engine["readinessProbe"]["grpc"]["service"] == SCORER_SERVICE
    # liveness must outlast a drain: a pod that is draining answers NOT_SERVING
    live = engine["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > float(env_of(docs)["ENGINE_GRACE_SECONDS"])


def test_termination_grace_covers_prestop_and_engine_drain() -> None:
    docs = render("")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = container(docs)["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, "a native sleep needs no shell in the image"
    drain = float(env_of(docs).get("ENGINE_GRACE_SECONDS", Settings().grace_seconds))
    needed = pre_stop["sleep"]["seconds"] + drain + ENGINE_EXIT_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_pod_security() -> None:
    docs = render("")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    ctx = container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    # the uid the pod runs as is the image's USER
    user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user is not None and pod["securityContext"]["runAsUser"] == int(user.group(1))
    # read-only root: /tmp is the one writable place
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    labels = one(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_resources_request_a_core_and_cap_memory() -> None:
    resources = container(render(""))["resources"]
    assert resources["requests"]["cpu"] == "1"
    assert "cpu" not in resources.get("limits", {}), "no CPU limit: throttling adds latency (k8s/README.md)"
    assert resources["limits"]["memory"] == resources["requests"]["memory"]


def test_image_tag_is_the_package_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container(render(""))["image"] == f"tradescore-engine:{version}"


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_find_the_engine_pods(target: str) -> None:
    docs = render(target)
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(docs, "Service")["spec"]["selector"], pod_labels)
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(docs, "PodMonitor")["spec"]["selector"]["matchLabels"], pod_labels)
    spreads = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    for spread in spreads:
        assert selects(spread["labelSelector"]["matchLabels"], pod_labels)
    assert {s["topologyKey"] for s in spreads} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_service_is_headless_grpc() -> None:
    docs = render("")
    service = one(docs, "Service")
    assert service["spec"]["clusterIP"] == "None", "clients balance over pod addresses themselves"
    (svc_port,) = service["spec"]["ports"]
    # with a headless Service clients dial pod IPs on this port directly
    assert svc_port["port"] == port(docs, "grpc") and svc_port["targetPort"] == "grpc"
    assert svc_port["appProtocol"] == "kubernetes.io/h2c"


def test_podmonitor_scrapes_the_metrics_port_as_job_tradescore() -> None:
    docs = render("")
    monitor = one(docs, "PodMonitor")["spec"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and port(docs, "metrics")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[monitor["jobLabel"]] == "tradescore", "the job label the rules and the scaler use"


@pytest.mark.parametrize("target", TARGETS)
def test_scaledobject_targets_the_deployment_on_its_own_metric(target: str) -> None:
    docs = render(target)
    spec = one(docs, "ScaledObject")["spec"]
    deployment = one(docs, "Deployment")
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tradescore"}
    assert deployment["metadata"]["name"] == spec["scaleTargetRef"]["name"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (prom,) = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    assert prom["metricType"] == "AverageValue"
    query = prom["metadata"]["query"]
    assert query == (
        'sum(avg_over_time(engine_inflight_calls{namespace="tradescore",job="tradescore"}[1m]))'
    ), "the query agreed with the autoscaling proof test"
    assert float(prom["metadata"]["threshold"]) == 24
    # the metric is one the engine defines, as a gauge
    metric = re.match(r"sum\(avg_over_time\((\w+)\{", query)
    assert metric is not None
    defined = {m.name: m.type for m in EngineMetrics(CollectorRegistry()).registry.collect()}
    assert defined.get(metric.group(1)) == "gauge"
    # the labels it selects on are the ones the PodMonitor produces
    assert f'namespace="{one(docs, "Deployment")["metadata"]["namespace"]}"' in query
    # at least one pod survives any voluntary disruption
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert spec["minReplicaCount"] - pdb["maxUnavailable"] >= 1
    assert 2 <= spec["minReplicaCount"] < spec["maxReplicaCount"]


def test_scaling_behaviour_is_fast_up_slow_down() -> None:
    spec = one(render(""), "ScaledObject")["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    assert down["stabilizationWindowSeconds"] >= 600
    # from the floor, one scale-up period may more than double the pods
    floor = spec["minReplicaCount"]
    grow = max(
        p["value"] if p["type"] == "Pods" else math.ceil(floor * p["value"] / 100) for p in up["policies"]
    )
    assert grow > floor
    assert all(p["periodSeconds"] <= 15 for p in up["policies"])
    assert all(p["periodSeconds"] >= 60 for p in down["policies"])


def test_prod_overlay_prewarms_market_hours() -> None:
    spec = one(render("overlays/prod"), "ScaledObject")["spec"]
    base = one(render(""), "ScaledObject")["spec"]
    assert spec["minReplicaCount"] >= 3 and spec["maxReplicaCount"] > base["maxReplicaCount"]
    (cron,) = [t for t in spec["triggers"] if t["type"] == "cron"]
    assert cron["metadata"]["timezone"] == "America/New_York"
    hour_start = int(cron["metadata"]["start"].split()[1])
    hour_end = int(cron["metadata"]["end"].split()[1])
    assert hour_start <= 9 and hour_end >= 16, "covers 09:30-16:00"


# -- monitoring ----------------------------------------------------------------------------


def test_dashboard_configmap_carries_the_dashboard() -> None:
    docs = render("")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tradescore-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = (K8S / "monitoring" / "dashboards" / "tradescore.json").read_text()
    assert cm["data"]["tradescore.json"] == committed
    dashboard = json.loads(committed)
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["panels"], list)
    # client-side `kubectl apply` copies the object into an annotation limited to 256 KiB
    assert len(json.dumps(cm).encode()) < 262_144


def _gen_prometheusrules() -> ModuleType:
    path = ROOT / "scripts" / "gen_prometheusrules.py"
    spec = importlib.util.spec_from_file_location("gen_prometheusrules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_prometheus_rules_match_the_rule_files() -> None:
    gen = _gen_prometheusrules()
    committed = (K8S / "monitoring" / "prometheusrules.yaml").read_text()
    assert committed == gen.render(), "stale: run python scripts/gen_prometheusrules.py"
    rendered = [d for d in render("") if d["kind"] == "PrometheusRule"]
    assert len(rendered) == len(gen.rule_files())
    for path in gen.rule_files():
        (obj,) = [d for d in rendered if d["metadata"]["name"] == gen.object_name(path)]
        assert obj["spec"]["groups"] == yaml.safe_load(path.read_text())["groups"]


def test_generated_prometheus_rules_validate(tmp_path: Path) -> None:
    gen = _gen_prometheusrules()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "Engine SLO.yaml").write_text(
        "groups:\n"
        "  - name: tradescore-slo\n"
        "    rules:\n"
        "      - record: job:grpc_server_handled:rate5m\n"
        "        expr: sum by (job) (rate(grpc_server_handled_total[5m]))\n"
        "      - alert: TradeScoreDown\n"
        "        expr: |\n"
        '          absent(up{job="tradescore"} == 1)\n'
        "        for: 5m\n"
        "        labels: {severity: page}\n"
        "        annotations: {summary: No engine pod is being scraped.}\n"
    )
    (rules / "notes.txt").write_text("not a rule file")
    docs = [d for d in yaml.safe_load_all(gen.render(rules)) if d]
    assert [d["metadata"]["name"] for d in docs] == ["tradescore-engine-slo"]
    assert docs[0]["spec"]["groups"][0]["rules"][1]["expr"] == 'absent(up{job="tradescore"} == 1)\n'
    schema = CRD_SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")]
    done = check_jsonschema(schema, docs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (rules / "bad.yaml").write_text("apiVersion: v1\ngroups: []\n")
    with pytest.raises(ValueError, match="exactly one top-level key"):
        gen.render(rules)


def test_tls_overlay_serves_mutual_tls_and_probes_the_plaintext_probe_port() -> None:
    docs = render("overlays/tls")
    engine = container(docs)
    env = env_of(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in engine["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tls": "tradescore-tls", "tokens": "tradescore-tokens"}
    # every file setting points into the Secret mounted for it
    for var, volume in (
        ("ENGINE_TLS_CERT", "tls"), ("ENGINE_TLS_KEY", "tls"), ("ENGINE_TLS_CLIENT_CA", "tls"),
        ("ENGINE_AUTH_TOKENS_FILE", "tokens"),
    ):  # fmt: skip
        assert env[var].startswith(mounts[volume] + "/"), var
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= known
    Settings(
        tls_cert=env["ENGINE_TLS_CERT"],
        tls_key=env["ENGINE_TLS_KEY"],
        tls_client_ca=env["ENGINE_TLS_CLIENT_CA"],
    )
    # the kubelet's probes speak plaintext: they go to the probe port, never the TLS port
    probe_port = port(docs, "probe")
    assert int(env["ENGINE_PROBE_PORT"]) == probe_port != port(docs, "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert engine[probe]["grpc"]["port"] == probe_port, probe
    assert engine["readinessProbe"]["grpc"]["service"] == SCORER_SERVICE
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
