"""A disk that fills at each step of a first ``tune``, then has room again: the first run ends with
one error line and exit status 2, and the same command run again finishes (exit 0), saying in at
most one line what it made again (issue 21, item 5: recoverable stores).

The calibration cache, the output folder, the study database (``study.db``) and the MLflow store
(``mlflow.db`` and ``mlartifacts/``) all live on a small tmpfs (root only). Its size decides the step
at which the first run finds the disk full. The KiB in use on it as each step of this study begins
(measured by polling the tmpfs during a run of this config with room to spare):

====  =============================================================================
KiB   step (what it writes)
====  =============================================================================
0     the output folder's lock (4 KiB)
4     the prepared model in the cache (``prepared-*.onnx``, 28 KiB, staged first)
40    the FP32 statistics in the cache (``stats-*.npz``, 3,072 KiB)
3112  the FP32 reference outputs in the cache (``fp32-*/``, 8 KiB)
3120  the study database (made in ``.study.db.*.tmp``, 116 KiB, then renamed into place)
3236  the trial's rows, then the best trial's outputs (``model.int8.onnx`` staged, 52 KiB)
3288  the study's last rows in ``study.db`` (this process's worker record), the summary and
      report (8 KiB), while MLflow's process opens its store
3296  MLflow's first migrations (``mlflow.db``, 1 MiB with its journal)
4308  MLflow's runs and artifacts (``mlartifacts/``, 170 KiB)
====  =============================================================================

Each case checks what the first run left, so a drift in these sizes fails here, not silently.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.test_faults import _mounted_tmpfs, _study, assert_one_error, run

pytestmark = pytest.mark.integration  # every test here starts a process

#: The lines a run prints when it finds and repairs what an earlier run left.
RECOVERY = re.compile(
    r"made again|rebuilt|half-written|interrupted run|writing the outputs of trial|stale lock|unreadable lock"
)


@dataclass(frozen=True)
class Step:
    """A tmpfs size, the step of the first run that fills it, and what the first run leaves."""

    size: str
    step: str
    error: str  # in the first run's one error line
    left: Callable[[Path], bool]  # what the disk holds after the first run (it shows the step)


def _cache(disk: Path, pattern: str) -> bool:
    return any((disk / "cache").glob(pattern))


STEPS = [
    Step(
        "24k", "prepared model", "cache: no space left on the device", lambda d: not _cache(d, "prepared-*")
    ),
    Step(
        "1m",
        "statistics cache",
        "stats-",
        lambda d: _cache(d, "prepared-*") and not _cache(d, "stats-*"),
    ),
    Step(
        "3116k",
        "FP32 reference cache",
        "fp32-",
        lambda d: _cache(d, "stats-*") and not _cache(d, "fp32-*"),
    ),
    Step(
        "3180k",
        "study database creation",
        "the study database",
        lambda d: _cache(d, "fp32-*") and not (d / "out" / "study.db").exists(),
    ),
    Step(
        "3270k",
        "best trial's outputs",
        "no space left on the device",
        lambda d: (d / "out" / "study.db").exists() and not (d / "out" / "model.int8.onnx").exists(),
    ),
    Step(
        "3292k",
        "study's last rows",
        "the study database sqlite:///",
        lambda d: (
            (d / "out" / "model.int8.onnx").exists() and not (d / "out" / "study_summary.json").exists()
        ),
    ),
    Step(
        "3400k",
        "MLflow's first migration",
        "the MLflow store: database or disk is full",
        lambda d: (d / "out" / "study_summary.json").exists() and not (d / "out" / "mlartifacts").exists(),
    ),
    Step(
        "4330k",
        "MLflow's runs and artifacts",
        "the MLflow store: database or disk is full",
        lambda d: (d / "out" / "mlflow.db").exists(),
    ),
]


def _runs(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as connection:
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@pytest.mark.parametrize("step", STEPS, ids=[s.step for s in STEPS])
def test_a_disk_that_fills_at_each_step_of_the_first_run(tmp_path: Path, step: Step) -> None:
    disk = tmp_path / "disk"
    with _mounted_tmpfs(disk, f"size={step.size}") as mounted:
        if not mounted:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        config = _study(
            tmp_path,
            output={"directory": str(disk / "out")},
            calibration={"cache_dir": str(disk / "cache")},
        )
        cwd, temp = tmp_path / "cwd", tmp_path / "tmp"  # MLflow's temporary files: not on the disk
        cwd.mkdir()
        temp.mkdir()
        first = run(cwd, "tune", str(config), env={"TMPDIR": str(temp)})
        line = assert_one_error(first, 2, step.error)
        listing = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if "mlartifacts/" not in str(p))
        assert step.left(disk), (step.step, line, listing)

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # room again
        again = run(cwd, "tune", str(config), env={"TMPDIR": str(temp)})
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Traceback" not in again.stderr and "autoquant: error" not in again.stderr
        said = [text for text in again.stderr.splitlines() if RECOVERY.search(text)]
        print(f"\n{step.size} ({step.step}): first run: {line}\n  the rerun says: {said or 'nothing'}")
        assert len(said) <= 1, said
        if step.size == "3400k":  # MLflow's store was left half-made: it says so
            assert said and "MLflow: the store" in said[0] and "rebuilt" in said[0], said
        out = disk / "out"
        import onnxruntime as ort

        ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
        assert (out / "study_summary.json").is_file() and (out / "report.html").is_file()
        assert _runs(out / "mlflow.db") > 0
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
        assert leftovers == [], leftovers


def test_a_kill_while_the_study_database_is_made(tmp_path: Path) -> None:
    """SIGKILL while Optuna makes its tables (in ``.study.db.*.tmp``, about half a second): no
    ``study.db`` is left half-made, and the rerun removes the temporary file and finishes."""
    config = _study(tmp_path, tracking={"enabled": False})
    out = tmp_path / "out"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "autoquant", "tune", str(config)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline and not list(out.glob(".study.db.*.tmp")):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode != -signal.SIGKILL or (out / "study.db").exists():
        pytest.skip("the kill did not land while the study database was being made (a busy machine)")
    assert list(out.glob(".study.db.*.tmp"))  # the kill's leftover, and no study.db
    again = run(cwd, "tune", str(config))
    assert again.returncode == 0, again.stderr[-3000:]
    said = [text for text in again.stderr.splitlines() if RECOVERY.search(text)]
    rebuilt = [text for text in said if "stale lock" not in text]  # the kill left its lock too
    assert len(rebuilt) == 1, said
    assert f"{out}: removed 1 half-written file(s) of an interrupted run (.study.db." in rebuilt[0], said
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert (out / "study_summary.json").is_file()
