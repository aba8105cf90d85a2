"""The command line: help, version, the quantize command and one-line errors with exit status 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from autoquant import __version__
from tests.conftest import DIGITS, write_config


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "autoquant", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("autoquant: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_help_lists_the_commands_and_version() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("quantize", "evaluate", "analyze", "tune", "status", "check", "templates"):
        assert command in result.stdout
    assert run("--version").stdout.strip() == f"autoquant {__version__}"
    assert "--output" in run("quantize", "--help").stdout


def test_templates_command_prints_the_seed_strings() -> None:
    result = run("templates")
    assert result.returncode == 0
    assert "vgg_tensorflow: resize_side=256;crop_h=224, crop_w=224;" in result.stdout
    assert "ssd_inception_tensorflow:" in result.stdout and "ssd_vgg_tensorflow:" in result.stdout


def test_quantize_writes_outputs_and_reuses_statistics(digits_config: Path, tmp_path: Path) -> None:
    first = run("quantize", str(digits_config))
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    assert (out / "model.int8.onnx").is_file() and (out / "calibration_table.json").is_file()
    second = run("quantize", str(digits_config), "--output", str(tmp_path / "other"))
    assert second.returncode == 0 and (tmp_path / "other" / "model.int8.onnx").is_file()
    third = run("quantize", str(digits_config))
    assert "statistics cache hit" in third.stderr and "skipping the FP32 pass" in third.stderr


def _study(tmp_path: Path, model: str, source: str, extra: str = "") -> Path:
    return write_config(
        tmp_path,
        f"model: {{path: {model}}}\ncalibration:\n  source: {source}\n{extra}output: {{directory: out}}\n",
    )


def test_missing_model(tmp_path: Path) -> None:
    config = _study(tmp_path, "nope.onnx", str(DIGITS / "data" / "calib.npy"))
    assert_one_line_error(run("quantize", str(config)), "nope.onnx", "cannot read the model")


def test_corrupt_model(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x0a\x03not an onnx model at all")
    config = _study(tmp_path, "bad.onnx", str(DIGITS / "data" / "calib.npy"))
    assert_one_line_error(run("quantize", str(config)), "bad.onnx", "not a valid ONNX model")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "model:\n  path: [m.onnx\ncalibration: {}\n")
    assert_one_line_error(run("quantize", str(config)), f"{config}:", "YAML syntax error")


def test_unknown_key(tmp_path: Path) -> None:
    config = _study(tmp_path, str(DIGITS / "model.onnx"), "x.npy", "quantization: {methd: kl}\n")
    assert_one_line_error(run("quantize", str(config)), f"{config}:4:", "quantization.methd: unknown key")


def _image_folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for png in sorted((DIGITS / "data" / "images").glob("*.png"))[:4]:
        shutil.copy(png, images / png.name)
    (images / "test_002.png").write_bytes(b"\x89PNG truncated")
    return images


PREPROCESS = "  data_preprocess_str: 'gray=True;resize_h=32,resize_w=32;scale=0.00392156862745098'\n"


def test_undecodable_image_stops_or_is_skipped(tmp_path: Path) -> None:
    images = _image_folder(tmp_path)
    stop = _study(tmp_path, str(DIGITS / "model.onnx"), str(images), PREPROCESS)
    assert_one_line_error(run("quantize", str(stop)), "test_002.png", "cannot decode")
    assert not (tmp_path / "out" / "model.int8.onnx").exists()
    skip = _study(tmp_path, str(DIGITS / "model.onnx"), str(images), PREPROCESS + "  on_decode_error: skip\n")
    result = run("quantize", str(skip))
    assert result.returncode == 0, result.stderr
    assert "test_002.png" in result.stderr and (tmp_path / "out" / "model.int8.onnx").is_file()


def test_data_shape_mismatch(tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((4, 1, 28, 28), np.float32))
    config = _study(tmp_path, str(DIGITS / "model.onnx"), str(tmp_path / "small.npy"))
    error = assert_one_line_error(run("quantize", str(config)), "small.npy", "(1, 28, 28)", "(1, 32, 32)")
    assert "input 'input'" in error
    assert not (tmp_path / "out" / "model.int8.onnx").exists()


def test_empty_calibration_set(tmp_path: Path) -> None:
    (tmp_path / "ImageList.txt").write_text("# no images yet\n")
    config = _study(tmp_path, str(DIGITS / "model.onnx"), str(tmp_path / "ImageList.txt"), PREPROCESS)
    assert_one_line_error(run("quantize", str(config)), "ImageList.txt", "empty")


def test_labels_count_differs_from_images(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("1\n2\n3\n")
    config = _study(
        tmp_path,
        str(DIGITS / "model.onnx"),
        str(DIGITS / "data" / "calib.npy"),
        f"test:\n  source: {DIGITS / 'data' / 'test.npy'}\n  labels: labels.txt\n",
    )
    assert_one_line_error(run("check", str(config)), "labels.txt", "3 labels for 500 samples")


def test_check_prints_the_plan(digits_config: Path) -> None:
    result = run("check", str(digits_config))
    assert result.returncode == 0, result.stderr
    assert "200 samples" in result.stdout and "500 samples" in result.stdout and "/stem/Conv" in result.stdout


def test_evaluate_and_analyze_commands(digits_config: Path, tmp_path: Path) -> None:
    missing = run("evaluate", str(digits_config))
    assert_one_line_error(missing, "no INT8 model", "autoquant quantize")
    assert run("quantize", str(digits_config)).returncode == 0
    result = run("evaluate", str(digits_config))
    assert result.returncode == 0, result.stderr
    assert "FP32 score" in result.stdout and "0.9940" in result.stdout and "95 % CI" in result.stdout
    assert "latency, batch 1" in result.stdout
    result = run("analyze", str(digits_config))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {"sensitivity.json", "sensitivity.csv", "report.html"} <= {p.name for p in out.iterdir()}
    assert "/blocks/blocks.0/dw/Conv" in result.stdout
