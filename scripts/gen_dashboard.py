"""Build the TradeScore Grafana dashboard as code and write k8s/monitoring/dashboards/tradescore.json.

Usage: python scripts/gen_dashboard.py [--out FILE]

Built with grafana-foundation-sdk (the `[dev]` extra pins it). The committed
JSON is what Grafana loads (through a ConfigMap); tests/monitoring/test_dashboard.py
fails when it differs from what this script writes, and evaluates every
panel's PromQL against a real Prometheus scraping a real engine.

Rows answer, top to bottom: is it healthy and fast (RED: rate, errors by code,
latency quantiles, the SLO), is it saturated (in flight vs the autoscaling
target, queue depth, batch size, queue wait vs inference, refusals), which
model is serving (version, reloads, score distribution, risk bands), what the
sync-break scorer finds (pairs scored, breaks by class, its latency and model
time), and is the autoscaler keeping up (replicas vs desired from kube-state-metrics, KEDA's
own view of its metric).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "k8s" / "monitoring" / "dashboards" / "tradescore.json"

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: every engine series of the selected namespace (job label as agreed for the engine's pods)
SEL = 'job="tradescore",namespace=~"$namespace"'
SCORER = f'{SEL},grpc_service="tradescore.v1.TradeScorer"'
SCORE = f'{SCORER},grpc_method="Score"'
NOT_OK = f'{SCORER},grpc_code!="OK"'
#: the in-flight calls per pod the KEDA ScaledObject (k8s/base/scaledobject.yaml) aims for
INFLIGHT_TARGET = 24
RATE = "$__rate_interval"


def rate(metric: str, selector: str) -> str:
    return f"rate({metric}{{{selector}}}[{RATE}])"


def p99(histogram: str) -> str:
    return f"histogram_quantile(0.99, sum by (le) ({rate(histogram + '_bucket', SEL)}))"


def query(expr: str, legend: str = "__auto", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(8)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .show_legend(True)
            .placement(common.LegendPlacement.BOTTOM)
        )
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def quantiles(
    metric: str, selector: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> list[prometheus.Dataquery]:
    return [
        query(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)}",
            chr(ord("A") + i),
        )
        for i, q in enumerate(qs)
    ]


def target_line(value: float) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps(
            [
                model.Threshold(value=None, color="green"),
                model.Threshold(value=value, color="red"),
            ]
        )
    )


def build() -> db.Dashboard:
    board = (
        db.Dashboard("TradeScore")
        .uid("tradescore")
        .description("TradeScore scoring engine: health, speed, saturation, model, autoscaling")
        .tags(["tradescore", "grpc"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("utc")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            db.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query('label_values(engine_model_info{job="tradescore"}, namespace)')
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .multi(True)
        )
    )

    # -- is it healthy, is it fast ---------------------------------------------------------------
    board = (
        board.with_row(db.Row("Traffic, errors, latency"))
        .with_panel(
            series(
                "Calls per second",
                "TradeScorer calls completed per second, by method (a stream counts once).",
                "reqps",
                query(
                    f"sum by (grpc_method) (rate(grpc_server_handled_total{{{SCORER}}}[{RATE}]))",
                    "{{grpc_method}}",
                ),
            )
        )
        .with_panel(
            series(
                "Errors by code",
                "Calls that did not end OK, per second, by gRPC code (Go spelling, as in grpc_code).",
                "reqps",
                query(
                    f"sum by (grpc_code) ({rate('grpc_server_handled_total', NOT_OK)})",
                    "{{grpc_code}}",
                ),
            )
        )
        .with_panel(
            series(
                "Score latency",
                "Time in the server's handler per Score call: p50, p95, p99.",
                "s",
                *quantiles("grpc_server_handling_seconds", SCORE),
            )
        )
        .with_panel(
            stat.Panel()
            .title("Server error ratio (5m)")
            .description("Share of TradeScorer calls ending in a server-side error (SLO: at most 0.1 %).")
            .datasource(DATASOURCE)
            .unit("percentunit")
            .decimals(3)
            .height(4)
            .span(6)
            .thresholds(target_line(0.001))
            .with_target(
                query('max(tradescore:grpc_server_errors:ratio_rate5m{namespace=~"$namespace"})', "errors")
            )
        )
        .with_panel(
            stat.Panel()
            .title("Score calls over 10 ms (1h)")
            .description("Share of Score calls slower than 10 ms over the last hour (SLO: at most 1 %).")
            .datasource(DATASOURCE)
            .unit("percentunit")
            .decimals(2)
            .height(4)
            .span(6)
            .thresholds(target_line(0.01))
            .with_target(
                query('max(tradescore:score_latency_over_10ms:ratio_rate1h{namespace=~"$namespace"})', "slow")
            )
        )
        .with_panel(
            stat.Panel()
            .title("Pods serving")
            .description("Engine processes Prometheus scrapes and finds up.")
            .datasource(DATASOURCE)
            .height(4)
            .span(6)
            .with_target(query(f"sum(up{{{SEL}}})", "up"))
        )
        .with_panel(
            stat.Panel()
            .title("Trades scored per second")
            .description("Trades through the model, all pods.")
            .datasource(DATASOURCE)
            .unit("short")
            .height(4)
            .span(6)
            .with_target(query(f"sum(rate(engine_rows_scored_total{{{SEL}}}[{RATE}]))", "trades/s"))
        )
    )

    # -- is it saturated --------------------------------------------------------------------------
    board = (
        board.with_row(db.Row("Saturation"))
        .with_panel(
            series(
                "Calls in flight per pod",
                f"Score/ScoreStream calls inside each pod; the autoscaler aims for {INFLIGHT_TARGET} "
                "per pod (red line).",
                "short",
                query(f"sum by (instance) (engine_inflight_calls{{{SEL}}})", "{{instance}}"),
            )
            .thresholds(target_line(INFLIGHT_TARGET))
            .thresholds_style(GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
        )
        .with_panel(
            series(
                "Queue depth",
                "Trades waiting for a batch, per pod (RESOURCE_EXHAUSTED beyond --max-queue-rows).",
                "short",
                query(f"sum by (instance) (engine_queue_depth{{{SEL}}})", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "Batch size",
                "Trades per ONNX Runtime call: how much the micro-batcher coalesces.",
                "short",
                query(
                    f"sum({rate('engine_batch_size_sum', SEL)})"
                    f" / sum({rate('engine_batch_size_count', SEL)})",
                    "mean",
                ),
                *[
                    q.ref_id(r)
                    for q, r in zip(quantiles("engine_batch_size", SEL, (0.5, 0.99)), "BC", strict=True)
                ],
            )
        )
        .with_panel(
            series(
                "Queue wait vs inference (p99)",
                "Where a batch's time goes: waiting to be batched, or in ONNX Runtime.",
                "s",
                query(p99("engine_queue_wait_seconds"), "queue wait p99"),
                query(p99("engine_inference_seconds"), "inference p99", "B"),
            )
        )
        .with_panel(
            series(
                "Refused calls and failed batches",
                "Calls refused before inference, by reason, and batches whose inference raised (per second).",
                "reqps",
                query(f"sum by (reason) (rate(engine_rejected_calls_total{{{SEL}}}[{RATE}]))", "{{reason}}"),
                query(f"sum(rate(engine_batch_failures_total{{{SEL}}}[{RATE}]))", "failed batches", "B"),
            )
        )
        .with_panel(
            series(
                "gRPC messages per second",
                "Stream messages received and sent (ScoreStream: one response per request).",
                "short",
                query(
                    f"sum by (grpc_method) (rate(grpc_server_msg_received_total{{{SCORER}}}[{RATE}]))",
                    "in {{grpc_method}}",
                ),
                query(
                    f"sum by (grpc_method) (rate(grpc_server_msg_sent_total{{{SCORER}}}[{RATE}]))",
                    "out {{grpc_method}}",
                    "B",
                ),
            )
        )
    )

    # -- which model is serving -------------------------------------------------------------------
    board = (
        board.with_row(db.Row("Model"))
        .with_panel(
            stat.Panel()
            .title("Model serving")
            .description("Pods serving each model version (more than one version for long: a stuck rollout).")
            .datasource(DATASOURCE)
            .height(8)
            .span(6)
            .with_target(
                query(f"count by (name, version) (engine_model_info{{{SEL}}} == 1)", "{{name}} {{version}}")
            )
        )
        .with_panel(
            series(
                "Model reloads (1h)",
                "Bundle reloads in the last hour: success, or refused (the last good model keeps serving).",
                "short",
                query(f"sum by (outcome) (increase(engine_model_reloads_total{{{SEL}}}[1h]))", "{{outcome}}"),
            ).span(6)
        )
        .with_panel(
            heatmap.Panel()
            .title("Score distribution")
            .description("Fail probabilities returned over time (drift shows as the mass moving).")
            .datasource(DATASOURCE)
            .height(8)
            .span(6)
            .with_target(
                query(f"sum by (le) (increase(engine_score_bucket{{{SEL}}}[{RATE}]))", "{{le}}").format(
                    PromQueryFormat.HEATMAP
                )
            )
        )
        .with_panel(
            series(
                "Risk bands",
                "Share of trades scored into each risk band.",
                "percentunit",
                query(
                    f"sum by (band) (rate(engine_risk_band_total{{{SEL}}}[{RATE}]))"
                    f" / ignoring (band) group_left sum(rate(engine_risk_band_total{{{SEL}}}[{RATE}]))",
                    "{{band}}",
                ),
            ).span(6)
        )
        .with_panel(
            series(
                "Score quantiles",
                "Median, p90 and p99 fail probability returned (drift in one glance).",
                "percentunit",
                *quantiles("engine_score", SEL, (0.5, 0.9, 0.99)),
            ).span(12)
        )
        .with_panel(
            series(
                "Trade reasons",
                "Trades returned with reasons per second (--explain-band, or asked with explain), and "
                "the TreeSHAP time per batch of them, p99 (the explain-0 thread).",
                "short",
                query(
                    f"sum(rate(engine_trades_explained_total{{{SEL}}}[{RATE}]))", "trades explained/s", "A"
                ),
                query(p99("engine_explain_seconds"), "TreeSHAP p99 (s)", "B"),
            ).span(12)
        )
    )

    # -- sync breaks (BreakScorer) -----------------------------------------------------------------
    breaks = f'{SEL},grpc_service="tradescore.v1.BreakScorer",grpc_method="ScorePairs"'
    board = (
        board.with_row(db.Row("Sync breaks"))
        .with_panel(
            series(
                "Pairs scored and breaks",
                "Record pairs scored per second, and those flagged as breaks, by break class.",
                "short",
                query(f"sum(rate(engine_pairs_scored_total{{{SEL}}}[{RATE}]))", "pairs scored", "A"),
                query(
                    f"sum by (break_class) (rate(engine_pair_breaks_total{{{SEL}}}[{RATE}]))",
                    "breaks: {{break_class}}",
                    "B",
                ),
            ).span(8)
        )
        .with_panel(
            series(
                "ScorePairs latency",
                "p50 and p99 time in the ScorePairs handler (a reconciliation job's whole request).",
                "s",
                *quantiles("grpc_server_handling_seconds", breaks, (0.5, 0.99)),
            ).span(8)
        )
        .with_panel(
            series(
                "Pair model time p99",
                "ONNX Runtime time per batch of pairs, p99 (the pair batcher's own inference thread).",
                "s",
                query(p99("engine_pair_inference_seconds"), "p99"),
            ).span(8)
        )
    )

    # -- is the autoscaler keeping up (kube-state-metrics and KEDA: cluster only) -----------------
    board = (
        board.with_row(db.Row("Autoscaling"))
        .with_panel(
            series(
                "Replicas vs desired",
                "The HPA KEDA drives (kube-state-metrics): current, desired, min and max replicas.",
                "short",
                query(
                    'sum(kube_horizontalpodautoscaler_status_current_replicas{namespace=~"$namespace"})',
                    "current",
                ),
                query(
                    'sum(kube_horizontalpodautoscaler_status_desired_replicas{namespace=~"$namespace"})',
                    "desired",
                    "B",
                ),
                query(
                    'sum(kube_horizontalpodautoscaler_spec_min_replicas{namespace=~"$namespace"})',
                    "min",
                    "C",
                ),
                query(
                    'sum(kube_horizontalpodautoscaler_spec_max_replicas{namespace=~"$namespace"})',
                    "max",
                    "D",
                ),
            )
        )
        .with_panel(
            series(
                "Pods needed by the scaler's query",
                "The ScaledObject's query (in-flight calls, 1m average, all pods) / "
                f"{INFLIGHT_TARGET} per pod, "
                "next to the pods ready (kube-state-metrics).",
                "short",
                query(
                    f'sum(avg_over_time(engine_inflight_calls{{namespace=~"$namespace",job="tradescore"}}[1m]))'
                    f" / {INFLIGHT_TARGET}",
                    "needed (query / target)",
                ),
                query(
                    'sum(kube_deployment_status_replicas_available{namespace=~"$namespace",deployment="tradescore"})',
                    "ready",
                    "B",
                ),
            )
        )
        .with_panel(
            series(
                "KEDA scaler",
                "KEDA's own view: the metric value it hands the HPA, and whether the scaler is active.",
                "short",
                query(
                    'sum by (scaledObject) (keda_scaler_metrics_value{namespace=~"$namespace"})',
                    "{{scaledObject}} value",
                ),
                query(
                    'sum by (scaledObject) (keda_scaler_active{namespace=~"$namespace"})',
                    "{{scaledObject}} active",
                    "B",
                ),
            )
        )
    )
    return board


def render() -> str:
    """The dashboard JSON, panels numbered in order (Grafana wants unique ids)."""
    dashboard = build().build()
    for number, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = number
    return json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the TradeScore Grafana dashboard JSON.")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
