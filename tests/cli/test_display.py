"""The live display and the summary table name every trial, the ones that did not complete too."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from autoquant.cli._display import LiveReporter, summary_table
from autoquant.search import EndState, TrialEnd, TrialOutcome, TuneResult

DONE = TrialOutcome(0, "strategy:mse", {}, 0.99, 0.01, None, (), 1.0, False)
FAILED = TrialEnd(1, "strategy:broken", EndState.failed, "the model cannot be loaded: bad node")
PRUNED = TrialEnd(2, "sampled:0", EndState.pruned, "pruned after 100 samples: decay +0.5000", 0.5, 100)


def _console() -> Console:
    return Console(file=io.StringIO(), width=200, force_terminal=False, color_system=None)


def test_a_failed_trial_line_names_the_trial_and_its_reason() -> None:
    console = _console()
    reporter = LiveReporter(console, 0.0, 10)
    reporter.trial_finished(None, FAILED, DONE)
    (line,) = console.file.getvalue().splitlines()
    assert line.split()[:3] == ["#1", "strategy:broken", "failed:"], line
    assert "the model cannot be loaded: bad node" in line and "(best #0)" in line


def test_the_summary_table_lists_pruned_and_failed_trials_marked() -> None:
    result = TuneResult("s", "sqlite://", 1.0, 0.0, DONE, (DONE,), 1, Path("out"), ended=(FAILED, PRUNED))
    console = _console()
    console.print(summary_table(result))
    rows = {
        cells[1]: cells
        for line in console.file.getvalue().splitlines()
        if "│" in line and len(cells := [c.strip() for c in line.strip("│ ").split("│")]) > 2
    }
    assert rows["strategy:broken"][0] == "1" and rows["strategy:broken"][-1] == "failed"
    assert rows["sampled:0"][0] == "2" and rows["sampled:0"][-1] == "pruned"
    assert rows["sampled:0"][3] == "+0.5000"
    assert rows["strategy:mse"][-1] == "best"
