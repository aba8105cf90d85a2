"""``quantization.equalize`` through the command line: ``autoquant quantize`` and ``evaluate`` on the
digits example, per-tensor weights (the case equalization is for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.cli.test_cli import run
from tests.helpers import digits_study


def _int8_weights(model: Path) -> dict[str, np.ndarray]:
    return {
        t.name: numpy_helper.to_array(t)
        for t in onnx.load(model).graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    }


@pytest.mark.integration  # the quantize command starts processes (onnxruntime probes the CPU)
def test_quantize_and_evaluate_an_equalized_model(tmp_path: Path) -> None:
    cache = {"cache_dir": str(tmp_path / "cache")}
    plain = digits_study(
        tmp_path,
        "plain.yaml",
        calibration=cache,
        quantization={"per_channel": False},
        output={"directory": tmp_path / "plain"},
    )
    equalized = digits_study(
        tmp_path,
        "equalized.yaml",
        calibration=cache,
        quantization={"per_channel": False, "equalize": True},
        output={"directory": tmp_path / "equalized"},
    )
    first = run("quantize", str(plain))
    assert first.returncode == 0, first.stderr
    second = run("quantize", str(equalized))
    assert second.returncode == 0, second.stderr
    # Another prepared model, so the plain model's statistics are not reused.
    assert "cross-layer equalization" in second.stderr and "statistics cache hit" not in second.stderr
    assert len(list((tmp_path / "cache").glob("prepared-*.onnx"))) == 2
    ours, theirs = (
        _int8_weights(tmp_path / "equalized" / "model.int8.onnx"),
        _int8_weights(tmp_path / "plain" / "model.int8.onnx"),
    )
    assert ours.keys() == theirs.keys() and any(not np.array_equal(ours[k], theirs[k]) for k in ours)
    scored = run("evaluate", str(equalized))
    assert scored.returncode == 0, scored.stderr
    assert "decay (absolute)" in scored.stdout
