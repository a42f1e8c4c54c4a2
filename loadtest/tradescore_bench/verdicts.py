"""The verdicts: the ratios and targets of issue #2 item 8 from the measured scenarios, slices and
in-process figures; the open-loop curve's saturation; the Open Inference Protocol case."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tradescore_bench.report import NOISY, fmt
from tradescore_bench.system import THREAD_GROUPS


def _kept_up(r: dict[str, Any]) -> bool:
    """An open-loop point the engine kept up with: >= 95 % of the offered rate answered, <= 1 % errors."""
    errors = sum(r["errors"].values())
    offered = r["offered_calls_per_s"]
    return bool(r["achieved_ok_rate"] >= 0.95 * offered and errors <= 0.01 * max(1, r["ok_calls"] + errors))


def saturated(results: Sequence[dict[str, Any]]) -> bool:
    curve = [r for r in results if r["key"].startswith("curve")]
    return bool(curve) and not _kept_up(curve[-1])


def curve_verdict(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Saturation (the most calls/s answered) and p99 up to 60 % of it (target <= 5 ms)."""
    curve = sorted(
        (r for r in results if r["key"].startswith("curve")), key=lambda r: r["offered_calls_per_s"]
    )
    if not curve:
        return None
    # saturation: the most calls/s answered at any offered rate (open loop past capacity
    # answers about capacity); the SLO must hold at every point up to 60 % of it
    saturation = max(r["achieved_ok_rate"] for r in curve)
    below = [r for r in curve if r["offered_calls_per_s"] <= 0.6 * saturation]
    worst = max((r["latency"]["p99_ms"] for r in below), default=math.nan)
    ok = bool(below) and worst <= 5.0
    points = [
        {
            "offered": r["offered_calls_per_s"],
            "achieved_ok": r["achieved_ok_rate"],
            "p50_ms": r["latency"]["p50_ms"],
            "p99_ms": r["latency"]["p99_ms"],
            "errors": sum(r["errors"].values()),
            "server_cpu_us_per_call": r["server_cpu_us_per_call"],
        }
        for r in curve
    ]
    return {
        "points": points,
        "saturation_calls_per_s": saturation,
        "worst_p99_ms_up_to_60pct": worst,
        "pass": ok,
        "text": f"curve: saturation {saturation:,.0f} single-trade calls/s (open loop); p99 up to 60 % of it "
        f"({0.6 * saturation:,.0f}/s): worst {worst:.2f} ms (target <= 5 ms): {'PASS' if ok else 'FAIL'}",
    }


def b_ceiling(ip: dict[str, Any], by_key: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The (b) ratio an engine would reach if each call cost the server nothing but ORT, the bare
    gRPC server's CPU per call (floor_b) and the compiled request path measured in process.

    The transport's share is not the engine's to remove; when it alone keeps this below 0.7,
    no engine on grpc.aio reaches (b)'s target on this machine in this state.
    """
    path = ip.get("pipeline_us_per_call_p50", {}).get(str(ip["batch"]["rows"]))
    if "b" not in by_key or "floor_b" not in by_key or not path:
        return None
    ort = 1e6 * ip["batch"]["rows"] / ip["batch"]["rows_per_cpu_s"]
    floor = by_key["floor_b"]["server_cpu_us_per_call"]
    steps = path["total"] - path["ort_predict"]
    value = ort / (ort + floor + steps)
    return {
        "ort_us_per_call": ort,
        "bare_grpc_us_per_call": floor,
        "request_path_us_per_call": steps,
        "ceiling": value,
        "text": f"(b) ceiling on this transport: ORT {ort:.0f} us per {ip['batch']['rows']}-row call / "
        f"(ORT + bare gRPC {floor:.0f} us + request path {steps:.0f} us) = {value:.3f}, what (b) would be "
        "if the engine added no other cost",
    }


def b_split(slices: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the served engine's CPU per row goes in the (b) slices, beside in-process ORT's
    (medians over the slices): the inference threads (ORT and the batch's glue), the event loop
    (gRPC's Python side, decode, features, response), gRPC core's and other threads."""
    if not slices or "served_us_per_row_by_thread" not in slices[0]:
        return None
    med = {g: float(np.median([r["served_us_per_row_by_thread"][g] for r in slices])) for g in THREAD_GROUPS}
    ort = float(np.median([r["inprocess_us_per_row"] for r in slices]))
    slowdown = float(
        np.median([r["served_us_per_row_by_thread"]["inference"] / r["inprocess_us_per_row"] for r in slices])
    )
    beyond = sum(med.values()) - ort
    return {
        "inprocess_ort_us_per_row": ort,
        "served_us_per_row_by_thread": med,
        "inference_vs_inprocess_ort": slowdown,
        "served_beyond_ort_us_per_row": beyond,
        "text": f"(b) server CPU per row, medians of the slices: inference threads {med['inference']:.2f} us "
        f"({slowdown:.3f}x in-process ORT's {ort:.2f} us), event loop {med['event_loop']:.2f}, "
        f"gRPC core threads {med['grpc_core_threads']:.2f}, other Python threads "
        f"{med['other_python_threads']:.2f}; beyond ORT {beyond:.2f} us per row, where 0.70 allows "
        f"{ort / 0.7 - ort:.2f}",
    }


def verdicts(
    ip: dict[str, Any],
    by_key: dict[str, dict[str, Any]],
    slices: Sequence[dict[str, Any]] = (),
    a_slices: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The ratios and targets of issue #2 item 8, plus the engine-vs-bare-gRPC comparison."""
    out: dict[str, Any] = {}
    if "b" in by_key:
        served, local = by_key["b"]["rows_per_s"], ip["batch"]["rows_per_s"]
        ratio = served / local
        cpu_ratio = by_key["b"]["rows_per_server_cpu_s"] / ip["batch"]["rows_per_cpu_s"]
        # wall-clock rows/s are only comparable when nothing else ran on the server's CPUs;
        # otherwise judge on rows per CPU-second, which other processes cannot skew
        noisy = max(ip["other_processes_cpu"], by_key["b"]["other_processes_cpu"]) > NOISY
        judged = cpu_ratio if noisy else ratio
        basis = "per CPU-second" if noisy else "wall clock"
        per_slice = [r["cpu_time_ratio"] for r in slices]
        median_cpu = float(np.median(per_slice)) if slices else math.nan
        if slices:  # judge on the median of the interleaved pairs, per CPU-second
            judged, basis = median_cpu, f"median of {len(slices)} interleaved slices, per CPU-second"
        ok = judged >= 0.7
        text = (
            f"(b) served / in-process ORT rows/s = {fmt(served)} / {fmt(local)} = {ratio:.3f}"
            f"{' (UNRELIABLE: other processes were running)' if noisy else ''};\n"
            f"      per CPU-second (immune to other load): {fmt(by_key['b']['rows_per_server_cpu_s'])} / "
            f"{fmt(ip['batch']['rows_per_cpu_s'])} = {cpu_ratio:.3f} (these two were measured a minute apart)"
        )
        if slices:
            text += (
                f";\n      {len(slices)} interleaved slices per CPU-second: "
                f"{', '.join(f'{r:.3f}' for r in per_slice)};\n      median {median_cpu:.3f}, "
                f"range {min(per_slice):.3f}-{max(per_slice):.3f}"
            )
        out["served_vs_inprocess_b"] = {
            "ratio": ratio,
            "cpu_time_ratio": cpu_ratio,
            "judged_on": (
                "median_slice_cpu_time_ratio" if slices else "cpu_time_ratio" if noisy else "ratio"
            ),
            "slice_cpu_time_ratios": per_slice,
            "median_slice_cpu_time_ratio": median_cpu,
            "target": 0.7,
            "pass": ok,
            "text": text + f";  target >= 0.70 ({basis}): {'PASS' if ok else 'FAIL'}",
        }
        split = b_split(slices)
        if split is not None:
            out["b_cpu_split"] = split
    if "a" in by_key and "a_nobatch" in by_key:
        on, off = by_key["a"], by_key["a_nobatch"]
        rows = on["rows_per_s"] / off["rows_per_s"] if off["rows_per_s"] else math.nan
        p99 = on["latency"]["p99_ms"] / off["latency"]["p99_ms"]
        cpu = on["server_cpu_us_per_call"] / off["server_cpu_us_per_call"]
        text = (
            f"(a) batching on/off: rows/s {fmt(on['rows_per_s'])} / {fmt(off['rows_per_s'])} "
            f"= {rows:.2f}x; "
            f"p99 {on['latency']['p99_ms']:.2f} / {off['latency']['p99_ms']:.2f} ms = {p99:.2f}x; "
            f"server CPU per call {cpu:.2f}x (the two scenarios ran minutes apart)"
        )
        per_slice = [r["cpu_time_ratio"] for r in a_slices]
        median = float(np.median(per_slice)) if a_slices else math.nan
        p99_slices = [r["p99_ratio"] for r in a_slices if math.isfinite(r.get("p99_ratio", math.nan))]
        median_p99 = float(np.median(p99_slices)) if p99_slices else math.nan
        judged = median if a_slices else rows
        judged_p99 = median_p99 if p99_slices else p99
        ok = judged > 1.0 and judged_p99 <= 1.0
        if a_slices:
            text += (
                f";\n      rows per server CPU-second, on/off, {len(a_slices)} interleaved slices: "
                f"{', '.join(f'{r:.2f}' for r in per_slice)}; median {median:.2f}x"
            )
        if p99_slices:
            text += (
                f";\n      p99 on/off in the same slices: {', '.join(f'{r:.2f}' for r in p99_slices)}; "
                f"median {median_p99:.2f}x"
            )
        out["batching_on_off_a"] = {
            "rows_ratio": rows,
            "p99_ratio": p99,
            "server_cpu_per_call_ratio": cpu,
            "slice_cpu_time_ratios": per_slice,
            "median_slice_cpu_time_ratio": median,
            "slice_p99_ratios": p99_slices,
            "median_slice_p99_ratio": median_p99,
            "pass": ok,
            "text": text + f";  target: more rows at equal or lower p99 (medians of the slices if run): "
            f"{'PASS' if ok else 'FAIL'}",
        }
    for key, r in by_key.items():
        if r["mode"] != "open" or r["server"] != "on" or key.startswith("curve"):
            continue
        rate = r["offered_calls_per_s"]
        p99 = r["latency"]["p99_ms"]
        entry: dict[str, Any] = {"offered": rate, "p99_ms": p99, "errors": sum(r["errors"].values())}
        text = (
            f"(c) {rate:g} calls/s offered: p99 {p99:.2f} ms, achieved {r['achieved_ok_rate']:.0f} ok/s, "
            f"{entry['errors']} errors"
        )
        handled = r.get("server_handling_p99_ms")
        if handled is not None:
            entry["server_handling_p99_ms"] = handled
            text += f"; the engine's own handling p99 {handled:.2f} ms"
        if rate == 500:
            entry["target_ms"] = 5.0
            entry["pass"] = bool(p99 <= 5.0 and entry["errors"] == 0)
            text += f"  (p99 <= 5 ms: {'PASS' if entry['pass'] else 'FAIL'})"
        entry["text"] = text
        out[f"open_loop_{key}"] = entry
    for shape, target in (("a", 0.75), ("d", 0.75)):
        if shape in by_key and f"floor_{shape}" in by_key:
            eng, bare = by_key[shape], by_key[f"floor_{shape}"]
            ratio = eng["calls_per_s"] / bare["calls_per_s"] if bare["calls_per_s"] else math.nan
            what = "unary calls/s" if shape == "a" else "ScoreStream messages/s"
            out[f"vs_floor_{shape}"] = {
                "ratio": ratio,
                "target": target,
                "pass": bool(ratio >= target),
                "text": f"({shape}) single-trade {what}: engine {fmt(eng['calls_per_s'])} / bare gRPC "
                f"{fmt(bare['calls_per_s'])} = {ratio:.2f} (target >= {target}): "
                f"{'PASS' if ratio >= target else 'FAIL'}",
            }
    ceiling = b_ceiling(ip, by_key)
    if ceiling is not None:
        out["b_ceiling"] = ceiling
    for shape in ("a", "b", "d"):
        if shape in by_key and f"floor_{shape}" in by_key:
            eng, bare = by_key[shape], by_key[f"floor_{shape}"]
            share = bare["server_cpu_us_per_call"] / eng["server_cpu_us_per_call"]
            out[f"grpc_floor_{shape}"] = {
                "engine_us_per_call": eng["server_cpu_us_per_call"],
                "bare_grpc_us_per_call": bare["server_cpu_us_per_call"],
                "grpc_share": share,
                "text": f"({shape}) server CPU per call: engine {eng['server_cpu_us_per_call']:.0f} us, "
                f"bare grpc.aio {bare['server_cpu_us_per_call']:.0f} us: gRPC itself is {share:.0%} "
                "of the engine's cost",
            }
    return out


def oip_verdicts(ip: dict[str, Any], by_key: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """oip_b against in-process ORT (the same matrices) and against TradeScorer's (b)."""
    if "oip_b" not in by_key:
        return {}
    r, local = by_key["oip_b"], ip["batch"]
    ratio = r["rows_per_s"] / local["rows_per_s"]
    cpu_ratio = r["rows_per_server_cpu_s"] / local["rows_per_cpu_s"]
    out: dict[str, Any] = {"ratio": ratio, "cpu_time_ratio": cpu_ratio}
    text = (
        f"(oip_b) OIP served / in-process ORT rows/s = {fmt(r['rows_per_s'])} / {fmt(local['rows_per_s'])} "
        f"= {ratio:.3f}; per CPU-second {fmt(r['rows_per_server_cpu_s'])} / {fmt(local['rows_per_cpu_s'])} "
        f"= {cpu_ratio:.3f}"
    )
    if "b" in by_key:
        out["server_cpu_us_per_row"] = r["server_cpu_us_per_trade"]
        out["b_server_cpu_us_per_trade"] = by_key["b"]["server_cpu_us_per_trade"]
        b_us = by_key["b"]["server_cpu_us_per_trade"]
        text += (
            f";\n      server CPU per row {r['server_cpu_us_per_trade']:.1f} us "
            f"(TradeScorer (b), features computed in the server: {b_us:.1f} us)"
        )
    out["text"] = text
    return {"oip_b": out}
