"""Statistical resolution on the real command line: one line before the search when the test set
is too small to resolve the budget (with the size that would), the decay's interval wherever the
decay is shown, and ``search.budget_confidence``: the one-sided upper bound decides "within
budget"."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from autoquant.cli._console import NO_TRIAL_WITHIN_BUDGET
from tests.cli.test_faults import assert_one_error, run
from tests.helpers import small_digits_study

pytestmark = pytest.mark.integration  # every test here starts a process

WIDE = {"COLUMNS": "250"}  # the final table unwrapped


def _study(folder: Path, search: dict[str, Any], test: dict[str, Any] | None = None) -> Path:
    """The small digits study (100 test samples) with one strategy (mse), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "space.yaml"
    space.write_text("parameters:\n  method: {choices: [mse]}\nstrategies:\n  - {name: mse, method: mse}\n")
    layers = {
        "output": {"directory": str(folder / "out")},
        "tracking": {"enabled": False},
        "search": {"mode": "fast", "space": str(space), **search},
        "test": test or {},
    }
    return small_digits_study(folder / "study.yaml", layers)


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "out" / "study_summary.json").read_text())


def _resolution_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING: the test set")]


def test_a_budget_the_test_set_cannot_resolve_is_said_in_one_line(tmp_path: Path) -> None:
    """100 samples scored 0 or 1 each: a loss is told from none only from 3 samples lost (the rule
    of three at 95 %), a decay of 0.03; a budget of 0.005 needs 3 / 0.005 = 600 samples."""
    result = run(tmp_path, "tune", str(_study(tmp_path / "fine", {"accept_int8_decay": 0.005})))
    assert result.returncode in (0, NO_TRIAL_WITHIN_BUDGET), result.stderr[-3000:]
    lines = _resolution_lines(result)
    needed = math.ceil(-math.log(0.05) / 0.005)
    assert len(lines) == 1, result.stderr
    assert "(100 samples)" in lines[0] and "budget 0.005" in lines[0], lines[0]
    assert f"about {needed} test samples would" in lines[0], lines[0]
    resolution = _summary(tmp_path / "fine")["resolution"]
    assert resolution["samples"] == 100 and resolution["needed_samples"] == needed
    assert resolution["resolves_budget"] is False and resolution["resolvable_decay"] > 0.005
    # the line comes before the search (the live display is on stderr)
    assert result.stderr.index(lines[0]) < result.stderr.index("known-good strateg")

    coarse = run(tmp_path, "tune", str(_study(tmp_path / "coarse", {"accept_int8_decay": 0.05})))
    assert coarse.returncode == 0, coarse.stderr[-3000:]
    assert _resolution_lines(coarse) == []
    assert _summary(tmp_path / "coarse")["resolution"]["resolves_budget"] is True


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The mse trial scored by cosine (a continuous score) three times: with a loose budget, to
    learn its decay and one-sided 95 % bound; then with a budget between the two, judged by the
    bound (over) and by the point estimate (within)."""
    root = tmp_path_factory.mktemp("bounded")
    cosine = {"objective": "cosine"}
    probe = run(
        root,
        "tune",
        str(_study(root / "probe", {"accept_int8_decay": 1.0, "budget_confidence": 0.95}, cosine)),
        env=WIDE,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    trial = _summary(root / "probe")["trials"][0]
    decay, bound = trial["decay"], trial["decay_bound"]
    assert decay < bound, trial
    budget = (decay + bound) / 2
    runs = {}
    for name, confidence in (("bound", 0.95), ("point", None)):
        search = {"accept_int8_decay": budget, "budget_confidence": confidence}
        runs[name] = run(root, "tune", str(_study(root / name, search, cosine)), env=WIDE)
    return {"root": root, "probe": probe, "budget": budget, **runs}


def test_budget_confidence_judges_by_the_upper_bound(bounded: dict[str, Any]) -> None:
    root, budget = bounded["root"], bounded["budget"]
    result = bounded["bound"]
    assert result.returncode == NO_TRIAL_WITHIN_BUDGET, result.stderr[-3000:]
    summary = _summary(root / "bound")
    trial = summary["trials"][0]
    assert trial["decay"] <= budget < trial["decay_bound"] and trial["within_budget"] is False
    assert summary["budget_confidence"] == 0.95 and "one-sided 95 % interval" in summary["budget_rule"]
    line = next(x for x in result.stderr.splitlines() if x.strip().startswith("#0"))
    assert f"bound {trial['decay_bound']:+.4f} over" in line, line
    assert result.stdout.strip().splitlines()[-1].startswith("no trial within budget")

    point = bounded["point"]  # the same trial and budget, judged by the point estimate
    assert point.returncode == 0, point.stderr[-3000:]
    trial = _summary(root / "point")["trials"][0]
    assert trial["decay"] <= budget and trial["within_budget"] is True and trial["decay_bound"] is None


def test_the_interval_is_shown_wherever_the_decay_is(bounded: dict[str, Any]) -> None:
    root, result = bounded["root"], bounded["bound"]
    trial = _summary(root / "bound")["trials"][0]
    low, high = trial["decay_ci"]
    assert low <= trial["decay"] <= high
    line = next(x for x in result.stderr.splitlines() if x.strip().startswith("#0"))  # the live display
    assert f"decay {trial['decay']:+.4f} [{low:+.4f}, {high:+.4f}]" in line, line
    row = next(x for x in result.stdout.splitlines() if "│" in x and "strategy:mse" in x)
    assert f"{low:+.4f} .. {high:+.4f}" in row and f"{trial['decay_bound']:+.4f}" in row, row
    best = next(x for x in result.stdout.splitlines() if x.startswith("best:"))
    assert f"[{low:+.4f}, {high:+.4f}]" in best, best
    last = result.stdout.strip().splitlines()[-1]
    assert f"[{low:+.4f}, {high:+.4f}]" in last, last
    report = (root / "bound" / "out" / "report.html").read_text()
    assert f"{low:+.4f} .. {high:+.4f}" in report and "one-sided 95 % interval" in report


@pytest.mark.parametrize("value", ["1.5", "0.3", "1", "high", ".nan", "true"])
def test_an_invalid_budget_confidence_is_one_error_line(tmp_path: Path, value: str) -> None:
    config = _study(tmp_path, {})
    config.write_text(config.read_text().replace("search:\n", f"search:\n  budget_confidence: {value}\n"))
    result = run(tmp_path, "check", str(config))
    assert_one_error(result, 2, "search.budget_confidence", "0.95")
