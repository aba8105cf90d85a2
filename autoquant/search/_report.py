"""Reports: self-contained HTML pages (inline SVG, no scripts or downloads) and a CSV.

The sensitivity report ranks the layers; the study report shows the Pareto front of the trials
(decay, latency, FP32 compute layers) and, when the study computed one, the sensitivity ranking.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence

from autoquant.engine import Sensitivity
from autoquant.evaluation import ThreadLabel

_COLUMNS = (
    "rank",
    "node",
    "op_type",
    "snr_db",
    "cosine",
    "l2",
    "cumulative_snr_db",
    "cumulative_cosine",
    "cumulative_l2",
)
_CAP_DB = 60.0  # bars of exact layers (infinite SNR) are drawn at this height


def _rows(sensitivity: Sensitivity) -> list[tuple]:
    rows = []
    for rank, layer in enumerate(sensitivity.layers, 1):
        c = layer.cumulative
        rows.append(
            (
                rank,
                layer.node,
                layer.op_type,
                layer.isolated.snr_db,
                layer.isolated.cosine,
                layer.isolated.l2,
                c.snr_db if c else "",
                c.cosine if c else "",
                c.l2 if c else "",
            )
        )
    return rows


def sensitivity_csv(sensitivity: Sensitivity) -> str:
    """The ranking as CSV, one row per node, most sensitive first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    writer.writerows(_rows(sensitivity))
    return buffer.getvalue()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "exact" if math.isinf(value) and value > 0 else f"{value:.4g}"
    return html.escape(str(value))


def _bar_chart(sensitivity: Sensitivity) -> str:
    """Horizontal bars of isolated SNR per node, in graph order of the ranking (lower = worse)."""
    layers = sensitivity.layers
    row_h, label_w, chart_w = 18, 330, 420
    height = row_h * len(layers) + 40
    finite = [x.isolated.snr_db for x in layers if math.isfinite(x.isolated.snr_db)]
    top = max([_CAP_DB, *finite]) if finite else _CAP_DB
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + chart_w + 80}" height="{height}" '
        f'font-family="sans-serif" font-size="11">'
    ]
    for i, layer in enumerate(layers):
        snr = layer.isolated.snr_db
        value = top if not math.isfinite(snr) else max(snr, 0.0)
        width = chart_w * value / top
        y = 10 + i * row_h
        colour = "#d62728" if i < max(1, len(layers) // 10) else ("#bbbbbb" if math.isinf(snr) else "#1f77b4")
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{html.escape(layer.node)}</text>'
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{row_h - 5}" fill="{colour}"/>'
        )
        parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 12}">{_fmt(snr)}</text>')
    axis_y = height - 16
    parts.append(
        f'<text x="{label_w}" y="{axis_y + 12}">isolated SNR of the model outputs, dB '
        f"(higher is better; grey = exact)</text></svg>"
    )
    return "".join(parts)


_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def _page(title: str, details: dict[str, str], body: str) -> str:
    detail_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in details.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{detail_rows}</table>
{body}
</body></html>
"""


def _sensitivity_sections(sensitivity: Sensitivity) -> str:
    offenders = sensitivity.layers[: min(5, len(sensitivity.layers))]
    offender_items = "".join(
        f"<li><code>{html.escape(x.node)}</code> ({html.escape(x.op_type)}): SNR {_fmt(x.isolated.snr_db)} dB, "
        f"cosine {_fmt(x.isolated.cosine)}</li>"
        for x in offenders
    )
    header = "".join(f"<th>{c}</th>" for c in _COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in _rows(sensitivity)
    )
    return f"""<h2>Top offenders</h2>
<p>Quantizing one of these alone hurts the model outputs most; they are the first candidates to keep
in FP32 (<code>quantization.nodes_to_exclude</code> or <code>fp32_layers</code>).</p>
<ol>{offender_items}</ol>
<h2>Per-layer SNR (isolated)</h2>
{_bar_chart(sensitivity)}
<h2>All layers</h2>
<p>isolated: only this node in INT8, model outputs against FP32. cumulative: this node's own output
tensor in the fully quantized model against FP32. l2: mean squared distance per sample.</p>
<table><tr>{header}</tr>{body}</table>"""


def render_report(sensitivity: Sensitivity, title: str, details: dict[str, str]) -> str:
    """A self-contained HTML page: details, bar chart of per-node SNR, top offenders, full table."""
    return _page(title, details, _sensitivity_sections(sensitivity))


def _scatter(trials: Sequence[dict], front: set[int], budget: float, best: int | None) -> str:
    """Decay against latency, every trial a dot; the Pareto front in colour, labelled
    ``#trial (FP32 compute layers)``; the budget a dashed line."""
    width, height, pad = 640, 360, 56
    xs = [t["latency_ms"] for t in trials]
    ys = [t["decay"] for t in trials] + [budget, 0.0]
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05 or 1.0
    y0, y1 = min(ys), max(ys)
    y1 = y1 + (y1 - y0) * 0.05 or 1.0

    def sx(v: float) -> float:
        return pad + (v - x0) / ((x1 - x0) or 1.0) * (width - 2 * pad)

    def sy(v: float) -> float:
        return height - pad - (v - y0) / ((y1 - y0) or 1.0) * (height - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
        f'<line x1="{pad}" y1="{sy(budget):.1f}" x2="{width - pad}" y2="{sy(budget):.1f}" '
        f'stroke="#d62728" stroke-dasharray="4 3"/>',
        f'<text x="{width - pad}" y="{sy(budget) - 4:.1f}" text-anchor="end" fill="#d62728">budget {budget:g}</text>',
        f'<text x="{width / 2}" y="{height - 16}" text-anchor="middle">latency at 1 thread, ms (batch 1)</text>',
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">decay</text>',
        f'<text x="{pad}" y="{height - pad + 14}" text-anchor="middle">{x0:.3g}</text>',
        f'<text x="{width - pad}" y="{height - pad + 14}" text-anchor="middle">{x1:.3g}</text>',
        f'<text x="{pad - 4}" y="{sy(y0) + 4:.1f}" text-anchor="end">{y0:+.3g}</text>',
        f'<text x="{pad - 4}" y="{sy(y1) + 4:.1f}" text-anchor="end">{y1:+.3g}</text>',
    ]
    for t in sorted(trials, key=lambda t: t["number"] in front):
        on = t["number"] in front
        colour = ("#1f77b4" if t["within_budget"] else "#ff7f0e") if on else "#c8c8c8"
        x, y = sx(t["latency_ms"]), sy(t["decay"])
        radius = 6 if t["number"] == best else 4
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}"/>')
        if on:
            label = f"#{t['number']} ({len(t['fp32_compute_layers'])})"
            parts.append(f'<text x="{x + 7:.1f}" y="{y - 5:.1f}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _latency_text(summary: dict) -> str:
    latency = summary.get("latency") or {}
    cells = []
    for label, t in (latency.get("threads") or {}).items():
        if t.get("fp32_ms") is None:
            continue
        threads = "1 thread" if label == ThreadLabel.ONE else f"{label} threads"
        best = (
            f", best INT8 {t['best_int8_ms']:.3f} ms ({t['best_speedup']:.2f}x)"
            if t.get("best_int8_ms")
            else ""
        )
        cells.append(f"{threads}: FP32 {t['fp32_ms']:.3f} ms{best}")
    return "; ".join(cells)


def pareto_section(summary: dict) -> str:
    """The Pareto front of a study summary (``study_summary.json``): a chart and a table."""
    trials = summary.get("trials") or []
    front = set(summary.get("pareto_front") or [])
    best = (summary.get("best") or {}).get("number")
    latency = summary.get("latency") or {}
    columns = (
        "trial",
        "how",
        "decay",
        "within budget",
        "FP32 compute layers run (optimised graph)",
        "float ops",
        "latency 1 thread ms",
        "speedup 1 thread",
        "latency default ms",
        "speedup default",
        "",
    )
    rows = []
    for t in sorted((t for t in trials if t["number"] in front), key=lambda t: t["latency_ms"]):
        speedups, latencies = t.get("speedup_by_threads") or {}, t.get("latency_by_threads") or {}
        cells = (
            t["number"],
            t["key"],
            f"{t['decay']:+.4f}",
            "yes" if t["within_budget"] else "no",
            len(t["fp32_compute_layers"]),
            len(t.get("float_nodes") or ()),
            f"{t['latency_ms']:.3f}",
            _ratio(speedups.get(ThreadLabel.ONE)),
            _ms(latencies.get(ThreadLabel.DEFAULT)),
            _ratio(speedups.get(ThreadLabel.DEFAULT)),
            "best" if t["number"] == best else "",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    chart = _scatter(trials, front, float(summary.get("accept_int8_decay", 0.0)), best) if trials else ""
    return f"""<h2>Pareto front: decay, latency, FP32 compute layers</h2>
<p>A trial is on the front when no other trial is as good on all three (decay, latency at one
thread, compute layers onnxruntime runs in FP32 in its optimised graph) and better on one. {len(front)} of {len(trials)} completed
trials are. Latency is batch 1 on {html.escape(str(latency.get("cpu_isa", "this CPU")))}
({html.escape(_latency_text(summary))}); ops left in float for speed are not FP32 layers.
Coloured dots are the front (blue within budget, orange over), the larger dot the best trial.</p>
{chart}
<table><tr>{header}</tr>{"".join(rows)}</table>"""


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value else "n/a"


def _ms(value: float | None) -> str:
    return f"{value:.3f}" if value else "n/a"


def render_study_report(
    summary: dict, title: str, details: dict[str, str], sensitivity: Sensitivity | None = None
) -> str:
    """The study's page: its Pareto front, then the sensitivity ranking when there is one."""
    body = pareto_section(summary)
    if sensitivity is not None:
        body += "\n<h2>Sensitivity ranking</h2>\n" + _sensitivity_sections(sensitivity)
    return _page(title, details, body)
