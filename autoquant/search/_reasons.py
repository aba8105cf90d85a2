"""Why the study's best trial was chosen, in sentences for the report: the selection rule
(:mod:`._selection`), then how the best trial compares with the next by that rule, then whether it
is on the Pareto front and, when not, which trial is and why the rule still chose it."""

from __future__ import annotations

from types import SimpleNamespace

from autoquant.search._selection import objectives, ranked


def _selectable(row: dict) -> SimpleNamespace:
    """A summary row as the selection reads a trial."""
    return SimpleNamespace(
        number=row["number"],
        key=row["key"],
        decay=row["decay"],
        latency_ms=row["latency_ms"],
        within_budget=row["within_budget"],
        fp32_compute=tuple(row.get("fp32_compute_layers") or ()),
    )


def _name(o: SimpleNamespace) -> str:
    return f"trial {o.number} ({o.key})"


def rule(tolerance: float) -> str:
    """The selection rule in one sentence."""
    return (
        "The rule: among the trials within the budget, the fewest compute layers left in FP32, then the "
        f"lowest latency at 1 thread, latencies within {tolerance:.0%} of each other (the measured noise "
        "of the FP32 model's timings) being ties that the smaller decay, then the lower trial number, "
        "breaks. When no trial is within the budget: the smallest decay."
    )


def _against_next(best: SimpleNamespace, other: SimpleNamespace, tolerance: float) -> str:
    """Why ``best`` ranks before ``other``, the next by the rule."""
    lead = f"It ranks before {_name(other)}, the next by the rule: "
    if not best.within_budget:
        if other.decay > best.decay:
            return lead + f"that trial's decay is larger ({other.decay:+.4f} against {best.decay:+.4f})."
        return (
            lead
            + "the same decay, which fewer FP32 compute layers, then latency, then the trial number break."
        )
    if not other.within_budget:
        return lead + f"that trial is over the budget (decay {other.decay:+.4f})."
    if len(best.fp32_compute) != len(other.fp32_compute):
        return lead + (
            f"it keeps fewer compute layers in FP32 ({len(best.fp32_compute)} against {len(other.fp32_compute)})."
        )
    if other.latency_ms > best.latency_ms * (1.0 + tolerance):
        return lead + (
            f"as many FP32 compute layers, and it is faster ({best.latency_ms:.3f} ms against "
            f"{other.latency_ms:.3f} ms at 1 thread, more than the {tolerance:.0%} tolerance apart)."
        )
    tie = (
        f"as many FP32 compute layers, and latencies that are a tie ({best.latency_ms:.3f} ms against "
        f"{other.latency_ms:.3f} ms, within the {tolerance:.0%} tolerance), "
    )
    if best.decay < other.decay:
        return lead + tie + f"which its smaller decay breaks ({best.decay:+.4f} against {other.decay:+.4f})."
    return lead + tie + "and the same decay: the lower trial number breaks the tie."


def _front_note(best: SimpleNamespace, rows: list[SimpleNamespace], front: set[int]) -> str:
    if best.number in front:
        return f"{_name(best).capitalize()} is on the Pareto front."
    ours = objectives(best)
    dominating = [
        o
        for o in rows
        if all(a <= b for a, b in zip(objectives(o), ours, strict=True)) and objectives(o) != ours
    ]
    names = ", ".join(_name(o) for o in dominating[:3]) or "another trial"
    return (
        f"{_name(best).capitalize()} is not on the Pareto front: {names} is as good on decay, latency "
        "and FP32 compute layers and better on one. The rule counts latencies within the tolerance "
        "as ties, the front does not; the best trial is ringed in the chart all the same."
    )


def choice_reasons(summary: dict) -> list[str]:
    """Sentences that say why ``summary``'s best trial was chosen (a study summary's data)."""
    tolerance = float(summary.get("latency_tolerance") or 0.0)
    budget = summary.get("accept_int8_decay")
    best_row = summary.get("best")
    if not best_row:
        return ["No trial completed, so none was chosen.", rule(tolerance)]
    rows = [_selectable(t) for t in summary.get("trials") or []]
    best = _selectable(best_row)
    within = [o for o in rows if o.within_budget]
    lines = [rule(tolerance)]
    if best.within_budget:
        lines.append(
            f"{_name(best).capitalize()} is within the budget: decay {best.decay:+.4f}, budget {budget:g}; "
            f"{len(within)} of {len(rows)} completed trials are. It keeps {len(best.fp32_compute)} compute "
            f"layers in FP32 and runs in {best.latency_ms:.3f} ms at 1 thread."
        )
    else:
        lines.append(
            f"No trial is within the budget ({budget:g}); {_name(best)} has the smallest decay, "
            f"{best.decay:+.4f}. Its model is written as {summary.get('model', '')}, so that nobody ships it "
            "by mistake."
        )
    order = ranked(rows, tolerance)
    following = [o for o in order if o.number != best.number]
    if following and order and order[0].number == best.number:
        lines.append(_against_next(best, following[0], tolerance))
    lines.append(_front_note(best, rows, set(summary.get("pareto_front") or [])))
    return lines
