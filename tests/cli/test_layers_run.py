"""A compute layer counts as INT8 only when onnxruntime's optimized graph runs it in an integer
kernel: a model whose three ConvTranspose layers onnxruntime runs in float (it has no INT8
ConvTranspose kernel on the CPU) reports those three as FP32 layers, in the trial line, the final
table, study_summary.json and the report, although its QDQ model wraps them all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

from autoquant.engine import int8_kernels
from tests.cli.test_faults import run
from tests.fixtures.deconv_digits import DECONVS, deconv_digits_model
from tests.helpers import small_digits_study


@pytest.mark.integration
def test_tune_counts_the_conv_transpose_layers_onnxruntime_runs_in_float(tmp_path: Path) -> None:
    model = deconv_digits_model(tmp_path / "deconv_digits.onnx")
    config = small_digits_study(
        tmp_path / "study.yaml",
        {"model": {"path": str(model)}, "output": {"directory": str(tmp_path / "out")}},
        {"tracking": {"enabled": False}, "search": {"accept_int8_decay": 0.2}},
    )
    result = run(tmp_path, "tune", str(config), env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr

    out = tmp_path / "out"
    written = onnx.load(out / "model.int8.onnx")
    # the QDQ model wraps every ConvTranspose (its weight is stored in 8 bits) ...
    deconvs = [n for n in written.graph.node if n.op_type == "ConvTranspose"]
    assert sorted(n.name for n in deconvs) == sorted(DECONVS)
    assert all(n.input[1].endswith("_DequantizeLinear_Output") for n in deconvs)
    # ... and onnxruntime runs all three in float (the count `autoquant quantize` prints)
    assert int8_kernels(written).get("ConvTranspose") == len(DECONVS)

    summary = json.loads((out / "study_summary.json").read_text())
    assert summary["trials"]
    for trial in summary["trials"]:
        assert set(DECONVS) <= set(trial["fp32_compute_layers"])
    assert "onnxruntime runs in FP32 (optimised graph)" in summary["fp32_compute_layers"]
    best = summary["best"]
    number = best["number"]
    count = len(best["fp32_compute_layers"])
    assert count >= len(DECONVS)

    (trial_line,) = [x for x in result.stderr.splitlines() if x.lstrip().startswith(f"#{number} ")]
    lines = result.stdout.splitlines()
    assert f"fp32 layers {count} " in trial_line
    assert any("FP32 layers run" in x for x in lines)  # the table's column
    caption = " ".join(x.strip() for x in lines)
    assert "compute layers onnxruntime runs in FP32 (optimised graph" in caption
    (row,) = [x for x in lines if x.startswith("│") and x.split("│")[1].strip().rstrip("*") == str(number)]
    assert row.split("│")[6].strip() == str(count)

    report = (out / "report.html").read_text(encoding="utf-8")
    assert "FP32 compute layers run (optimised graph)" in report
    assert "runs in FP32 in its optimised graph" in report
    assert os.path.getsize(out / "model.int8.onnx") > 0


@pytest.mark.integration
def test_quantize_names_the_compute_layers_onnxruntime_runs_in_float(tmp_path: Path) -> None:
    model = deconv_digits_model(tmp_path / "deconv_digits.onnx")
    config = small_digits_study(
        tmp_path / "study.yaml",
        {"model": {"path": str(model)}, "output": {"directory": str(tmp_path / "out")}},
        {"tracking": {"enabled": False}},
    )
    result = run(tmp_path, "quantize", str(config), env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    (row,) = [x for x in result.stdout.splitlines() if "FP32 layers run" in x]
    written = onnx.load(tmp_path / "out" / "model.int8.onnx")
    compute = [n for n in written.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    assert f"3 of {len(compute)} compute layers onnxruntime runs in FP32 (optimised graph): " in row
    assert ", ".join(DECONVS) in row
    (kernels,) = [x for x in result.stdout.splitlines() if "INT8 kernels" in x]
    assert "QLinearConv x3" in kernels and "QGemm x1" in kernels
