"""How a study ends on the real command line: no trial within the budget has an exit status of its
own, a last line naming the closest trial and a model nobody mistakes for a good one; pruned trials
are named as they finish and listed in the final table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from autoquant.cli._console import NO_TRIAL_WITHIN_BUDGET
from tests.cli.test_cli import run, run_process
from tests.helpers import digits_study

pytestmark = pytest.mark.integration  # every test here starts a process

GOOD, OVER = "model.int8.onnx", "model.over-budget.int8.onnx"


def _space(folder: Path) -> Path:
    """mse, then a percentile clipped at the median: the second is certainly over any budget
    once the first has completed, so it is pruned."""
    space = folder / "space.yaml"
    space.write_text(
        "parameters:\n  method: {choices: [mse, percentile]}\n"
        "  max_percentile: {choices: [0.5], when: {method: [percentile]}}\n"
        "strategies:\n  - {name: mse, method: mse}\n  - {name: clipped, method: percentile, max_percentile: 0.5}\n"
    )
    return space


def _tune(folder: Path, budget: float, *flags: str) -> subprocess.CompletedProcess:
    search = {"mode": "full", "accept_int8_decay": budget, "space": _space(folder), "n_trials": 1}
    config = digits_study(folder, search=search, test={"objective": "cosine"})
    return run_process("tune", str(config), *flags)


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A study whose budget nothing meets: a cosine decay of exactly 0."""
    folder = tmp_path_factory.mktemp("unreachable")
    return folder, _tune(folder, 0.0)


def _rows(table: str, key: str) -> list[list[str]]:
    """The cells of the summary table's rows that name ``key``."""
    rows = [line for line in table.splitlines() if f" {key} " in line and "│" in line]
    return [[cell.strip() for cell in row.strip("│ ").split("│")] for row in rows]


def test_no_trial_within_budget_exits_with_its_own_status(
    unreachable: tuple[Path, subprocess.CompletedProcess],
) -> None:
    folder, result = unreachable
    out = folder / "out"
    assert result.returncode == NO_TRIAL_WITHIN_BUDGET, result.stderr
    assert result.returncode not in (0, 1, 2, 130)
    summary = json.loads((out / "study_summary.json").read_text())
    best = summary["best"]
    assert summary["within_budget"] is False and best["within_budget"] is False
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("no trial within budget"), result.stdout
    for fragment in (f"trial {best['number']} ({best['key']})", f"{best['decay']:+.4f}", "budget 0.0", OVER):
        assert fragment in last, last
    assert (out / OVER).is_file() and not (out / GOOD).exists()
    assert summary["model"] == OVER
    marker = json.loads((out / "best_trial.json").read_text())
    assert marker["trial"] == best["number"] and marker["within_budget"] is False and marker["model"] == OVER


def test_the_exit_status_is_documented() -> None:
    for command in ("tune", "worker", "serve"):
        help_text = " ".join(run(command, "--help").stdout.split())
        assert f"{NO_TRIAL_WITHIN_BUDGET} no trial is" in help_text, help_text
    commands_doc = Path(__file__).parents[2] / "docs" / "commands.md"
    assert f"| {NO_TRIAL_WITHIN_BUDGET} |" in commands_doc.read_text()


def test_a_pruned_trial_is_named_as_it_finishes_and_in_the_table(
    unreachable: tuple[Path, subprocess.CompletedProcess],
) -> None:
    import optuna
    from optuna.trial import TrialState

    folder, result = unreachable
    study = optuna.load_study(study_name="out", storage=f"sqlite:///{folder / 'out' / 'study.db'}")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert any(t.user_attrs["key"] == "strategy:clipped" for t in pruned)
    for trial in pruned:
        key = trial.user_attrs["key"]
        lines = [line for line in result.stderr.splitlines() if f" {key} " in line]
        assert len(lines) == 1 and "pruned" in lines[0], result.stderr
        assert lines[0].split()[0] == f"#{trial.number}", lines[0]
        (row,) = _rows(result.stdout, key)
        assert row[0] == str(trial.number) and row[1] == key and row[-1] == "pruned", row


def test_a_later_run_within_budget_replaces_the_over_budget_model(
    unreachable: tuple[Path, subprocess.CompletedProcess],
) -> None:
    """The same output folder, a budget every trial meets: model.int8.onnx, and no over-budget
    file (last in this module: it starts the study afresh in the folder the others read)."""
    folder, _ = unreachable
    out = folder / "out"
    result = _tune(folder, 1.0, "--fresh")
    assert result.returncode == 0, result.stderr
    assert (out / GOOD).is_file() and not (out / OVER).exists()
    marker = json.loads((out / "best_trial.json").read_text())
    assert marker["within_budget"] is True and marker["model"] == GOOD
    assert json.loads((out / "study_summary.json").read_text())["model"] == GOOD
    assert "no trial within budget" not in result.stdout


def test_a_worker_ends_a_study_with_no_trial_within_budget_the_same_way(tmp_path: Path) -> None:
    """``autoquant worker`` on a journal file: the same status, last line and model name."""
    config = digits_study(
        tmp_path,
        search={"accept_int8_decay": 0.0},
        test={"objective": "cosine"},
        storage={"url": str(tmp_path / "study.log")},
    )
    result = run_process("worker", str(config))
    assert result.returncode == NO_TRIAL_WITHIN_BUDGET, result.stderr
    best = json.loads((tmp_path / "out" / "study_summary.json").read_text())["best"]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("no trial within budget") and f"trial {best['number']} ({best['key']})" in last
    assert (tmp_path / "out" / OVER).is_file() and not (tmp_path / "out" / GOOD).exists()
