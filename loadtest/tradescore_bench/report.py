"""The printed report of a run (table, thread split, verdicts, curve) and the PNG of the curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: other processes using more than this share of a CPU make wall-clock numbers suspect
NOISY = 0.05


def fmt(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def print_report(res: dict[str, Any]) -> None:
    m, cfg, ip = res["machine"], res["config"], res["in_process"]
    print()
    print(
        f"TradeScore benchmark {res['timestamp']}  commit {m['commit'][:10]}"
        f"{' (dirty)' if m['worktree_dirty'] else ''}"
    )
    print(
        f"machine: {m['cpu_model']}, {m['cpus_online']} CPUs; python {m['python']}, grpcio {m['grpcio']}, "
        f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}"
    )
    mod = ip["model"]
    print(
        f"model: {mod['name']} {mod['version']} ({cfg['bundle']}), {ip['feature_width']} features; "
        f"trades: {res['trades_source']}"
    )
    print(
        f"server CPUs {cfg['server_cpus']}, client CPUs {cfg['client_cpus']}, intra-op threads "
        f"{cfg['intra_op_threads']}; warmup {cfg['warmup_s']} s + {cfg['duration_s']} s per scenario; "
        f"{cfg['client_procs']} client process(es) x {cfg['channels']} channel(s)"
    )
    print()
    b, s = ip["batch"], ip["single_row"]
    print(f"In-process ONNX Runtime (CPUs {ip['cpus']}, same session options as the server)")
    print(
        f"  batch of {b['rows']} rows : {fmt(b['rows_per_s'])} rows/s, {fmt(b['rows_per_cpu_s'])} rows per "
        f"CPU-second ({b['call_us_p50']:.0f} us/call p50, {b['call_us_p99']:.0f} us p99)"
    )
    print(f"  single row       : {s['call_us_p50']:.1f} us/call p50, {s['call_us_p99']:.1f} us p99")
    stages = ip["pipeline_us_per_call_p50"]
    cols = list(stages)
    print("  request path, CPU us per call (p50):      " + "".join(f"{c + ' trade(s)':>16}" for c in cols))
    for step in stages[cols[0]]:
        cells = "".join(f"{stages[c][step]:>16.1f}" for c in cols)
        print(f"    {step:<38}{cells}")
    big = cols[-1]
    print(
        f"    => in-process request path at {big} trades: "
        f"{fmt(int(big) / stages[big]['total'] * 1e6)} rows/s (no gRPC, no asyncio)"
    )
    print()
    print(
        f"  other processes meanwhile: {ip['other_processes_cpu']:.0%} of a CPU "
        f"(steal {ip['cpus_busy']['steal']:.0%})"
    )
    print()
    hdr = (
        f"{'scenario':<29}{'batching':>9}{'calls/s':>9}{'rows/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'srv CPU':>8}{'us/call':>8}{'us/trade':>9}{'cli CPU':>8}{'others':>8}{'errors':>7}  bound"
    )
    print(
        "Served over gRPC (127.0.0.1); us/call, us/trade: server CPU time; "
        "others: CPU used by other processes on the machine (share of one CPU)"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in res["scenarios"]:
        lat = r["latency"]
        noise = f"{r['other_processes_cpu']:.0%}"
        print(
            f"{r['title']:<29}{r['server']:>9}{fmt(r['calls_per_s'])!s:>9}"
            f"{fmt(r['rows_per_s'])!s:>11}{lat['p50_ms']:>8.2f}{lat['p99_ms']:>8.2f}"
            f"{r['server_cpu_util']:>8.0%}{r['server_cpu_us_per_call']:>8.0f}{r['server_cpu_us_per_trade']:>9.1f}"
            f"{r['client_cpu_util']:>8.0%}{noise:>8}{sum(r['errors'].values()):>7}"
            f"  {r['bound']}"
        )
        if r["mode"] == "open":
            print(
                f"{'':<6}offered {r['offered_calls_per_s']:.0f}/s, sent {r['achieved_send_rate']:.0f}/s, "
                f"ok {r['achieved_ok_rate']:.0f}/s; latency from scheduled send, p50/p99/max "
                f"{lat['p50_ms']:.2f}/{lat['p99_ms']:.2f}/{lat['max_ms']:.2f} ms;\n"
                f"{'':<6}client send lag p99 "
                f"{r['send_lag']['p99_ms']:.2f} ms; latency from the actual send p99 "
                f"{r['service_latency']['p99_ms']:.2f} ms"
            )
        if r["errors"] or r["warmup_errors"]:
            print(
                f"{'':<6}errors {r['errors']}  (warm-up errors {r['warmup_errors']}): {r['error_details']}; "
                f"failed after p50 {r['error_latency']['p50_ms']:.1f} ms, "
                f"max {r['error_latency']['max_ms']:.1f} ms"
            )
    print()
    print("Server CPU by thread (share of the server's CPU time); engine batching (from its /metrics)")
    for r in res["scenarios"]:
        by, b = r["server_cpu_by_thread"], r.get("batching") or {}
        line = (
            f"  {r['key']:<10} inference {by['inference']:4.0%}  event loop {by['event_loop']:4.0%}  "
            f"gRPC core threads {by['grpc_core_threads']:4.0%}  other Python threads "
            f"{by['other_python_threads']:4.0%}"
        )
        if b:
            line += (
                f" | {b['mean_batch_rows']:6.1f} rows/model call, queue wait "
                f"{b['mean_queue_wait_ms']:5.2f} ms, model call {b['mean_model_call_ms']:5.2f} ms"
            )
        print(line)
    print()
    print("Verdicts")
    for v in res["verdicts"].values():
        print(f"  {v['text']}")
    if res.get("curve"):
        curve = res["curve"]
        for pt in curve["points"]:
            print(
                f"    curve {pt['offered']:>7,.0f}/s offered: {pt['achieved_ok']:>7,.0f} ok/s, "
                f"p50 {pt['p50_ms']:.2f} ms, p99 {pt['p99_ms']:.2f} ms, {pt['errors']} errors, "
                f"server {pt['server_cpu_us_per_call']:.0f} us CPU/call"
            )
        print(f"  {curve['text']}" + (f"\n  plot: {curve['plot']}" if curve.get("plot") else ""))
    noisy = [r["key"] for r in res["scenarios"] if r["other_processes_cpu"] > NOISY]
    noisy += ["in-process"] if ip["other_processes_cpu"] > NOISY else []
    if noisy:
        print(
            f"  WARNING: other processes used > {NOISY:.0%} of a CPU during {', '.join(noisy)}:\n"
            "  wall-clock numbers there are low; CPU-time numbers (us/call, per CPU-second) still hold"
        )
    print()


def plot_curve(verdict: dict[str, Any], path: Path, machine: str) -> bool:
    """Latency against offered rate, as a PNG (False when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pts = verdict["points"]
    x = [p["offered"] for p in pts]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(x, [p["p50_ms"] for p in pts], "o-", label="p50")
    ax.plot(x, [p["p99_ms"] for p in pts], "s-", label="p99")
    ax.axhline(5.0, color="grey", linestyle=":", label="5 ms SLO")
    sat = verdict["saturation_calls_per_s"]
    if sat:
        ax.axvline(sat, color="red", linestyle="--", label=f"saturation {sat:,.0f}/s")
        ax.axvline(0.6 * sat, color="orange", linestyle="--", label="60 % of saturation")
    ax.set_yscale("log")
    ax.set_xlabel("offered single-trade Score calls/s (open loop)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_title(f"TradeScore latency vs offered rate\n{machine}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
