"""Faults through the real command line: each ends with one error line, the right exit status and
nothing left behind (README: "Bad input ends with one line naming the file, key or sample, and exit
status 2; nothing half-written is left behind").

Every command runs in a subprocess from an empty working directory, which must stay empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import DIGITS, small_digits_study

pytestmark = pytest.mark.integration  # every test here starts a process

COMMANDS = ("check", "quantize", "tune")


def _study(tmp_path: Path, **sections: dict) -> Path:
    """A small digits study in tmp_path/study.yaml, writing into tmp_path/out; ``sections`` update it."""
    defaults = {
        "search": {"mode": "fast", "accept_int8_decay": 1.0},
        "output": {"directory": str(tmp_path / "out")},
    }
    return small_digits_study(tmp_path / "study.yaml", defaults, sections)


def run(
    cwd: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "autoquant", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def assert_one_error(result: subprocess.CompletedProcess, status: int, *fragments: str) -> str:
    """Exit ``status``, no traceback, exactly one ``autoquant: error:`` line holding every fragment."""
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("autoquant: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- the output folder --------------------------------------------------------------------------------


def test_an_output_path_that_is_a_file(tmp_path: Path, cwd: Path) -> None:
    config = _study(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for command in ("quantize", "tune", "analyze"):
        result = run(cwd, command, str(config), "--output", str(afile))
        assert_one_error(result, 2, f"{afile}: the output folder is a file")
    assert afile.read_text() == "mine"


@contextlib.contextmanager
def _mounted_tmpfs(target: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs at ``target`` (root only); yields whether it worked."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_read_only_output_folder(tmp_path: Path, cwd: Path) -> None:
    folder = tmp_path / "readonly"
    with _mounted_tmpfs(folder, "ro,size=1m") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root ignores permission bits and cannot mount a read-only tmpfs here")
            folder.chmod(0o555)
        config = _study(tmp_path, output={"directory": str(folder / "out")})
        for command in ("quantize", "tune"):
            assert_one_error(run(cwd, command, str(config)), 2, str(folder), "choose another --output")
        assert _listing(folder) == []


def test_a_full_disk(tmp_path: Path, cwd: Path) -> None:
    """A 160 KB tmpfs fills up during the study: the write fails in one line and leaves nothing
    half-written (the best-so-far files are written whole or not at all)."""
    folder = tmp_path / "small"
    with _mounted_tmpfs(folder, "size=160k") as mounted:
        if not mounted:
            pytest.skip(
                "cannot mount a small tmpfs here (needs root); test_write_faults_are_one_line covers ENOSPC"
            )
        config = _study(tmp_path, output={"directory": str(folder / "out")}, tracking={"enabled": False})
        result = run(cwd, "tune", str(config))
        assert_one_error(result, 2, "no space left on the device")
        left = _listing(folder)
        assert not [name for name in left if "staging" in name], left
        model = folder / "out" / "model.int8.onnx"
        if model.exists():  # a best-so-far model written before the disk filled up is whole
            import onnxruntime as ort

            ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
            assert (folder / "out" / "best_config.yaml").is_file()


def test_write_faults_are_one_line(tmp_path: Path) -> None:
    """ENOSPC, EROFS and EACCES wherever they arise (here at the outputs' write layer, and as
    SQLite's own message) become one line with the file and what to do."""
    import errno

    from autoquant.errors import write_fault

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.int8.onnx"))
    wrapped = RuntimeError("while writing")
    wrapped.__cause__ = full
    assert (
        write_fault(wrapped)
        == f"{tmp_path / 'model.int8.onnx'}: no space left on the device; free some space or choose another --output"
    )
    assert "read-only file system" in write_fault(OSError(errno.EROFS, "Read-only file system", "x"))
    sqlite = Exception("(sqlite3.OperationalError) database or disk is full")
    assert write_fault(sqlite).startswith("the study or tracking database: database or disk is full")
    assert write_fault(ValueError("a bug")) is None


def test_write_fault_at_the_write_layer_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs' staging write fails with ENOSPC: exit 2, one line, the output folder unchanged."""
    import errno

    from typer.testing import CliRunner

    from autoquant.cli._app import app
    from autoquant.engine import _outputs as outputs

    config = _study(tmp_path, tracking={"enabled": False})

    class FullDisk:
        """``os`` as the outputs module sees it, except that moving a file into place fails."""

        def __getattr__(self, name: str):
            return getattr(os, name)

        def replace(self, source: str, target: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(outputs, "os", FullDisk())
    result = CliRunner().invoke(app, ["quantize", str(config)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("autoquant: error:")]
    assert len(errors) == 1 and "model.int8.onnx: no space left on the device" in errors[0], result.output
    assert _listing(tmp_path / "out") == []


# --- leftovers ------------------------------------------------------------------------------------------


def test_failures_leave_nothing_behind(tmp_path: Path, cwd: Path) -> None:
    """A model error or a data error (found in the first batch) leaves no output folder, no MLflow
    store, no cache entry; ``check`` never writes, not even the cache."""
    cache = tmp_path / "cache"
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((4, 1, 7, 7), np.float32))
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"\x0a\x03not onnx at all")
    cases = {
        "data": (
            {"calibration": {"source": str(short), "cache_dir": str(cache)}},
            "short.npy[0]: input 'input' has shape",
        ),
        "model": (
            {"model": {"path": str(bad_model)}, "calibration": {"cache_dir": str(cache)}},
            "not a valid ONNX model",
        ),
    }
    for name, (sections, message) in cases.items():
        config = _study(tmp_path, **sections)
        for command in COMMANDS:
            assert_one_error(run(cwd, command, str(config)), 2, message)
            assert not (tmp_path / "out").exists(), (name, command, _listing(tmp_path / "out"))
            assert _listing(cache) == [], (name, command)
            assert sorted(p.name for p in tmp_path.iterdir()) == [
                "bad.onnx",
                "cwd",
                "short.npy",
                "study.yaml",
            ]
    good = _study(tmp_path, calibration={"cache_dir": str(cache)})
    result = run(cwd, "check", str(good))
    assert result.returncode == 0, result.stderr
    assert _listing(cache) == [] and not (tmp_path / "out").exists()


def test_a_successful_tune_writes_only_into_its_output_and_cache_folders(tmp_path: Path, cwd: Path) -> None:
    config = _study(tmp_path, calibration={"cache_dir": str(tmp_path / "cache")})
    temp = tmp_path / "tmp"  # the system's temporary folder, for the study and MLflow's process
    temp.mkdir()
    result = run(cwd, "tune", str(config), env={"TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "cwd", "out", "study.yaml", "tmp"]
    # Nothing of autoquant's or MLflow's is left there (MLflow's db_init_lock file was). Only
    # onnxruntime's own telemetry stamp, written by `import onnxruntime` in any program, may be.
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []
    listing = _listing(tmp_path / "out")
    assert "mlflow.db" in listing and any(name.startswith("mlartifacts/") for name in listing)


# --- data that do not match the model -------------------------------------------------------------------


def test_check_refuses_what_tune_would_refuse(tmp_path: Path, cwd: Path) -> None:
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        cv2.imwrite(str(images / f"{i}.png"), np.full((32, 32), 40 * i, np.uint8))
    (images / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # the last image, not in the first batch
    ints = tmp_path / "ints.npy"
    np.save(ints, (np.load(DIGITS / "data" / "calib.npy")[:40] * 16).astype(np.int64))
    cases = {
        "shape": (
            {"model": {"inputs": {"input": [1, 1, 16, 16]}}},
            "has shape (1, 32, 32), the model expects (1, 16, 16)",
        ),
        "corrupt image": (
            {
                "calibration": {
                    "source": str(images),
                    "batch_size": 2,
                    "data_preprocess_str": "gray=True;layout=NCHW",
                }
            },
            "5.png",
        ),
        "int64 data": (
            {"calibration": {"source": str(ints)}},
            "ints.npy[0]: input 'input' is int64 data, the model expects float32",
        ),
    }
    for name, (sections, message) in cases.items():
        config = _study(tmp_path, **sections)
        assert_one_error(run(cwd, "check", str(config)), 2, message)
        assert not (tmp_path / "out").exists(), name


# --- interrupts and concurrent runs ---------------------------------------------------------------------


SLOW_SOURCE = '''
import time
from pathlib import Path

import numpy as np

def samples():
    """The digits calibration images, one every 50 ms; a marker file says the pass has begun."""
    Path(__file__).with_name("started").touch()
    for image in np.load("{calib}")[:200]:
        time.sleep(0.05)
        yield image
'''


def test_ctrl_c_before_the_first_trial(tmp_path: Path, cwd: Path) -> None:
    process, _ = _start_slow_tune(tmp_path, cwd)
    time.sleep(0.5)  # inside the statistics pass
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_one_error(result, 130, "interrupted")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (tmp_path / "cache").glob("stats-*")] == []


def _start_slow_tune(tmp_path: Path, cwd: Path) -> tuple[subprocess.Popen, Path]:
    """A ``tune`` whose calibration pass takes about 10 s; returns once the pass has begun."""
    source = tmp_path / "slow.py"
    source.write_text(SLOW_SOURCE.format(calib=DIGITS / "data" / "calib.npy"))
    config = _study(
        tmp_path,
        calibration={
            "source": f"{source}:samples",
            "calib_iterations": 200,
            "cache_dir": str(tmp_path / "cache"),
        },
        tracking={"enabled": False},
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "autoquant", "tune", str(config)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    (tmp_path / "started").unlink()
    return process, config


def test_a_second_tune_on_the_same_output_refuses_at_once(tmp_path: Path, cwd: Path) -> None:
    first, config = _start_slow_tune(tmp_path, cwd)
    try:
        began = time.monotonic()
        second = run(cwd, "tune", str(config))
        assert time.monotonic() - began < 30  # at once: no calibration, no FP32 pass
        assert_one_error(
            second, 2, f"is already being tuned by process {first.pid} on", "wait for it or stop it"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed process left its lock: it is stale, and the next run takes it over and finishes.
    assert (tmp_path / "out" / ".autoquant.lock").is_file()
    third = run(cwd, "tune", str(config))
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"taking over the stale lock of process {first.pid}" in third.stderr
    assert not (tmp_path / "out" / ".autoquant.lock").exists()


# --- search.timeout inside a phase ----------------------------------------------------------------------


def test_a_timeout_inside_the_scale_phase_keeps_and_confirms_its_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline passes while the per-layer scales are searched (a clock that jumps past it
    after the third tensor): the phase stops between evaluations and one trial confirms the
    scales found so far; nothing is thrown away."""
    import optuna
    from typer.testing import CliRunner

    from autoquant.cli import _display as display
    from autoquant.cli._app import app
    from autoquant.search import _open as study

    clock = {"now": 0.0}
    monkeypatch.setattr(study.time, "monotonic", lambda: clock["now"])
    step = display.LiveReporter.step

    def jump_after_three(self, done: int, total: int, unit: str) -> None:
        if unit == "tensors" and done == 3:  # the scale phase's bar (other phases have bars too)
            clock["now"] = 1e9
        step(self, done, total, unit)

    monkeypatch.setattr(display.LiveReporter, "step", jump_after_three)
    config = _study(
        tmp_path,
        search={"mode": "full", "accept_int8_decay": 0.0, "n_trials": 1, "timeout": 3600, "data_limit": 4},
        tracking={"enabled": False},
    )
    result = CliRunner().invoke(app, ["tune", str(config)])
    assert result.exit_code == 0, result.output
    stored = optuna.load_study(study_name="out", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    scales = [t for t in stored.trials if t.user_attrs.get("key") == "scales"]
    assert len(scales) == 1 and scales[0].state == optuna.trial.TrialState.COMPLETE
    progress = stored.user_attrs["scales_progress"]
    assert progress["next"] == 3  # three tensors searched, their scales kept
    assert scales[0].user_attrs["layer_scales"] == progress["scales"]
    assert (tmp_path / "out" / "study_summary.json").is_file()


def test_a_stop_inside_the_scale_phase_is_resumed_where_it_stopped(tmp_path: Path) -> None:
    import autoquant
    from autoquant.config import load_config
    from autoquant.search import NullReporter

    class Watch(NullReporter):
        def __init__(self, stop_at: int | None) -> None:
            self.stop_at, self.stopped, self.first = stop_at, False, None

        def step(self, done: int, total: int, unit: str) -> None:
            if unit != "tensors":  # the scale phase's bar (other phases have bars too)
                return
            self.first = done if self.first is None else self.first
            self.stopped = self.stopped or done == self.stop_at

    config = load_config(
        _study(
            tmp_path,
            search={"mode": "full", "accept_int8_decay": 0.0, "n_trials": 1, "data_limit": 4},
            tracking={"enabled": False},
        )
    )
    first = Watch(stop_at=2)
    result = autoquant.tune(config, reporter=first, stop=lambda: first.stopped)
    assert "scales" not in [o.key for o in result.trials]  # stopped unconfirmed
    second = Watch(stop_at=None)
    result = autoquant.tune(config, reporter=second)
    assert second.first == 2  # went on from the third tensor
    assert "scales" in [o.key for o in result.trials]


# --- outputs that are not batch-first -----------------------------------------------------------------


def _time_major_digits(path: Path, outer: bool = False) -> Path:
    """The digits model with its logits repeated over 3 time steps, time-major: (3, batch, 10), as
    recognition models write CTC logits. ``outer`` adds a (batch, batch) output instead, whose
    batch axis cannot be told."""
    import onnx
    from onnx import helper

    model = onnx.load(DIGITS / "model.onnx")
    graph = model.graph
    logits = graph.output[0].name
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([3, 1, 1], np.int64), "reps"))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    graph.node.extend(
        [
            helper.make_node("Unsqueeze", [logits, "axis0"], ["logits_1"], name="time/unsqueeze"),
            helper.make_node("Tile", ["logits_1", "reps"], ["seq"], name="time/tile"),
        ]
    )
    outputs = [helper.make_tensor_value_info("seq", onnx.TensorProto.FLOAT, [3, None, 10])]
    if outer:
        graph.node.append(helper.make_node("MatMul", [logits, "logits_t"], ["outer"], name="outer"))
        graph.node.append(
            helper.make_node("Transpose", [logits], ["logits_t"], name="transpose", perm=[1, 0])
        )
        outputs.append(helper.make_tensor_value_info("outer", onnx.TensorProto.FLOAT, [None, None]))
    del graph.output[:]
    graph.output.extend(outputs)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, path)
    return path


USER_TOP1 = """
import numpy as np

class FirstStepTop1:
    '''Top-1 of the first time step, for (batch, time, classes) outputs.'''

    needs_labels = True

    def __init__(self):
        self.hits = []

    def update(self, outputs, labels, reference):
        self.hits += list(outputs[0][:, 0].argmax(-1) == np.asarray(labels))

    def score(self, indices=None):
        hits = np.asarray(self.hits, float)
        return float(hits.mean() if indices is None else hits[indices].mean())
"""


def test_a_time_major_output_is_scored_per_sample(tmp_path: Path, cwd: Path) -> None:
    """(seqlen, batch, classes) logits at a batch size that divides the test set: the scores are
    those of the batch-first digits model (top-1 0.994 over its 500 test images)."""
    model = _time_major_digits(tmp_path / "time_major.onnx")
    objective = tmp_path / "first_step.py"
    objective.write_text(USER_TOP1)
    config = _study(
        tmp_path,
        model={"path": str(model)},
        test={"test_iterations": 500, "batch_size": 20, "objective": f"{objective}:FirstStepTop1"},
        tracking={"enabled": False},
    )
    result = run(cwd, "tune", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "study_summary.json").read_text())
    assert summary["fp32_score"] == pytest.approx(0.994)
    assert summary["best"]["score"] >= 0.97 and summary["best"]["decay"] <= 0.02
    assert "outputs that are not batch-first: seq (axis 1)" in result.stderr


def test_an_output_whose_batch_axis_cannot_be_told(tmp_path: Path, cwd: Path) -> None:
    model = _time_major_digits(tmp_path / "outer.onnx", outer=True)
    config = _study(tmp_path, model={"path": str(model)}, test={"objective": "cosine"})
    assert_one_error(
        run(cwd, "tune", str(config)),
        2,
        "output 'outer': cannot tell its batch axis (shape (1, 1) for 1 sample, (2, 2) for 2)",
        "model.output_batch_axes",
    )
    assert not (tmp_path / "out").exists()
    config = _study(
        tmp_path,
        model={"path": str(model), "output_batch_axes": {"outer": 0}},
        test={"objective": "cosine"},
        tracking={"enabled": False},
    )
    assert run(cwd, "tune", str(config)).returncode == 0
