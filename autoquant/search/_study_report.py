"""The study's HTML report (``report.html``): the result against FP32, why the best trial was chosen,
every trial in a sortable table, the Pareto front, the output files with the command that rebuilds
the model, and the study's settings. Self-contained: inline CSS, SVG and a small sorting script.

Everything is read from the study summary (``study_summary.json``'s data) by attribute name, so
that attributes a trial or the summary gains later show without a change here where they are
looked up (``decay_ci``, ``int8_compute_layers``)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from autoquant.engine import Sensitivity
from autoquant.evaluation import ThreadLabel
from autoquant.search._pareto_chart import pareto_section
from autoquant.search._reasons import choice_reasons
from autoquant.search._report import page, sensitivity_sections
from autoquant.search._report_files import files_section

_STYLE = """
h2 { margin-top: 28px; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th::after { content: " \\2195"; color: #aaa; }
table.sortable th[aria-sort="ascending"]::after { content: " \\2191"; color: #222; }
table.sortable th[aria-sort="descending"]::after { content: " \\2193"; color: #222; }
tr.best td { background: #e8f4e8; font-weight: bold; }
tr.pruned td, tr.failed td { color: #777; }
td:last-child { max-width: 320px; }
.wide { overflow-x: auto; }
.chart { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
ul.legend { list-style: none; padding: 0; font-size: 12px; }
ul.legend li { margin: 4px 0; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; vertical-align: middle; }
.dot.best { width: 12px; height: 12px; border: 2px solid #000; background: #1f77b4; }
.dash { display: inline-block; width: 18px; border-top: 2px dashed; vertical-align: middle; }
pre { padding: 8px; overflow-x: auto; }
"""

# Sorts a table.sortable by the clicked column: numbers as numbers (each cell's data-sort), n/a
# (an empty data-sort) last either way; a second click reverses the order. Enter or space on a
# focused header does the same.
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, column) {
    th.tabIndex = 0;
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); th.click(); }
    });
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.sort, y = b.cells[column].dataset.sort;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _interval(ci: Sequence[float] | None, bound: float | None = None) -> str:
    """``-0.0031 .. +0.0055``, with ``(bound +0.0048)`` when search.budget_confidence judged by it."""
    text = f"{ci[0]:+.4f} .. {ci[1]:+.4f}" if ci else "n/a"
    return text + (f" (bound {bound:+.4f})" if bound is not None else "")


def _resolution_text(resolution: dict) -> str:
    """What the test set resolves (``resolution`` of the summary), in a sentence."""
    text = (
        f"{resolution['samples']} samples resolve decays of {resolution['resolvable_decay']:.4f} and more "
        f"at {resolution['level'] * 100:g} % ({resolution['method']})"
    )
    if resolution["resolves_budget"]:
        return text
    return f"{text}: not the budget; about {resolution['needed_samples']} samples would"


def fp32_layers(trial: dict) -> int:
    """The compute layers onnxruntime runs in FP32 in a trial's model (its optimised graph)."""
    return len(trial.get("fp32_compute_layers") or ())


def int8_layers(trial: dict, total: int | None) -> int | None:
    """The compute layers a trial runs in INT8: its own count when it stores one, else the model's
    compute layers less those left in FP32 (None when the model's count is unknown)."""
    own = trial.get("int8_compute_layers")
    if isinstance(own, list | tuple):
        return len(own)
    if isinstance(own, int):
        return own
    return total - fp32_layers(trial) if total is not None else None


def _result_section(summary: dict) -> str:
    """The FP32 score, the best trial's score, decay and interval, and the counts of trials."""
    best = summary.get("best")
    rows: list[tuple[str, str]] = [
        ("FP32 score", f"{summary['fp32_score']:.4f}"),
        ("budget (largest decay accepted)", f"{summary['accept_int8_decay']:g}"),
        ("within budget when", summary.get("budget_rule") or "the decay (point estimate) <= the budget"),
    ]
    if summary.get("resolution"):
        rows.append(("the test set's resolution", _resolution_text(summary["resolution"])))
    if best:
        verdict = "within budget" if best.get("within_budget") else "over budget"
        total = summary.get("compute_layers")
        int8 = int8_layers(best, total)
        rows += [
            ("best trial", f"#{best['number']} ({best['key']}), {verdict}"),
            ("best trial's INT8 score", f"{best['score']:.4f}"),
            ("its decay (FP32 score less INT8 score)", f"{best['decay']:+.4f}"),
            ("its decay's 95 % interval", _interval(best.get("decay_ci"), best.get("decay_bound"))),
            ("compute layers in FP32 / INT8", f"{fp32_layers(best)} / {'n/a' if int8 is None else int8}"),
            ("latency at 1 thread", f"{best['latency_ms']:.3f} ms"),
            ("latency measured at", _load_text(summary.get("latency") or {})),
            ("its model", str(summary.get("model", ""))),
        ]
    else:
        rows.append(("best trial", "none: no trial completed"))
    ended = summary.get("ended_trials") or []
    pruned = sum(1 for t in ended if t.get("state") == "pruned")
    rows.append(
        (
            "trials",
            f"{summary.get('completed_trials', 0)} completed, {pruned} pruned, "
            f"{summary.get('failed_trials', 0)} failed",
        )
    )
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<h2 id="result">Result</h2>\n<table id="result-table">{cells}</table>'


def _load(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _load_text(latency: dict) -> str:
    """The 1-minute load averages at which the FP32 and the best trial's latencies were measured,
    and whether the machine was busy (the FP32 timings spread beyond the busy tolerance)."""
    text = (
        f"load average {_load(latency.get('fp32_load_average'))} (FP32), "
        f"{_load(latency.get('best_load_average'))} (best trial)"
    )
    if latency.get("busy"):
        text += "; the machine was busy (FP32 timings spread widely): the latencies are uncertain"
    return text


def _reason_section(summary: dict) -> str:
    items = "".join(f"<li>{_e(line)}</li>" for line in choice_reasons(summary))
    return f'<h2 id="why">Why this trial</h2>\n<ul id="reason">{items}</ul>'


def _cell(text: str, sort: object = None) -> str:
    """A table cell whose sort key is ``sort`` (its text when None; empty: n/a, sorted last)."""
    key = "" if text == "n/a" else (text if sort is None else sort)
    return f'<td data-sort="{_e(key)}">{_e(text)}</td>'


_TRIAL_COLUMNS = (
    "trial",
    "key",
    "state",
    "score",
    "decay",
    "decay 95 % interval",
    "FP32 layers run",
    "INT8 layers run",
    "float ops",
    "ms, 1 thread",
    "speedup",
    "load",
    "Pareto",
    "note",
)


def _completed_row(t: dict, best: int | None, total: int | None) -> str:
    verdict = "within budget" if t["within_budget"] else "over budget"
    state = verdict if t["number"] != best else ("best" if t["within_budget"] else "best, over budget")
    int8 = int8_layers(t, total)
    ci = t.get("decay_ci")
    speedup = (t.get("speedup_by_threads") or {}).get(ThreadLabel.ONE)
    cells = (
        _cell(str(t["number"])),
        _cell(t["key"]),
        _cell(state),
        _cell(f"{t['score']:.4f}", t["score"]),
        _cell(f"{t['decay']:+.4f}", t["decay"]),
        _cell(_interval(ci, t.get("decay_bound")), ci[0] if ci else None),
        _cell(str(fp32_layers(t))),
        _cell("n/a" if int8 is None else str(int8)),
        _cell(str(len(t.get("float_nodes") or ()))),
        _cell(f"{t['latency_ms']:.3f}", t["latency_ms"]),
        _cell(f"{speedup:.2f}x" if speedup else "n/a", speedup),
        _cell(_load(t.get("load_average")), t.get("load_average")),
        _cell("yes" if t.get("pareto") else "no"),
        _cell(""),
    )
    css = "best" if t["number"] == best else verdict.replace(" ", "-")
    return f'<tr class="{css}" data-trial="{t["number"]}">{"".join(cells)}</tr>'


def _ended_row(t: dict) -> str:
    decay = t.get("decay")
    samples = t.get("samples")
    note = t.get("reason") or ""
    if t.get("state") == "pruned" and samples:
        note = f"stopped after {samples} samples, its decay certainly over the budget"
    cells = (
        _cell(str(t["number"])),
        _cell(t.get("key", "")),
        _cell(str(t.get("state", ""))),
        _cell("n/a"),
        _cell(f"{decay:+.4f}" if decay is not None else "n/a", decay),
        _cell(_interval(t.get("decay_ci"))),  # a pruned trial's: on the samples it was scored on
        *(_cell("n/a") for _ in range(6)),
        _cell("no"),
        _cell(note),
    )
    return f'<tr class="{_e(t.get("state", ""))}" data-trial="{t["number"]}">{"".join(cells)}</tr>'


def trials_section(summary: dict) -> str:
    """Every trial of the study, completed, pruned and failed, in a table sorted by trial number
    that sorts by any column on a click of its header."""
    best = (summary.get("best") or {}).get("number")
    total = summary.get("compute_layers")
    rows = [(t["number"], _completed_row(t, best, total)) for t in summary.get("trials") or []]
    rows += [(t["number"], _ended_row(t)) for t in summary.get("ended_trials") or []]
    header = "".join(f"<th>{_e(c)}</th>" for c in _TRIAL_COLUMNS)
    body = "".join(row for _, row in sorted(rows, key=lambda r: r[0]))
    total_text = f"of the model's {total}" if total is not None else ""
    return f"""<h2 id="trials">All trials</h2>
<p>Click a column's header to sort by it (again to reverse). decay: the FP32 score less the
trial's; a pruned trial's decay is where its evaluation stopped. FP32 and INT8 layers: the compute
layers (Conv, ConvTranspose, Gemm, MatMul {_e(total_text)}) kept in FP32 and quantized to INT8;
float ops: other ops left in float for speed. ms, 1 thread: latency at batch 1; speedup: FP32 ms /
INT8 ms at 1 thread; load: the 1-minute load average as the latency was measured. Pareto: on the
Pareto front.</p>
<div class="wide"><table class="sortable" id="trials-table"><thead><tr>{header}</tr></thead>
<tbody>{body}</tbody></table></div>"""


_FIRST_SECTIONS = ("search", "model", "calibration", "test", "quantization")


def _flat(settings: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    """``section.key`` and the value as text, the search's section first."""
    order = sorted(settings, key=lambda k: _FIRST_SECTIONS.index(k) if k in _FIRST_SECTIONS else 99)
    for key in order if not prefix else settings:
        value = settings[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not prefix:
            yield from _flat(value, f"{name}.")
        else:
            yield name, value if isinstance(value, str) else json.dumps(value)


def _settings_section(settings: dict[str, Any] | None) -> str:
    if not settings:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _flat(settings))
    return f"""<h2 id="settings">Settings</h2>
<p>The study's config as it was run, every default and path resolved (passwords masked).</p>
<table id="settings-table">{rows}</table>"""


def render_study_report(
    summary: dict,
    title: str,
    details: dict[str, str],
    sensitivity: Sensitivity | None = None,
    *,
    settings: dict[str, Any] | None = None,
    files: Sequence[str] = (),
    rebuild: str | None = None,
) -> str:
    """The study's page: the result, why the best trial, every trial, the Pareto front, the output
    folder's ``files`` and the ``rebuild`` command, the ``settings`` (the resolved config's
    sections), then the sensitivity ranking when there is one."""
    body = "\n".join(
        (
            _result_section(summary),
            _reason_section(summary),
            trials_section(summary),
            pareto_section(summary),
            files_section(files, rebuild, bool(summary.get("within_budget"))),
            _settings_section(settings),
        )
    )
    if sensitivity is not None:
        body += "\n<h2>Sensitivity ranking</h2>\n" + sensitivity_sections(sensitivity)
    return page(title, details, body, style=_STYLE, script=_SORT_SCRIPT)
