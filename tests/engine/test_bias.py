"""Bias correction: each corrected bias moves by the mean output error of its layer, which the
test measures itself (onnxruntime for the quantized layer's input and output, numpy for the FP32
layer), and the corrected model still runs in onnxruntime's INT8 kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoquant.engine import Requantizer, compute_thresholds, correction_sites, int8_kernels, quantize_model
from autoquant.search import pipeline
from tests.helpers import digits_variant

SAMPLES = 48  # calibration.bias_correction_samples; the data hold 64


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    # Channels of very different sizes: per-tensor INT8 weights round the small ones coarsely.
    w1 = (
        rng.normal(size=(8, 3, 1, 1))
        * np.array([4.0, 0.05, 0.03, 1.0, 0.02, 2.0, 0.04, 0.01])[:, None, None, None]
    )
    return {
        "w1": w1.astype(np.float32),
        "b1": rng.normal(size=8).astype(np.float32),
        "w2": (rng.normal(size=(8, 6)) * np.array([3.0, 0.02, 0.05, 0.03, 1.0, 0.04])).astype(np.float32),
        "b2": (0.1 * rng.normal(size=6)).astype(np.float32),  # a fine grid for its INT8 constant
        "w3": (rng.normal(size=(4, 6)) * np.array([[2.5], [0.03], [0.05], [0.02]])).astype(np.float32),
    }


def _tiny_model(path: Path) -> dict[str, np.ndarray]:
    """Conv (with bias) -> Relu -> positions as rows -> MatMul + Add (3-D, not made a Gemm) ->
    mean over positions -> Gemm (no bias)."""
    weights = _weights()
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Reshape", ["r1", "rows"], ["r2"], name="reshape"),
        helper.make_node("Transpose", ["r2"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "w2"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "b2"], ["a"], name="add"),
        helper.make_node("ReduceMean", ["a"], ["r"], name="mean", axes=[1], keepdims=0),
        helper.make_node("Gemm", ["r", "w3"], ["y"], name="gemm", transB=1),
    ]
    initializers = {**weights, "rows": np.array([0, 8, 36], np.int64)}
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("bias")
    weights = _tiny_model(tmp / "model.onnx")
    data = np.random.default_rng(3).normal(0.5, 1.0, size=(64, 3, 6, 6)).astype(np.float32)
    np.save(tmp / "calib.npy", data)
    config = digits_variant(
        tmp,
        model={"path": tmp / "model.onnx"},
        calibration={
            "source": str(tmp / "calib.npy"),
            "batch_size": 16,
            "calib_iterations": 0,
            "cache_dir": tmp / "cache",
            "bias_correction_samples": SAMPLES,
        },
        test={"source": str(tmp / "calib.npy"), "labels": None, "batch_size": 16, "test_iterations": 0},
    )
    return weights, data[:SAMPLES], pipeline.calibrate(config), config.quantization


def _run(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, {"x": x})


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _dequantized(model: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, float]:
    """The float values of a DequantizeLinear of initializers, and its largest scale."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if tensor in n.output)
    assert dq.op_type == "DequantizeLinear"
    values, scale = inits[dq.input[0]].astype(np.float64), inits[dq.input[1]].astype(np.float64)
    zero = inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 else 0.0
    return (values - zero) * scale, float(scale.max())


def _reference_errors(model: onnx.ModelProto, weights: dict[str, np.ndarray], x: np.ndarray) -> dict:
    """Per layer, mean over samples and positions of (FP32 layer - quantized layer) on the quantized
    model's own dequantized inputs: the FP32 layers in numpy."""
    layers = {name: _node(model, name) for name in ("conv", "matmul", "gemm")}
    names = [t for n in layers.values() for t in (n.input[0], n.output[0])]
    found = dict(zip(names, _run(model, x, names), strict=True))
    conv_in, conv_out = (
        found[t].astype(np.float64) for t in (layers["conv"].input[0], layers["conv"].output[0])
    )
    fp32 = np.einsum("oc,nchw->nohw", weights["w1"][:, :, 0, 0], conv_in) + weights["b1"][None, :, None, None]
    mm_in, mm_out = (
        found[t].astype(np.float64) for t in (layers["matmul"].input[0], layers["matmul"].output[0])
    )
    gemm_in, gemm_out = (
        found[t].astype(np.float64) for t in (layers["gemm"].input[0], layers["gemm"].output[0])
    )
    return {
        "conv": (fp32 - conv_out).mean(axis=(0, 2, 3)),
        "matmul": (mm_in @ weights["w2"] - mm_out).mean(axis=(0, 1)),
        "gemm": (gemm_in @ weights["w3"].T - gemm_out).mean(axis=0),
    }


def test_corrected_biases_move_by_the_measured_mean_error(tiny) -> None:
    weights, x, calibrated, quantization = tiny
    timings: dict[str, float] = {}
    plain = pipeline.quantize(calibrated, quantization)
    corrected = pipeline.quantize(
        calibrated, quantization.model_copy(update={"bias_correction": True}), timings=timings
    )
    assert set(corrected.bias_corrected) == {"conv", "matmul", "gemm"}
    assert timings["bias_correction"] > 0
    expected = _reference_errors(plain.model, weights, x)

    # Conv: its int32 bias moves by the error, to half a step of the bias scale.
    before, _ = _dequantized(plain.model, _node(plain.model, "conv").input[2])
    after, step = _dequantized(corrected.model, _node(corrected.model, "conv").input[2])
    assert np.abs(expected["conv"]).max() > 10 * step  # an error the correction must see
    np.testing.assert_allclose(after - before, expected["conv"], atol=step / 2 + 1e-6)
    # MatMul: the constant of its Add, quantized again over its new range.
    add = _node(plain.model, "add")
    before, old_step = _dequantized(plain.model, add.input[1])
    after, new_step = _dequantized(corrected.model, _node(corrected.model, "add").input[1])
    assert np.abs(expected["matmul"]).max() > 5 * (old_step + new_step)
    np.testing.assert_allclose(after - before, expected["matmul"], atol=(old_step + new_step) / 2 + 1e-6)
    # Gemm without a bias: it gets an int32 one holding the error.
    assert len(_node(plain.model, "gemm").input) == 2
    after, step = _dequantized(corrected.model, _node(corrected.model, "gemm").input[2])
    assert np.abs(expected["gemm"]).max() > 10 * step
    np.testing.assert_allclose(after, expected["gemm"], atol=step / 2 + 1e-6)

    # The corrected model runs in the same INT8 kernels.
    kernels = int8_kernels(corrected.model)
    assert kernels == int8_kernels(plain.model)
    assert {"QLinearConv", "QGemm"} <= set(kernels)


def test_a_gemm_with_beta_gets_no_new_bias(tiny) -> None:
    """onnxruntime runs a Gemm with a bias and beta != 1 in float (no QGemm): none is added."""
    _, _, calibrated, quantization = tiny
    model = pipeline.quantize(calibrated, quantization).model
    _node(model, "gemm").attribute.append(helper.make_attribute("beta", 0.5))
    assert {s.layer for s in correction_sites(model)} == {"conv", "matmul"}


def test_the_corrected_conv_has_no_mean_error_left(tiny) -> None:
    weights, x, calibrated, quantization = tiny
    corrected = pipeline.quantize(calibrated, quantization.model_copy(update={"bias_correction": True}))
    left = _reference_errors(corrected.model, weights, x)["conv"]
    _, step = _dequantized(corrected.model, _node(corrected.model, "conv").input[2])
    assert np.abs(left).max() <= step  # rounding to the int32 grid, and the float sums


def test_requantizer_models_are_corrected_alike(calibrated_digits) -> None:
    config, calibrated = calibrated_digits
    requantizer = Requantizer(calibrated.graph)
    for method in ("kl", "mse", "percentile"):
        choices = config.quantization.model_copy(update={"bias_correction": True, "method": method})
        direct = pipeline.quantize(calibrated, choices)
        rewritten = pipeline.quantize(calibrated, choices, requantizer=requantizer)
        assert direct.bias_corrected and rewritten.bias_corrected == direct.bias_corrected
        assert rewritten.model.SerializeToString() == direct.model.SerializeToString(), method
        # The requantizer keeps the uncorrected model: quantizing without correction is unchanged.
        plain = choices.model_copy(update={"bias_correction": False})
        ranges = compute_thresholds(calibrated.stats, plain)
        assert (
            requantizer.quantize(ranges, plain).model.SerializeToString()
            == quantize_model(calibrated.graph, ranges, plain).model.SerializeToString()
        )
    assert requantizer.rewrites > 0
