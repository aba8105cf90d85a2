"""Every latency figure names the load average it was measured at; a busy machine (FP32 timings
spread above BUSY_TOLERANCE) is said so in one WARNING line."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from autoquant.cli._display import best_latency_line, busy_warning, latency_line, load_text, summary_table
from autoquant.evaluation import BUSY_TOLERANCE, LatencyTimer, is_busy
from autoquant.search import TrialOutcome, TuneResult
from tests.cli.test_cli import run, run_process
from tests.helpers import digits_study

LOAD = re.compile(r"load (\d+\.\d|n/a)")


def _result(tolerance: float, fp32_load: float | None, int8_load: float | None) -> TuneResult:
    best = TrialOutcome(
        0, "strategy:mse", {}, 0.99, 0.01, None, (), 1.0, True,
        latencies={"1": 1.0}, speedups={"1": 1.5}, load_average=int8_load,
    )  # fmt: skip
    return TuneResult(
        "s", "sqlite://", 1.0, 0.02, best, (best,), 0, Path("out"),
        latency_tolerance=tolerance, fp32_latency={"1": 1.5}, fp32_load_average=fp32_load,
    )  # fmt: skip


def test_the_busy_rule_and_the_load_text() -> None:
    assert not is_busy(BUSY_TOLERANCE) and is_busy(BUSY_TOLERANCE + 0.01) and not is_busy(None)
    assert load_text(1.234) == "load 1.2" and load_text(None) == "load n/a"
    quiet = _result(0.05, 0.7, 0.9)
    assert busy_warning(quiet) is None
    assert "(FP32 at load 0.7, INT8 at load 0.9)" in best_latency_line(quiet)
    assert "(load 0.7)" in latency_line(quiet)
    busy = busy_warning(_result(0.4, 5.25, 6.0))
    assert busy is not None and busy.startswith("WARNING: the machine is busy")
    assert "load 5.2" in busy and "spread 40%" in busy and "uncertain" in busy


def test_a_study_of_an_older_version_prints_load_n_a() -> None:
    old = _result(0.05, None, None)
    assert "(FP32 at load n/a, INT8 at load n/a)" in best_latency_line(old)
    console = Console(file=io.StringIO(), width=400, force_terminal=False, color_system=None)
    console.print(summary_table(old))
    assert "(load n/a)" in console.file.getvalue()


@pytest.mark.integration
def test_tune_names_the_load_average_of_its_latencies(tmp_path: Path) -> None:
    config = digits_study(tmp_path, search={"n_trials": 1})
    result = run_process("tune", str(config))
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("latency at batch 1 on")]
    assert len(LOAD.findall(line)) == 2, line
    summary = json.loads((tmp_path / "out" / "study_summary.json").read_text())
    ceiling = 100.0 * (os.cpu_count() or 1)
    assert 0.0 <= summary["latency"]["fp32_load_average"] < ceiling
    assert 0.0 <= summary["best"]["load_average"] < ceiling
    assert summary["latency"]["busy"] == (summary["latency_tolerance"] > BUSY_TOLERANCE)


@pytest.mark.integration
def test_tune_warns_once_when_the_fp32_timings_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LatencyTimer, "tolerance", lambda self, budget_s: 0.5)
    config = digits_study(tmp_path, search={"n_trials": 1})
    result = run("tune", str(config))
    assert result.returncode == 0, result.stderr
    warnings = [x for x in result.stdout.splitlines() if x.startswith("WARNING: the machine is busy")]
    assert len(warnings) == 1 and "FP32 timings spread 50%" in warnings[0], result.stdout
    assert LOAD.search(warnings[0])
    assert json.loads((tmp_path / "out" / "study_summary.json").read_text())["latency"]["busy"] is True
