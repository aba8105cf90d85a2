"""The study report when the selection's best trial is off the Pareto front (tied on latency with a
faster trial of the same decay): it is still ringed in the chart, in the table, and the reason
says which trial is on the front instead; every text is escaped."""

from __future__ import annotations

import re
from pathlib import Path

from autoquant.search import (
    EndState,
    TrialEnd,
    TrialOutcome,
    TuneResult,
    best_outcome,
    pareto_front,
    render_study_report,
    summary,
)

# the same decay and FP32 layers; 2 % apart in latency, within the 5 % tolerance: a tie that the
# lower trial number breaks, while the faster trial alone is on the front
SLOWER = TrialOutcome(0, "strategy:<mse>", {}, 0.99, 0.001, (0.0, 0.002), (), 1.00, True)
FASTER = TrialOutcome(1, "strategy:fast", {}, 0.99, 0.001, (-0.001, 0.003), (), 0.98, True)
PRUNED = TrialEnd(2, "sampled:0", EndState.pruned, "pruned after 100 samples: decay +0.5000", 0.5, 100)


def _report() -> tuple[str, TrialOutcome, list[TrialOutcome]]:
    outcomes = (SLOWER, FASTER)
    best = best_outcome(outcomes, 0.05)
    front = pareto_front(outcomes)
    result = TuneResult(
        "s&t",
        "sqlite://",
        0.991,
        0.005,
        best,
        outcomes,
        0,
        Path("out"),
        0.05,
        pareto=tuple(front),
        ended=(PRUNED,),
    )
    data = summary(result).to_dict()
    page = render_study_report(
        data, "autoquant study: s&t", {}, files=["report.html"], rebuild="autoquant quantize x"
    )
    return page, best, front


def test_the_best_trial_off_the_front_is_marked_and_explained() -> None:
    page, best, front = _report()
    assert best is SLOWER and SLOWER not in front  # the case this test is about
    circles = re.findall(r"<circle [^>]*><title>([^<]*)</title>", page)
    assert len(circles) == 2
    (ringed,) = re.findall(r'<circle [^>]*stroke="#000"[^>]*><title>([^<]*)</title>', page)
    assert ringed.startswith("trial 0 (strategy:&lt;mse&gt;)")
    assert "#0 (0) best</text>" in page
    assert "is not on the Pareto front: trial 1 (strategy:fast) is as good" in page
    assert "the lower trial number breaks the tie" in page
    row = re.search(r'<tr class="best" data-trial="0">(.*?)</tr>', page)
    assert row and "+0.0000 .. +0.0020" in row.group(1)


def test_every_trial_is_in_the_table_and_every_text_escaped() -> None:
    page, _, _ = _report()
    rows = re.findall(r'<tr class="([^"]*)" data-trial="(\d+)">', page)
    assert rows == [("best", "0"), ("within-budget", "1"), ("pruned", "2")]
    assert "strategy:<mse>" not in page and "s&t" not in page and "s&amp;t" in page
    assert page.count("<script>") == 1  # the table's sorting, nothing loaded from elsewhere
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_an_over_budget_best_trial_says_so_where_it_is_named() -> None:
    over = TrialOutcome(0, "strategy:mse", {}, 0.98, 0.01, (0.008, 0.012), (), 1.0, False)
    result = TuneResult("s", "sqlite://", 0.99, 0.005, over, (over,), 0, Path("out"), pareto=(over,))
    page = render_study_report(
        summary(result).to_dict(), "t", {}, files=["report.html"], rebuild="autoquant quantize x"
    )
    assert re.search(
        r'<tr class="best" data-trial="0"><td data-sort="0">0</td>.*?>best, over budget</td>', page
    )
    assert "#0 (strategy:mse), over budget" in page and "No trial is within the budget (0.005)" in page
    assert "model.over-budget.int8.onnx" in page and "it is over the budget" in page


def test_the_load_average_is_shown_where_latency_is() -> None:
    """The loads at which the FP32 and the trials' latencies were measured, and the busy verdict."""
    timed = TrialOutcome(0, "strategy:mse", {}, 0.99, 0.001, (0.0, 0.002), (), 1.0, True, load_average=3.5)
    result = TuneResult(
        "s",
        "sqlite://",
        0.99,
        0.005,
        timed,
        (timed,),
        0,
        Path("out"),
        0.6,
        pareto=(timed,),
        fp32_load_average=1.5,
    )
    page = render_study_report(
        summary(result).to_dict(), "t", {}, files=["report.html"], rebuild="autoquant quantize x"
    )
    assert "load average 1.5 (FP32), 3.5 (best trial)" in page
    assert "the machine was busy" in page  # a tolerance of 0.6 is above the busy tolerance
    row = re.search(r'<tr class="best" data-trial="0">(.*?)</tr>', page)
    assert row is not None and '<td data-sort="3.5">3.5</td>' in row.group(1)
