"""Which compute layers onnxruntime runs in an integer kernel, read from its optimized graph of
real QDQ models (the digits CNN, the ConvTranspose classifier of tests/fixtures)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from autoquant.config import QuantizationConfig, load_config
from autoquant.engine import compute_layers, is_integer_kernel, layers_in_float, session_and_optimized
from autoquant.search import pipeline
from tests.fixtures.deconv_digits import DECONVS, deconv_digits_model
from tests.helpers import small_digits_study

#: Float compute op types onnxruntime's CPU provider may run after its fusions (NCHWc Conv, ...).
FLOAT_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")


def _run(calibrated: pipeline.Calibrated, **choices) -> tuple[tuple[str, ...], Counter, tuple[str, ...]]:
    """Quantize with ``choices``; the layers found in float, the optimized graph's op types, and
    the model's compute layers."""
    result = pipeline.quantize(calibrated, QuantizationConfig(**choices))
    _, optimized = session_and_optimized(result.model)
    graph = calibrated.graph
    layers = compute_layers(graph, [n.name for n in graph.nodes])
    ops = Counter(n.op_type for n in optimized.graph.node)
    return layers_in_float(result.model, optimized, layers), ops, layers


def _float_compute(ops: Counter) -> int:
    return sum(ops[op] for op in FLOAT_COMPUTE)


def test_integer_kernels_are_told_from_float_ones() -> None:
    for op in (
        "QLinearConv",
        "QGemm",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
    ):
        assert is_integer_kernel(op), op
    for op in ("Conv", "ConvTranspose", "FusedConv", "MatMul", "Gemm", "QuantizeLinear", "DequantizeLinear"):
        assert not is_integer_kernel(op), op


def test_the_digits_cnn_runs_every_compute_layer_in_int8(calibrated_digits) -> None:
    """onnxruntime fuses every Conv and the Gemm of the asymmetric digits model into QLinearConv
    and QGemm (renamed ``<name>_token_N`` by its layout transformers): none runs in float."""
    in_float, ops, layers = _run(calibrated_digits[1])
    assert len(layers) == 10 and _float_compute(ops) == 0 and ops["QLinearConv"] + ops["QGemm"] == 10
    assert in_float == ()


def test_a_layer_kept_in_fp32_counts_as_it_runs(calibrated_digits) -> None:
    """The first Conv kept in FP32 runs in float (its input is the float model input). An inner
    Conv kept in FP32 between quantized tensors runs in INT8 all the same: onnxruntime quantizes
    its float weight itself and fuses it into a QLinearConv, so it counts as INT8."""
    calibrated = calibrated_digits[1]
    layers = compute_layers(calibrated.graph, [n.name for n in calibrated.graph.nodes])
    in_float, ops, _ = _run(calibrated, nodes_to_exclude=[layers[0]])
    assert _float_compute(ops) == 1 and ops["QLinearConv"] == 8
    assert in_float == (layers[0],)
    in_float, ops, _ = _run(calibrated, nodes_to_exclude=[layers[3]])
    assert _float_compute(ops) == 0 and ops["QLinearConv"] == 9
    assert in_float == ()


def test_the_float_count_matches_the_optimized_graph_with_int8_activations(calibrated_digits) -> None:
    """With int8 activations onnxruntime leaves two depthwise convs in float (see test_quantize):
    as many layers are found in float as the optimized graph has float compute kernels."""
    in_float, ops, _ = _run(calibrated_digits[1], activation_scheme="symmetric")
    assert len(in_float) == _float_compute(ops) >= 1


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_transpose_layers_run_in_float(tmp_path: Path, per_channel: bool) -> None:
    model = deconv_digits_model(tmp_path / "deconv_digits.onnx")
    config = load_config(
        small_digits_study(
            tmp_path / "study.yaml", {"model": {"path": str(model)}}, {"tracking": {"enabled": False}}
        )
    ).replace(output={"directory": tmp_path / "out"})
    in_float, ops, layers = _run(pipeline.calibrate(config, use_cache=False), per_channel=per_channel)
    assert len(layers) == 7 and ops["ConvTranspose"] == len(DECONVS) == 3
    assert in_float == DECONVS
