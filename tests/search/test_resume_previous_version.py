"""A study written by an earlier autoquant resumes with this one.

tests/fixtures/previous_version_study/study.db is the Optuna storage of a full-mode digits study
that autoquant 0.1.0 (commit 6f6871b) wrote, and config.yaml beside it is the config it was
written with (README.md there). The test resumes it with two more sampled trials through the
command line. It uses only public interfaces (the ``autoquant tune`` command,
``autoquant.load_config`` and optuna), so it keeps testing the same thing when the modules move.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

import autoquant

pytestmark = pytest.mark.integration  # every test here starts a process

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "previous_version_study"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ADDED = 2  # sampled trials the resumed study adds


def _study(db: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def _stored(trial: FrozenTrial) -> tuple:
    """Everything a finished trial stores."""
    return (
        trial.number,
        trial.state,
        trial.params,
        trial.distributions,
        trial.value,
        trial.intermediate_values,
        trial.user_attrs,
        trial.datetime_start,
        trial.datetime_complete,
    )


def test_a_study_written_by_the_previous_version_resumes(tmp_path: Path) -> None:
    written = autoquant.load_config(FIXTURE / "config.yaml")
    name, n_trials = written.search.study_name, written.search.n_trials
    # The stored study is read from a copy of its own, so the committed file is never opened.
    shutil.copy(FIXTURE / "study.db", tmp_path / "before.db")
    before = _study(tmp_path / "before.db", name)
    old = before.trials
    assert old and all(t.state in FINISHED for t in old)
    old_keys = [t.user_attrs["key"] for t in old]
    assert {k for k in old_keys if k.startswith("sampled:")} == {f"sampled:{i}" for i in range(n_trials)}

    out = tmp_path / "study"
    out.mkdir()
    shutil.copy(FIXTURE / "study.db", out / "study.db")
    config = written.replace(
        output={"directory": out},
        calibration={"cache_dir": tmp_path / "cache"},  # recomputed: the stored fingerprint must match
        search={"n_trials": n_trials + ADDED},
    )
    (tmp_path / "resume.yaml").write_text(config.to_yaml())
    result = subprocess.run(
        [sys.executable, "-m", "autoquant", "tune", str(tmp_path / "resume.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    resumed = _study(out / "study.db", name)
    trials = resumed.trials
    # Resumed, not started over: every stored trial is kept as it was, nothing ran again.
    assert [_stored(t) for t in trials[: len(old)]] == [_stored(t) for t in old]
    assert resumed.user_attrs["fp32_score"] == before.user_attrs["fp32_score"]
    # The new trials come after the stored ones: the sampled slots the raised n_trials adds.
    new = trials[len(old) :]
    assert [t.user_attrs["key"] for t in new] == [f"sampled:{i}" for i in range(n_trials, n_trials + ADDED)]
    assert all(t.state in FINISHED for t in new)

    # The outputs, rebuilt from the study's best trial (the fixture has none).
    summary = json.loads((out / "study_summary.json").read_text())
    completed = [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert summary["study_name"] == name and summary["completed_trials"] == len(completed)
    assert sorted(t["number"] for t in summary["trials"]) == completed
    assert summary["best"]["number"] in completed
    model = onnx.load(out / "model.int8.onnx")
    onnx.checker.check_model(model)
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    # The MLflow parent run the old study names is not in the new store: a new one replaces it.
    assert (out / "mlflow.db").is_file()
    assert resumed.user_attrs["mlflow_parent_run_id"] != before.user_attrs["mlflow_parent_run_id"]
