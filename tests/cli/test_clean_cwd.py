"""Every command leaves the current directory as it found it, on success and on failure: files go
only to the output and cache folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from autoquant.cli._app import app
from tests.helpers import DIGITS, write_config


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _config(tmp_path: Path, model: Path, calib: Path, tracking: bool = True) -> Path:
    tmp_path.mkdir(exist_ok=True)
    return write_config(
        tmp_path,
        f"""
model: {{path: {model}}}
calibration: {{source: {calib}, calib_iterations: 40, batch_size: 20}}
test: {{source: {DIGITS}/data/test.npy, labels: {DIGITS}/data/test_labels.txt, test_iterations: 100}}
search: {{mode: fast, accept_int8_decay: 1.0}}
output: {{directory: {tmp_path}/out}}
tracking: {{enabled: {str(tracking).lower()}, uri: sqlite:///{tmp_path}/mlflow.db}}
""",
    )


@pytest.fixture()
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.slow
def test_successful_commands_write_nothing_in_the_current_directory(tmp_path: Path, empty_cwd: Path) -> None:
    config = _config(tmp_path, DIGITS / "model.onnx", DIGITS / "data" / "calib.npy")
    runner = CliRunner()
    for command in ("check", "quantize", "evaluate", "tune", "status"):
        result = runner.invoke(app, [command, str(config)])
        assert result.exit_code == 0, (command, result.output)
        assert _listing(empty_cwd) == [], command
    assert (tmp_path / "out" / "model.int8.onnx").is_file()


def test_failing_commands_write_nothing_in_the_current_directory(tmp_path: Path, empty_cwd: Path) -> None:
    bad_model = tmp_path / "bad.onnx"
    model = onnx.load(DIGITS / "model.onnx")
    model.graph.node[3].op_type = "NoSuchOp"
    onnx.save(model, bad_model)
    short_calib = tmp_path / "wrong_shape.npy"
    np.save(short_calib, np.zeros((4, 3, 7, 7), np.float32))
    runner = CliRunner()
    for name, config in {
        "unloadable model": _config(tmp_path / "a", bad_model, DIGITS / "data" / "calib.npy"),
        "wrong calibration shape": _config(tmp_path / "b", DIGITS / "model.onnx", short_calib),
    }.items():
        for command in ("check", "quantize", "tune"):
            result = runner.invoke(app, [command, str(config)])
            assert result.exit_code == 2, (name, command, result.output)
            assert _listing(empty_cwd) == [], (name, command)
