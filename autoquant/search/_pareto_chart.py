"""The study report's Pareto section: decay against latency, a dot per completed trial (inline SVG),
a legend that says what the dots and their labels mean, and a table of the front."""

from __future__ import annotations

import html
from collections.abc import Sequence

from autoquant.evaluation import ThreadLabel

_WIDTH, _HEIGHT, _PAD = 760, 420, 84
_FRONT_WITHIN, _FRONT_OVER, _OFF_FRONT, _BUDGET = "#1f77b4", "#ff7f0e", "#c8c8c8", "#d62728"


def dot_label(trial: dict) -> str:
    """A dot's label: ``#trial (FP32 compute layers)``."""
    return f"#{trial['number']} ({len(trial.get('fp32_compute_layers') or ())})"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / (count - 1) if high > low else 0.0
    return [low + i * step for i in range(count)] if step else [low]


def _axes(x0: float, x1: float, y0: float, y1: float, sx, sy) -> list[str]:
    """Axis lines, ticks with their values and the two axis titles."""
    w, h, pad = _WIDTH, _HEIGHT, _PAD
    parts = [
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad / 2}" x2="{pad}" y2="{h - pad}" stroke="#999"/>',
        f'<text class="axis-title" x="{w / 2}" y="{h - pad + 36}" text-anchor="middle">'
        "latency at 1 thread, ms (batch 1; lower is better)</text>",
        f'<text class="axis-title" x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" '
        'text-anchor="middle">decay: score lost against FP32 (lower is better)</text>',
    ]
    for v in _ticks(x0, x1):
        parts.append(
            f'<line x1="{sx(v):.1f}" y1="{h - pad}" x2="{sx(v):.1f}" y2="{h - pad + 4}" stroke="#999"/>'
        )
        parts.append(f'<text x="{sx(v):.1f}" y="{h - pad + 16}" text-anchor="middle">{v:.3g}</text>')
    for v in _ticks(y0, y1):
        parts.append(f'<line x1="{pad - 4}" y1="{sy(v):.1f}" x2="{pad}" y2="{sy(v):.1f}" stroke="#999"/>')
        parts.append(f'<text x="{pad - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:+.3g}</text>')
    return parts


def scatter(trials: Sequence[dict], front: set[int], budget: float, best: int | None) -> str:
    """Decay against latency, every completed trial a dot (one ``<circle>`` each): the Pareto front
    in colour and labelled, the best trial ringed and labelled whether on the front or not, the
    budget a dashed line."""
    w, h, pad = _WIDTH, _HEIGHT, _PAD
    xs = [t["latency_ms"] for t in trials]
    ys = [t["decay"] for t in trials] + [budget, 0.0]
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05 or 1.0
    y0, y1 = min(ys), max(ys)
    y0, y1 = y0 - (y1 - y0) * 0.05, y1 + (y1 - y0) * 0.05 or 1.0

    def sx(v: float) -> float:
        return pad + (v - x0) / ((x1 - x0) or 1.0) * (w - 2 * pad)

    def sy(v: float) -> float:
        return h - pad - (v - y0) / ((y1 - y0) or 1.0) * (h - 1.5 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
        'font-size="11" role="img" aria-label="decay against latency, one dot per completed trial">',
        *_axes(x0, x1, y0, y1, sx, sy),
        f'<line x1="{pad}" y1="{sy(budget):.1f}" x2="{w - pad}" y2="{sy(budget):.1f}" '
        f'stroke="{_BUDGET}" stroke-dasharray="4 3"/>',
        f'<text x="{w - pad}" y="{sy(budget) - 4:.1f}" text-anchor="end" fill="{_BUDGET}">'
        f"budget {budget:g}</text>",
    ]
    for t in sorted(trials, key=lambda t: (t["number"] in front, t["number"] == best)):
        on, is_best = t["number"] in front, t["number"] == best
        colour = (_FRONT_WITHIN if t["within_budget"] else _FRONT_OVER) if on else _OFF_FRONT
        x, y = sx(t["latency_ms"]), sy(t["decay"])
        ring = ' r="7" stroke="#000" stroke-width="2"' if is_best else ' r="4"'
        tip = html.escape(
            f"trial {t['number']} ({t['key']}): decay {t['decay']:+.4f}, {t['latency_ms']:.3f} ms"
        )
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}"{ring} fill="{colour}"><title>{tip}</title></circle>')
        if on or is_best:
            label = html.escape(dot_label(t) + (" best" if is_best else ""))
            weight = ' font-weight="bold"' if is_best else ""
            parts.append(f'<text x="{x + 9:.1f}" y="{y - 6:.1f}"{weight}>{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(budget: float, example: dict | None) -> str:
    """What the dots, their colours and labels mean (HTML, next to the chart); ``example``: the
    trial whose label explains the labels."""
    t = example or {"number": 0, "fp32_compute_layers": ()}
    layers = len(t.get("fp32_compute_layers") or ())
    items = (
        (
            f'<span class="dot" style="background:{_FRONT_WITHIN}"></span>',
            "on the Pareto front, within budget",
        ),
        (f'<span class="dot" style="background:{_FRONT_OVER}"></span>', "on the Pareto front, over budget"),
        (
            f'<span class="dot" style="background:{_OFF_FRONT}"></span>',
            "not on the front (another trial beats it)",
        ),
        ('<span class="dot best"></span>', "ringed: the best trial (chosen by the rule above)"),
        (f'<span class="dash" style="border-color:{_BUDGET}"></span>', f"the budget: decay {budget:g}"),
        (
            f"<code>{html.escape(dot_label(t))}</code>",
            f"label: trial {t['number']}, with {layers} compute layer{'' if layers == 1 else 's'} left in FP32",
        ),
    )
    rows = "".join(f"<li>{mark} {html.escape(text)}</li>" for mark, text in items)
    return f'<ul class="legend" id="legend">{rows}</ul>'


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


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value else "n/a"


def _ms(value: float | None) -> str:
    return f"{value:.3f}" if value else "n/a"


def _front_table(summary: dict, front: set[int], best: int | None) -> str:
    trials = summary.get("trials") or []
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
    return f'<table id="pareto-table"><tr>{header}</tr>{"".join(rows)}</table>'


def pareto_section(summary: dict) -> str:
    """The Pareto front of a study summary (``study_summary.json``): a chart, its legend and a table."""
    trials = summary.get("trials") or []
    front = set(summary.get("pareto_front") or [])
    best = (summary.get("best") or {}).get("number")
    budget = float(summary.get("accept_int8_decay", 0.0))
    latency = summary.get("latency") or {}
    chart = scatter(trials, front, budget, best) if trials else "<p>No trial completed.</p>"
    legend = _legend(budget, summary.get("best") or (trials[0] if trials else None))
    return f"""<h2 id="pareto">Pareto front: decay, latency, FP32 compute layers</h2>
<p>A trial is on the front when no other trial is as good on all three (decay, latency at one
thread, compute layers onnxruntime runs in FP32 in its optimised graph) and better on one. {len(front)} of {len(trials)} completed
trials are. Latency is batch 1 on {html.escape(str(latency.get("cpu_isa", "this CPU")))}
({html.escape(_latency_text(summary))}); ops left in float for speed are not FP32 layers.
The best trial need not be on the front: latencies within the measured noise are ties for the
selection, not for the front.</p>
<div class="chart">{chart}{legend}</div>
{_front_table(summary, front, best)}"""
