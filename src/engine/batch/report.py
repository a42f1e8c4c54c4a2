"""The discovery report: one self-contained HTML page (plots are PNGs embedded as data URLs).

What a reconciliation analyst reads, top to bottom: what was compared and with which model;
the match counts; the fields that disagree; the breaks by class; for each dimension, the values
where breaks concentrate (ranked by excess breaks at the 95 % Wilson lower bound, with the
interval drawn); a heat map of per-field mismatch rates over the top values of each dimension;
the break rate over business dates; and the break score distribution by class, with the alert
threshold. No script, no external file, nothing fetched: it opens offline, in a mail client's
viewer or a browser.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.batch.hotspots import NO_VALUE, rank
from engine.batch.join import CLASS_ORDER, SCORE_BINS, PartStats
from engine.batch.mapping import MappingSpec

TOP_VALUES = 12
#: values per dimension in the plots
PLOT_VALUES = 8
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#1d2330;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #d7dbe3;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d7dbe3;padding:.3em .6em;text-align:right}th{background:#f1f3f7}
td.t,th.t{text-align:left}.muted{color:#667085}img{max-width:100%;border:1px solid #eef0f4}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:.6em}
.card{background:#f6f8fb;border-radius:6px;padding:.6em .8em}.card b{font-size:1.4em;display:block}
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(data_url: str, alt: str) -> str:
    return f'<img src="{data_url}" alt="{html.escape(alt)}">'


def _table(headers: list[str], rows: list[list[Any]], text_columns: int = 1) -> str:
    head = "".join(
        f'<th class="{"t" if i < text_columns else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"t" if i < text_columns else ""}">{html.escape(_fmt(v))}</td>'
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        return f"{float(v):,.4g}" if abs(float(v)) < 1e5 else f"{float(v):,.0f}"
    return str(v)


def _panels(count: int, height: float) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    cols = 2 if count > 1 else 1
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, height * rows), squeeze=False)
    # fixed margins, room for the value labels on the left: tight_layout costs a second a figure
    fig.subplots_adjust(left=0.14, right=0.93, wspace=0.6, hspace=0.55, bottom=0.08, top=0.95)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _hotspots_plot(ranked: dict[str, pd.DataFrame], p0: float) -> str:
    """One panel per dimension: its top values' flagged rates with their intervals, and the overall rate."""
    fig, axes = _panels(len(ranked), 0.3 * PLOT_VALUES + 1.4)
    for ax, (name, table) in zip(axes, ranked.items(), strict=True):
        head = table.head(PLOT_VALUES).iloc[::-1]
        y = np.arange(len(head))
        rate = head["rate"].to_numpy()
        err = np.vstack([rate - head["ci_low"].to_numpy(), head["ci_high"].to_numpy() - rate])
        ax.barh(y, rate, color="#d9534f", alpha=0.8)
        ax.hlines(y, rate - err[0], rate + err[1], color="#333")  # one collection: cheap to draw
        ax.axvline(p0, color="#2b6cb0", linestyle="--", label=f"overall {p0:.2%}")
        ax.set_yticks(y, [str(v)[:22] for v in head["value"]])
        ax.set_title(name)
        ax.set_xlabel("flagged rate, 95 % Wilson interval")
        ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _heatmap(total: PartStats, ranked: dict[str, pd.DataFrame], spec: MappingSpec) -> str:
    """One panel per dimension: mismatch rate of each field (and missing records) over its top values."""
    fields = [f.name for f in spec.fields] + ["missing"]
    fig, axes = _panels(len(ranked), 0.3 * PLOT_VALUES + 2.0)
    image = None
    for ax, (name, table) in zip(axes, ranked.items(), strict=True):
        values = table.head(PLOT_VALUES)["value"].tolist()
        rows = total.dimensions[name].loc[values]
        pairs = np.maximum(rows["pairs"].to_numpy(dtype=np.float64), 1.0)
        cols = [rows[f"mismatch:{f.name}"].to_numpy(dtype=np.float64) for f in spec.fields] + [
            rows["missing"].to_numpy(dtype=np.float64)
        ]
        rates = np.column_stack(cols) / pairs[:, None]
        image = ax.imshow(
            rates, aspect="auto", cmap="Reds", vmin=0.0, vmax=max(0.05, float(rates.max(initial=0.0)))
        )
        ax.set_xticks(np.arange(len(fields)), fields, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(np.arange(len(values)), [str(v)[:22] for v in values], fontsize=8)
        ax.set_title(name)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


def _dates_plot(table: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    from engine.batch.hotspots import wilson

    t = table[table.index != NO_VALUE].sort_index()
    dates = pd.to_datetime(pd.Series(t.index), errors="coerce")
    n = t["pairs"].to_numpy(dtype=np.float64)
    k = t["flagged"].to_numpy(dtype=np.float64)
    low, high = wilson(k, np.maximum(n, 1.0))
    fig, ax = plt.subplots(figsize=(9, 3.4))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.9)
    ax.plot(dates, k / np.maximum(n, 1.0), marker=".", color="#d9534f", label="flagged rate")
    ax.fill_between(dates, low, high, color="#d9534f", alpha=0.2, label="95 % Wilson interval")
    ax.set_ylabel("flagged rate")
    ax.set_title("breaks over business dates")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)


def _scores_plot(total: PartStats, threshold: float) -> str:
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9)
    bottom = np.zeros(SCORE_BINS)
    colours = ("#6c757d", "#d9534f", "#f0ad4e", "#5bc0de", "#5cb85c")
    for i, cls in enumerate(CLASS_ORDER):
        counts = total.scores[i].astype(np.float64)
        if counts.sum() == 0:
            continue
        # one filled step artist per class (a bar per bin costs seconds to lay out)
        ax.stairs(
            bottom + counts,
            edges,
            baseline=bottom.copy(),
            fill=True,
            label=cls,
            color=colours[i % len(colours)],
        )
        bottom += counts
    ax.axvline(threshold, color="#1d2330", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("break score")
    ax.set_ylabel("pairs")
    ax.set_title("break score distribution, by what differs")
    ax.legend(fontsize=8)
    return _png(fig)


def write_report(path: Path, summary: dict[str, Any], total: PartStats, spec: MappingSpec) -> Path:
    """Write the HTML report of a discovery (its summary and its added-up counts)."""
    import matplotlib

    matplotlib.use("Agg")
    counts, model = summary["counts"], summary["model"]
    p0 = total.flagged / total.pairs if total.pairs else 0.0
    src = summary["sources"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Sync-break discovery: {html.escape(spec.a.name)} vs {html.escape(spec.b.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Sync-break discovery: {html.escape(spec.a.name)} vs {html.escape(spec.b.name)}</h1>",
        f'<p class="muted">A: {html.escape(str(src["a"]["location"]))} &middot; B: '
        f"{html.escape(str(src['b']['location']))} &middot; mapping {html.escape(spec.path)} &middot; "
        f"model {html.escape(str(model['kind']))} {html.escape(str(model['version']))} "
        f"(threshold {float(model['threshold']):.4f}; {html.escape(str(model['source']))})</p>",
        '<div class="grid">',
    ]
    cards = [
        ("pairs", counts["pairs"]),
        ("matched", counts["matched"]),
        ("all fields equal", counts["matched_all_fields_equal"]),
        (f"missing in {spec.a.name}", counts["missing_in_a"]),
        (f"missing in {spec.b.name}", counts["missing_in_b"]),
        ("flagged breaks", total.flagged),
    ]
    parts += [f'<div class="card">{html.escape(label)}<b>{_fmt(v)}</b></div>' for label, v in cards]
    parts.append("</div>")
    ranked = {name: rank(table, total.pairs, total.flagged) for name, table in total.dimensions.items()}
    # the pictures first: where the breaks are, which fields, when; the tables with every figure after
    if ranked:
        parts.append(
            "<h2>Where the breaks concentrate</h2><p>The values of each dimension with the most excess "
            "breaks (ranked at the lower bound of the 95 % Wilson interval of their flagged rate), against "
            f"the overall rate {p0:.2%}; the tables below give every figure.</p>"
        )
        parts.append(_img(_hotspots_plot(ranked, p0), "top values of each dimension by excess breaks"))
        parts.append("<h2>Which fields disagree, where</h2>")
        parts.append(_img(_heatmap(total, ranked, spec), "mismatch rate per field by dimension value"))
    if spec.business_date is not None and spec.business_date in total.dimensions:
        parts.append("<h2>Breaks over business dates</h2>")
        parts.append(_img(_dates_plot(total.dimensions[spec.business_date]), "flagged rate by business date"))
    parts.append("<h2>Break scores</h2>")
    parts.append(_img(_scores_plot(total, float(model["threshold"])), "break score distribution by class"))
    parts.append("<h2>Match counts</h2>")
    parts.append(_table(["count", "value"], [[k.replace("_", " "), v] for k, v in counts.items()]))
    parts.append("<h2>Fields that disagree (matched records)</h2>")
    matched = max(counts["matched"], 1)
    sizes = summary.get("field_differences", {})

    def by_how_much(name: str) -> list[Any]:
        d = sizes.get(name)
        if d is None:
            return ["", "", ""]
        buckets = ", ".join(f"{k}: {v:,}" for k, v in d["by_size"].items() if v)
        return [d["mean_abs_difference"], d["max_abs_difference"], f"{buckets} ({d['size']})"]

    parts.append(
        _table(
            [
                "field",
                "type",
                "tolerance",
                "mismatches",
                "share of matched",
                "mean |a − b|",
                "max |a − b|",
                "by how much",
            ],
            [
                [
                    f.name,
                    f.type,
                    _tolerance(f.abs_tol, f.rel_tol, f.type),
                    n,
                    f"{n / matched:.2%}",
                    *by_how_much(f.name),
                ]
                for f, n in zip(spec.fields, summary["field_mismatches"].values(), strict=True)
            ],
            text_columns=3,
        )
    )
    parts.append("<h2>Breaks flagged by the model, by class</h2>")
    parts.append(
        _table(
            ["class", "pairs (by what differs)", "flagged", "share of flagged"],
            [
                [
                    c,
                    summary["pairs_by_class"][c],
                    summary["breaks"]["by_class"][c],
                    f"{summary['breaks']['by_class'][c] / max(total.flagged, 1):.1%}",
                ]
                for c in CLASS_ORDER
            ],
        )
    )
    parts.append(f"<h2>Hotspots</h2><p>Overall flagged rate {p0:.2%}.</p>")
    for name, table in ranked.items():
        parts.append(f"<h3>{html.escape(name)} ({len(table):,} values)</h3>")
        parts.append(
            _table(
                ["rank", "value", "pairs", "flagged", "rate", "95 % interval", "expected", "excess"],
                [
                    [
                        int(r["rank"]),
                        r["value"],
                        int(r["pairs"]),
                        int(r["flagged"]),
                        f"{r['rate']:.2%}",
                        f"{r['ci_low']:.2%} – {r['ci_high']:.2%}",
                        r["expected"],
                        r["excess"],
                    ]
                    for r in table.head(TOP_VALUES).to_dict(orient="records")
                ],
                text_columns=2,
            )
        )
        unvalued = total.dimensions[name]
        if NO_VALUE in unvalued.index:
            n = int(unvalued.loc[NO_VALUE, "pairs"])
            parts.append(
                f'<p class="muted">{n:,} pair(s) have no {html.escape(name)} (records missing from the '
                "system that carries it); they are counted above, not ranked.</p>"
            )
    parts.append('<p class="muted">Written by engine discover. Nothing was changed in either system.</p>')
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _tolerance(abs_tol: float, rel_tol: float, type_: str) -> str:
    if type_ != "number":
        return "exact"
    if abs_tol == 0 and rel_tol == 0:
        return "exact"
    return " + ".join(
        x for x in (f"{abs_tol:g}" if abs_tol else "", f"{rel_tol:g} × |b|" if rel_tol else "") if x
    )
