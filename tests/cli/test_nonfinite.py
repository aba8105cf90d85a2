"""NaN and infinity in the data, through the real command line (issue 21, item 4).

One NaN pixel in one test sample, or one infinite value in one calibration sample, is refused by
every command that reads the sample, in one line naming the file, the sample and the key that
allows it. With ``allow_nonfinite`` set, ``tune`` runs, and its warnings count the values and name
the sample.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.cli.test_faults import _study, assert_one_error, run
from tests.helpers import DIGITS

pytestmark = pytest.mark.integration  # every test here starts a process

#: The study of ``_study`` reads 40 calibration samples in batches of 20 and 100 test samples in
#: batches of 50: the bad samples below lie in the first batch (TEST_FIRST) or a later one.
TEST_FIRST, TEST_LATER, CALIB_LATER = 17, 73, 33


def _with(tmp_path: Path, name: str, source: Path, index: int, value: float) -> Path:
    """A copy of the digits data set ``source`` with one pixel of sample ``index`` set to ``value``."""
    arrays = np.load(source)
    assert arrays.dtype == np.float32  # the model's input dtype: the value reaches the model as it is
    arrays[index, 0, 3, 4] = value
    path = tmp_path / name
    np.save(path, arrays)
    return path


def _config(tmp_path: Path, name: str, **sections: dict) -> Path:
    """``_study`` under another name, writing into its own output folder, without MLflow."""
    output = {"directory": str(tmp_path / f"out_{name}")}
    path = _study(tmp_path, output=output, tracking={"enabled": False}, **sections)
    return path.rename(tmp_path / f"{name}.yaml")


def test_nan_in_one_test_sample_is_refused_by_every_command(tmp_path: Path, cwd: Path) -> None:
    clean = _config(tmp_path, "clean")
    assert run(cwd, "quantize", str(clean)).returncode == 0
    int8 = tmp_path / "out_clean" / "model.int8.onnx"
    for index in (TEST_FIRST, TEST_LATER):
        data = _with(tmp_path, f"test_nan{index}.npy", DIGITS / "data" / "test.npy", index, np.nan)
        config = _config(tmp_path, f"nan{index}", test={"source": str(data)})
        # quantize scores nothing: it reads the first test batch only, as a check of the data
        commands = ("check", "quantize", "tune") if index == TEST_FIRST else ("check", "tune")
        runs = [run(cwd, command, str(config)) for command in commands]
        runs.append(run(cwd, "evaluate", str(config), "--int8", str(int8)))
        for result in runs:
            line = assert_one_error(result, 2, f"{data}[{index}]", "NaN", "test.allow_nonfinite: true")
            assert "calibration" not in line
        assert not (tmp_path / f"out_nan{index}" / "model.int8.onnx").exists()


def test_infinity_in_one_calibration_sample_is_refused(tmp_path: Path, cwd: Path) -> None:
    data = _with(tmp_path, "calib_inf.npy", DIGITS / "data" / "calib.npy", CALIB_LATER, -np.inf)
    config = _config(tmp_path, "inf", calibration={"source": str(data)})
    for command in ("check", "quantize", "tune"):
        result = run(cwd, command, str(config))
        line = assert_one_error(result, 2, f"{data}[{CALIB_LATER}]", "calibration.allow_nonfinite: true")
        assert "infinite" in line and "NaN" in line, line
    assert not (tmp_path / "out_inf" / "model.int8.onnx").exists()
    assert run(cwd, "check", str(_config(tmp_path, "clean"))).returncode == 0  # the same study, clean


def test_allowed_nonfinite_data_tunes_with_counted_and_named_warnings(tmp_path: Path, cwd: Path) -> None:
    calib = _with(tmp_path, "calib_inf.npy", DIGITS / "data" / "calib.npy", CALIB_LATER, np.inf)
    test = _with(tmp_path, "test_nan.npy", DIGITS / "data" / "test.npy", TEST_FIRST, np.nan)
    config = _config(
        tmp_path,
        "allowed",
        calibration={"source": str(calib), "allow_nonfinite": True},
        test={"source": str(test), "allow_nonfinite": True},
    )
    assert yaml.safe_load(config.read_text())["test"]["allow_nonfinite"] is True
    result = run(cwd, "tune", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "autoquant: error" not in result.stderr
    assert (tmp_path / "out_allowed" / "model.int8.onnx").is_file()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    # the data sets: one bad sample each, its value counted, the sample named
    calib_line = [w for w in warnings if str(calib) in w]
    assert len(calib_line) == 1, warnings
    assert "1 of 40 samples" in calib_line[0] and "(0 NaN, 1 infinite values)" in calib_line[0]
    assert calib_line[0].endswith(f"calibration.allow_nonfinite allows: {calib}[{CALIB_LATER}]")
    test_line = [w for w in warnings if str(test) in w]
    assert len(test_line) == 1, warnings
    assert "1 of 100 samples" in test_line[0] and "(1 NaN, 0 infinite values)" in test_line[0]
    assert test_line[0].endswith(f"test.allow_nonfinite allows: {test}[{TEST_FIRST}]")
    # the statistics: the per-tensor warning, folded, shows numbers where it showed "…"
    tensors = [w for w in warnings if "infinite values in the calibration data" in w]
    assert len(tensors) == 1, warnings
    counts = re.search(r"ignoring (\d+(?: to \d+)?) NaN and (\d+(?: to \d+)?) infinite values", tensors[0])
    assert counts is not None, tensors[0]
    assert counts.group(2).split(" to ")[-1] != "0"  # the input tensor holds the one infinity
    assert "'input'" in tensors[0]
