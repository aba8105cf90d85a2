"""Quantize and outputs stages on the digits model: options, INT8 kernels, accuracy, atomic outputs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from autoquant.config import QuantizationConfig, load_config
from autoquant.engine import (
    activation_quant_params,
    compute_thresholds,
    int8_kernels,
    quantize_model,
    write_outputs,
)
from autoquant.engine._statistics import HistogramCollector, Statistics
from autoquant.engine.graph import prepare_model
from autoquant.errors import QuantizationError
from autoquant.hardware import host_isa
from autoquant.search import pipeline
from tests.helpers import top1


@pytest.fixture(autouse=True)
def cpu_without_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accuracy figures that hold on every x86-64 CPU: ``reduce_range: auto`` decides for a CPU
    without VNNI (7-bit weights), whose integer results are exact on VNNI and non-VNNI CPUs alike."""
    monkeypatch.setenv("AUTOQUANT_TARGET_ISA", "avx2")


@pytest.fixture(scope="module")
def calibrated(calibrated_digits) -> pipeline.Calibrated:
    return calibrated_digits[1]


def _qlinear_convs(model: onnx.ModelProto) -> int:
    return int8_kernels(model).get("QLinearConv", 0)


@pytest.mark.parametrize("method", ["max", "percentile", "kl", "symkl", "jsd", "mse"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_every_method_and_granularity_quantizes_the_digits_model(
    calibrated: pipeline.Calibrated, digits_test_data: tuple, method: str, per_channel: bool
) -> None:
    x, y = digits_test_data
    result = pipeline.quantize(calibrated, QuantizationConfig(method=method, per_channel=per_channel))
    onnx.checker.check_model(result.model, full_check=True)  # a valid ONNX file, nodes sorted
    kernels = int8_kernels(result.model)
    assert kernels.get("QLinearConv", 0) >= 7 and kernels.get("QGemm", 0) == 1 and "Gemm" not in kernels
    # With int8 activations onnxruntime keeps the Relu before each residual branch, and the two
    # stride-1 depthwise convs reading it stay float (its own quantize_static gives the same graph).
    assert kernels.get("Conv", 0) <= 2
    # FP32 top-1 is 0.994; every INT8 variant must stay within 3 points (7-bit weights: 0.970 to
    # 0.996). Without reduce_range a CPU without VNNI saturates: 0.940 to 0.948 for per-channel
    # kl, symkl and jsd on AVX2.
    assert result.reduce_range
    assert top1(result.model, x, y) >= 0.994 - 0.03


def test_asymmetric_activations_give_an_all_int8_graph(calibrated: pipeline.Calibrated) -> None:
    result = pipeline.quantize(calibrated, QuantizationConfig(activation_scheme="asymmetric"))
    kernels = int8_kernels(result.model)
    assert kernels["QLinearConv"] == 9 and kernels["QLinearAdd"] == 2 and kernels["QGemm"] == 1
    assert not {"Conv", "Add", "Gemm", "Relu"} & set(kernels)


def test_default_int8_model_is_within_two_points_of_fp32(
    calibrated: pipeline.Calibrated, digits_test_data
) -> None:
    x, y = digits_test_data
    fp32 = top1(calibrated.graph.prepared_path, x, y)
    int8 = top1(pipeline.quantize(calibrated, QuantizationConfig()).model, x, y)  # 7-bit weights: 0.976
    assert fp32 == pytest.approx(0.994)
    assert int8 >= fp32 - 0.02


@pytest.mark.skipif(not host_isa().vnni, reason="8-bit weights saturate int16 sums on CPUs without VNNI")
def test_default_int8_model_on_a_vnni_cpu_is_within_one_point_of_fp32(
    calibrated: pipeline.Calibrated, digits_test_data, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTOQUANT_TARGET_ISA")
    x, y = digits_test_data
    result = pipeline.quantize(calibrated, QuantizationConfig())
    assert not result.reduce_range
    assert top1(result.model, x, y) >= 0.994 - 0.01  # 0.988


def _int8_weights(model: onnx.ModelProto) -> np.ndarray:
    """Every int8 weight value of a QDQ model (the inputs of its weight DequantizeLinear nodes)."""
    inits = {t.name: t for t in model.graph.initializer}
    weights = [
        numpy_helper.to_array(inits[n.input[0]]).ravel()
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    return np.concatenate(weights)


@pytest.mark.parametrize("activations", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_reduce_range_auto_follows_the_target_cpu(
    calibrated: pipeline.Calibrated, monkeypatch: pytest.MonkeyPatch, activations: str, per_channel: bool
) -> None:
    config = QuantizationConfig(activation_scheme=activations, per_channel=per_channel)
    decisions = {}
    for isa in ("avx512_vnni", "avx_vnni", "avx2", "avx512", "arm64"):
        monkeypatch.setenv("AUTOQUANT_TARGET_ISA", isa)
        result = pipeline.quantize(calibrated, config)
        decisions[result.cpu_isa] = result.reduce_range
        weights = _int8_weights(result.model)
        if result.reduce_range:  # 7-bit weights: onnxruntime's reduced int8 range is [-64, 64]
            assert weights.min() >= -64 and weights.max() <= 64, isa
        else:
            assert np.abs(weights.astype(np.int32)).max() == 127, isa
    assert decisions == {
        "x86_64 avx512_vnni": False,
        "x86_64 avx_vnni": False,
        "x86_64 avx2 (no VNNI)": True,
        "x86_64 avx512 (no VNNI)": True,
        "aarch64": False,
    }


def test_explicit_reduce_range_ignores_the_cpu(calibrated: pipeline.Calibrated, monkeypatch) -> None:
    monkeypatch.setenv("AUTOQUANT_TARGET_ISA", "avx512_vnni")
    on = pipeline.quantize(calibrated, QuantizationConfig(reduce_range=True))
    assert on.reduce_range and np.abs(_int8_weights(on.model).astype(np.int32)).max() <= 64
    monkeypatch.setenv("AUTOQUANT_TARGET_ISA", "avx2")
    assert not pipeline.quantize(calibrated, QuantizationConfig(reduce_range=False)).reduce_range


def test_exclusions_keep_nodes_in_fp32(calibrated: pipeline.Calibrated) -> None:
    base = _qlinear_convs(pipeline.quantize(calibrated, QuantizationConfig()).model)
    first = pipeline.quantize(calibrated, QuantizationConfig(first_layer_fp32=True))
    assert first.fp32_nodes == ("/stem/Conv",) and _qlinear_convs(first.model) == base - 1
    excluded = pipeline.quantize(
        calibrated,
        QuantizationConfig(nodes_to_exclude=["/blocks/blocks.1/dw/Conv", "/blocks/blocks.1/pw/Conv"]),
    )
    assert _qlinear_convs(excluded.model) == base - 2
    ranking = ["/blocks/blocks.3/pw/Conv", "/blocks/blocks.2/dw/Conv", "/stem/Conv"]
    top2 = pipeline.quantize(calibrated, QuantizationConfig(fp32_layers=2), ranking=ranking)
    assert top2.fp32_nodes == tuple(ranking[:2])


def test_bad_exclusions_are_named(calibrated: pipeline.Calibrated) -> None:
    with pytest.raises(QuantizationError, match="not quantizable nodes of model.onnx: conv_typo"):
        pipeline.quantize(calibrated, QuantizationConfig(nodes_to_exclude=["conv_typo"]))
    with pytest.raises(QuantizationError, match="fp32_layers=3 needs a sensitivity ranking"):
        pipeline.quantize(calibrated, QuantizationConfig(fp32_layers=3))


def test_activation_schemes_and_unsigned_input(calibrated: pipeline.Calibrated) -> None:
    sym_cfg = QuantizationConfig(method="max", activation_scheme="symmetric")
    ranges = compute_thresholds(calibrated.stats, sym_cfg)
    symmetric = quantize_model(calibrated.graph, ranges, sym_cfg)
    params = activation_quant_params(symmetric.model)
    relu = "/Relu_output_0"
    assert params[relu].dtype == "int8" and params[relu].zero_point == 0
    # onnxruntime's symmetric int8 maps [-T, T] onto [-127, 127].
    assert params[relu].scale == pytest.approx(ranges[relu].threshold / 127, rel=1e-6)
    asym_cfg = QuantizationConfig(method="max", activation_scheme="asymmetric")
    asymmetric = quantize_model(calibrated.graph, compute_thresholds(calibrated.stats, asym_cfg), asym_cfg)
    assert activation_quant_params(asymmetric.model)[relu].dtype == "uint8"
    unsigned_cfg = QuantizationConfig(method="max", activation_scheme="symmetric", first_input_unsigned=True)
    unsigned = quantize_model(calibrated.graph, ranges, unsigned_cfg)
    params = activation_quant_params(unsigned.model)
    assert params["input"].dtype == "uint8" and params[relu].dtype == "int8"
    ort.InferenceSession(unsigned.model.SerializeToString())


def test_op_type_selection(calibrated: pipeline.Calibrated) -> None:
    compute = pipeline.quantize(calibrated, QuantizationConfig(op_types="compute")).model
    kernels = int8_kernels(compute)
    assert "QLinearGlobalAveragePool" not in kernels and kernels["QLinearConv"] >= 7
    everything = int8_kernels(pipeline.quantize(calibrated, QuantizationConfig(op_types="all")).model)
    assert "QLinearGlobalAveragePool" in everything


def _concat_model(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), f"w{i}") for i in (0, 1)
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w1"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["c"], name="concat", axis=1),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = 7
    return model


def _stats_for(graph, seed: int = 0) -> Statistics:
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    from autoquant.engine._statistics import run_statistics_pass

    tensors, n = run_statistics_pass(graph.load(), list(graph.activations), feeds, 1024)
    return Statistics("k", tensors, n)


def test_opset_12_model_with_per_channel_weights_loads(tmp_path: Path) -> None:
    path = tmp_path / "opset12.onnx"
    onnx.save(_concat_model(12), path)
    graph = prepare_model(path, tmp_path / "cache")
    assert graph.opset >= 13
    config = QuantizationConfig(per_channel=True, method="max", bins=1024)
    result = quantize_model(graph, compute_thresholds(_stats_for(graph), config), config)
    session = ort.InferenceSession(result.model.SerializeToString())
    out = session.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})[0]
    assert out.shape == (1, 8, 8, 8) and np.isfinite(out).all()


def test_concat_quantization_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "concat.onnx"
    onnx.save(_concat_model(13), path)
    graph = prepare_model(path, tmp_path / "cache")
    stats = _stats_for(graph)
    on = QuantizationConfig(method="max", bins=1024)
    off = QuantizationConfig(method="max", bins=1024, enable_concat_quantize=False)
    with_concat = quantize_model(graph, compute_thresholds(stats, on), on).model
    without = quantize_model(graph, compute_thresholds(stats, off), off).model
    assert "QLinearConcat" in int8_kernels(with_concat)
    assert "QLinearConcat" not in int8_kernels(without) and "Concat" in int8_kernels(without)


def test_outputs_are_written_together(calibrated: pipeline.Calibrated, tmp_path: Path) -> None:
    from tests.helpers import DIGITS_CONFIG

    config = load_config(DIGITS_CONFIG)
    result = pipeline.quantize(
        calibrated, QuantizationConfig(first_layer_fp32=True, activation_scheme="symmetric")
    )
    written = write_outputs(result, config, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [
            "model.int8.onnx",
            "calibration_table.json",
            "calibration.cache",
            "fp32_nodes.txt",
            "config.resolved.yaml",
        ]
    )
    assert written.fp32_nodes.read_text().splitlines() == ["/stem/Conv"]
    ort.InferenceSession(str(written.model))
    table = json.loads(written.table.read_text())
    assert "dtype" not in table["input"]  # the first layer is FP32, so its input is not quantized
    relu = table["/Relu_output_0"]
    assert relu["method"] == "kl" and relu["dtype"] == "int8" and relu["zero_point"] == 0
    assert relu["scale"] == pytest.approx(relu["threshold"] / 127, rel=1e-6)
    lines = written.trt_cache.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"  # TensorRT's name for KL calibration
    mse = pipeline.quantize(calibrated, QuantizationConfig(method="mse"))
    assert (
        write_outputs(mse, config, tmp_path / "mse")
        .trt_cache.read_text()
        .startswith("TRT-8601-MinMaxCalibration\n")
    )
    name, hex_scale = lines[1].rsplit(": ", 1)
    assert struct.unpack(">f", bytes.fromhex(hex_scale))[0] == pytest.approx(table[name]["threshold"] / 127)
    # The written config names the reduce_range the model was built with, not auto.
    assert config.quantization.reduce_range == "auto" and result.reduce_range
    assert load_config(written.config) == config.replace(quantization={"reduce_range": True})


def test_failed_write_leaves_nothing(calibrated: pipeline.Calibrated, tmp_path: Path) -> None:
    from tests.helpers import DIGITS_CONFIG

    result = pipeline.quantize(calibrated, QuantizationConfig())
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    broken.graph.node[0].op_type = "NoSuchOp"
    out = tmp_path / "out"
    with pytest.raises(QuantizationError, match="onnxruntime cannot load the quantized model"):
        write_outputs(type(result)(broken, result.fp32_nodes, result.ranges), load_config(DIGITS_CONFIG), out)
    assert not out.exists() or list(out.iterdir()) == []


def test_thresholds_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    from tests.helpers import DIGITS_CONFIG

    base = load_config(DIGITS_CONFIG).replace(output={"directory": tmp_path})
    results = []
    for batch in (1, 8):
        config = base.replace(calibration={"batch_size": batch, "calib_iterations": 40})
        calibrated = pipeline.calibrate(config, use_cache=False)
        results.append(compute_thresholds(calibrated.stats, QuantizationConfig()))
    assert results[0] == results[1]


def test_second_run_skips_the_fp32_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoquant.engine import _statistics as statistics
    from tests.helpers import DIGITS_CONFIG

    config = load_config(DIGITS_CONFIG).replace(
        output={"directory": tmp_path}, calibration={"calib_iterations": 20}
    )
    first = pipeline.calibrate(config)
    assert not first.stats.from_cache

    def no_pass(*args, **kwargs):
        raise AssertionError("the FP32 pass ran again")

    monkeypatch.setattr(statistics, "run_statistics_pass", no_pass)
    second = pipeline.calibrate(config)
    assert second.stats.from_cache and second.stats.key == first.stats.key
    for name, s in first.stats.tensors.items():
        np.testing.assert_array_equal(second.stats.tensors[name].histogram, s.histogram)
    # Other data gives another key, hence a new pass.
    other = config.replace(calibration={"calib_iterations": 21})
    with pytest.raises(AssertionError, match="ran again"):
        pipeline.calibrate(other)


def test_histogram_collector_matches_direct_feed_statistics() -> None:
    values = np.linspace(-3, 5, 101, dtype=np.float32)
    collector = HistogramCollector("x", 1024)
    collector.update(values)
    assert collector.result().maximum == 5.0


def test_depthwise_per_channel_weights(calibrated: pipeline.Calibrated) -> None:
    result = pipeline.quantize(calibrated, QuantizationConfig(depthwise_per_channel=True))
    inits = {t.name: t for t in result.model.graph.initializer}
    scale_count = {
        node.input[0].removesuffix("_quantized"): int(np.prod(inits[node.input[1]].dims))
        for node in result.model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized")
    }
    fp32 = calibrated.graph.load()
    dims = {t.name: list(t.dims) for t in fp32.graph.initializer}
    depthwise = {n.name for n in calibrated.graph.nodes if n.depthwise}
    assert len(depthwise) == 4
    for node in fp32.graph.node:
        if node.op_type == "Conv":
            weight = node.input[1]
            expected = dims[weight][0] if node.name in depthwise else 1  # one scale per output channel
            assert scale_count[weight] == expected, node.name
