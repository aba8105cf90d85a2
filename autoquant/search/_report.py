"""Reports: self-contained HTML pages (inline SVG and CSS, nothing downloaded) and a CSV.

The sensitivity report ranks the layers (no scripts); the study report (:mod:`._study_report`)
uses this module's page and its sensitivity sections.
"""

from __future__ import annotations

import csv
import html
import io
import math

from autoquant.engine import Sensitivity

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
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1200px; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f3f3f3; }
code, pre { background: #f3f3f3; padding: 0 3px; }
"""


def page(title: str, details: dict[str, str], body: str, style: str = "", script: str = "") -> str:
    """A self-contained HTML page: a title, a table of ``details``, then ``body`` (HTML), with
    ``style`` (CSS) and ``script`` (JavaScript) inline; nothing is downloaded."""
    detail_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in details.items()
    )
    script_tag = f"<script>{script}</script>" if script else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}{style}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{detail_rows}</table>
{body}
{script_tag}
</body></html>
"""


def sensitivity_sections(sensitivity: Sensitivity) -> str:
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
    return page(title, details, sensitivity_sections(sensitivity))
