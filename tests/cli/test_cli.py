"""The command line: help, version, the quantize command and one-line errors with exit status 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoquant import __version__
from tests.helpers import DIGITS, digits_study, write_config


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in this process with Click's runner (stdout and stderr apart)."""
    from typer.testing import CliRunner

    from autoquant.cli._app import app

    result = CliRunner(env=env).invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI in a process of its own, as a user would: onnxruntime's C++ log
    writes to the process's stderr directly, which only a real process shows."""
    return subprocess.run(
        [sys.executable, "-m", "autoquant", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
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


@pytest.mark.integration
def test_quantize_writes_outputs_and_reuses_statistics(digits_config: Path, tmp_path: Path) -> None:
    first = run("quantize", str(digits_config))
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    assert (out / "model.int8.onnx").is_file() and (out / "calibration_table.json").is_file()
    second = run("quantize", str(digits_config), "--output", str(tmp_path / "other"))
    assert second.returncode == 0 and (tmp_path / "other" / "model.int8.onnx").is_file()
    third = run("quantize", str(digits_config))
    assert "statistics cache hit" in third.stderr and "skipping the FP32 pass" in third.stderr


@pytest.mark.integration
def test_quantize_with_bias_correction_names_the_layers_corrected(tmp_path: Path) -> None:
    config = digits_study(tmp_path, quantization={"bias_correction": True})
    result = run("quantize", str(config))
    assert result.returncode == 0, result.stderr
    # digits: 9 Conv and 1 Gemm, all quantized; 200 calibration samples, the first 32 measured
    assert "│ bias correction     │ 10 layers, on 32 calibration samples" in result.stdout
    assert "QLinearConv x9" in result.stdout and "QGemm x1" in result.stdout


def _study(tmp_path: Path, model: str, source: str, extra: str = "") -> Path:
    return write_config(
        tmp_path,
        f"model: {{path: {model}}}\ncalibration:\n  source: {source}\n{extra}output: {{directory: out}}\n",
    )


def test_missing_model_or_a_folder_is_named_by_the_config_check(tmp_path: Path) -> None:
    config = _study(tmp_path, "nope.onnx", str(DIGITS / "data" / "calib.npy"))
    for command in ("check", "quantize", "tune"):
        assert_one_line_error(
            run(command, str(config)), "study.yaml:1: model.path:", "nope.onnx: no such file"
        )
    (tmp_path / "folder.onnx").mkdir()
    config = _study(tmp_path, "folder.onnx", str(DIGITS / "data" / "calib.npy"))
    assert_one_line_error(run("tune", str(config)), "folder.onnx: is a folder, not a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx", "study.yaml"]


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


@pytest.mark.integration
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


@pytest.mark.integration
def test_check_prints_the_plan(digits_config: Path) -> None:
    result = run("check", str(digits_config))
    assert result.returncode == 0, result.stderr
    assert "200 samples" in result.stdout and "500 samples" in result.stdout and "/stem/Conv" in result.stdout


@pytest.mark.integration
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


DEPENDENCY_NOISE = ("[W:onnxruntime", "Removing initializer", "Traceback", "Expected bias")


@pytest.mark.integration
def test_quantize_is_quiet_and_names_the_cpu(digits_config: Path, tmp_path: Path) -> None:
    result = run_process("quantize", str(digits_config), env={"AUTOQUANT_TARGET_ISA": "avx2"})
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if any(n in line for n in DEPENDENCY_NOISE)]
    assert "x86_64 avx2 (no VNNI)" in result.stdout and "true (auto" in result.stdout
    # The written config rebuilds the same model on any CPU: it names the decision, not auto.
    written = (tmp_path / "out" / "config.resolved.yaml").read_text()
    assert "reduce_range: true" in written


def _noisy_model(path: Path, constants: int = 12) -> None:
    """A model that makes every kind of noise: ``constants`` constant tensors (an autoquant warning
    each), an unused initializer (onnxruntime's C++ log) and a Conv bias that is not an initializer
    (onnxruntime's quantizer logs a warning on the root logger)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    inits = [
        numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero"),
        numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "one"),
        numpy_helper.from_array(np.full((1, 1, 1, 1), 0.5, np.float32), "w"),
        numpy_helper.from_array(np.array([1], np.int64), "bias_shape"),
        numpy_helper.from_array(np.ones(3, np.float32), "unused"),
    ]
    nodes = [helper.make_node("Mul", ["x", "zero"], ["t0"], name="mul")]
    nodes += [
        helper.make_node("Add", [f"t{i - 1}", "one"], [f"t{i}"], name=f"add{i}")
        for i in range(1, constants + 1)
    ]
    nodes += [
        helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", keepdims=0),
        helper.make_node("Reshape", ["mean", "bias_shape"], ["bias"], name="reshape"),
        helper.make_node("Conv", ["x", "w", "bias"], ["conv"], name="conv"),
        helper.make_node("Add", ["conv", f"t{constants}"], ["y"], name="out"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "noisy", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.integration
def test_noise_is_folded_and_dependencies_summarised(tmp_path: Path) -> None:
    _noisy_model(tmp_path / "noisy.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(16, 1, 4, 4)).astype(np.float32))
    config = _study(tmp_path, "noisy.onnx", "calib.npy")
    result = run("quantize", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert not [line for line in lines if any(n in line for n in DEPENDENCY_NOISE)], result.stderr
    folded = [line for line in lines if "is constant" in line]  # tensor t_i is the constant i
    assert folded == [
        "WARNING: 12 x tensor … is constant (1 to 12) over the calibration data: 't1', 't2', 't3', 't4', 't5', ..."
    ]
    assert "1 warning from dependencies (onnxruntime 1); --verbose shows them" in lines
    verbose = run_process("--verbose", "quantize", str(config))  # warnings come once a process
    assert verbose.returncode == 0, verbose.stderr
    assert sum("is constant" in line for line in verbose.stderr.splitlines()) == 12
    assert "Expected bias 'bias' to be an initializer" in verbose.stderr
    assert "from dependencies" not in verbose.stderr


def test_verbose_errors_show_their_cause(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x0a\x03not an onnx model at all")
    config = _study(tmp_path, "bad.onnx", str(DIGITS / "data" / "calib.npy"))
    result = run("--verbose", "quantize", str(config))
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("autoquant: error:")
