"""Cross-layer equalization (``quantization.equalize``) on real models: the digits example (Conv ->
ReLU -> depthwise Conv chains) and rapidocr's PaddleOCR classifier (MobileNetV3, BatchNormalization,
depthwise) and PP-OCRv6 detector (tests/corpus.py).

The expectations are computed here, from the plain prepared model: the pairs are found by a walk of
this file's own, the ranges with numpy, the outputs with onnxruntime without graph optimizations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from autoquant.engine import statistics_key
from autoquant.engine.graph import fold_batch_norms, prepare_model
from autoquant.errors import ConfigError
from autoquant.search import load_space
from tests import corpus
from tests.helpers import DIGITS


def _digits() -> tuple[Path, np.ndarray]:
    return DIGITS / "model.onnx", np.load(DIGITS / "data" / "test.npy")[:8]


def _ocr(model: Callable[[], Path], data: Callable[..., tuple[Path, Path]]) -> Callable[[Path], tuple]:
    def made(folder: Path) -> tuple[Path, np.ndarray]:
        _, test = data(folder, calib=1, test=2)
        return model(), np.load(test)

    return made


MODELS = {
    "digits": lambda folder: _digits(),
    "ocr_cls": _ocr(corpus.ocr_cls_model, corpus.ocr_cls_data),
    "ocr_det": _ocr(corpus.ocr_det_model, corpus.ocr_det_data),
}


def _run(model: onnx.ModelProto | Path, x: np.ndarray, optimize: bool = False) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _conv_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, bool]]:
    """(first Conv, second Conv, second is depthwise): the first's output read by a ReLU alone, or
    by the second Conv directly, whose output is read by the second Conv alone."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights = _weights(model)
    pairs = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        step = readers.get(conv.output[0], [])
        if len(step) == 1 and step[0].op_type == "Relu":
            step = readers.get(step[0].output[0], [])
        if len(step) != 1 or step[0].op_type != "Conv":
            continue
        second = step[0]
        channels = weights[conv.input[1]].shape[0]
        group = _attr(second, "group", 1)
        if group in (1, channels):
            pairs.append((conv, second, group == channels and channels > 1))
    return pairs


def _ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.swapaxes(weight, 0, axis)).reshape(weight.shape[axis], -1).max(axis=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_equalized_models_compute_the_same_fp32_outputs(name: str, tmp_path: Path) -> None:
    path, x = MODELS[name](tmp_path / "data")
    plain = prepare_model(path, tmp_path / "cache")
    equalized = prepare_model(path, tmp_path / "cache", equalize=True)
    before, after = _weights(plain.load()), _weights(equalized.load())
    changed = [w for w in before if w in after and not np.allclose(before[w], after[w], rtol=1e-3, atol=0)]
    assert len(changed) >= 4  # the weights did change ...
    # ... and the outputs did not, to 1e-5, or to twice what onnxruntime's own graph optimizations
    # change in the plain model where that is more (the detector's k = 50 binarization amplifies
    # float32 rounding: 8e-6 there on 16 samples, on an AMD EPYC)
    plain_outputs = _run(plain.prepared_path, x)
    noise = max(
        float(np.abs(a - b).max())
        for a, b in zip(plain_outputs, _run(plain.prepared_path, x, optimize=True), strict=True)
    )
    for ours, theirs in zip(_run(equalized.prepared_path, x), plain_outputs, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=max(1e-5, 2 * noise))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_equalized_pair_has_equal_channel_ranges(name: str, tmp_path: Path) -> None:
    """r1_i (output channel i of the first Conv) equals r2_i (input channel i of the second, or
    channel i of a depthwise one); a pair in no chain gets sqrt(r1_i * r2_i) (Nagel et al. 2019)."""
    path, _ = MODELS[name](tmp_path / "data")
    plain_graph = prepare_model(path, tmp_path / "cache")
    plain = plain_graph.load()
    before = _weights(plain)
    after = _weights(prepare_model(path, tmp_path / "cache", equalize=True).load())
    pairs = _conv_pairs(plain)
    assert pairs
    in_pairs = [n.name for first, second, _ in pairs for n in (first, second)]
    for first, second, depthwise in pairs:
        w1, w2 = first.input[1], second.input[1]
        axis = 0 if depthwise else 1
        r1, r2 = _ranges(after[w1], 0), _ranges(after[w2], axis)
        was1, was2 = _ranges(before[w1], 0), _ranges(before[w2], axis)
        live = (was1 > 0) & (was2 > 0)  # a dead channel (all zero weights) is left as it is
        assert live.sum() > len(live) / 2
        np.testing.assert_allclose(r1[live], r2[live], rtol=1e-4)
        np.testing.assert_array_equal(after[w1][~live], before[w1][~live])
        if in_pairs.count(first.name) == 1 and in_pairs.count(second.name) == 1:
            np.testing.assert_allclose(r1[live], np.sqrt(was1 * was2)[live], rtol=1e-5)
    if name in ("digits", "ocr_cls"):  # depthwise Convs among them, first or second of a pair
        assert any(depthwise or _attr(first, "group", 1) > 1 for first, _, depthwise in pairs)


def test_batch_normalizations_fold_into_their_convs(tmp_path: Path) -> None:
    """The classifier as onnxruntime's basic optimization writes it without its Conv+BN fusion:
    35 BatchNormalization nodes, every one folded, the outputs unchanged."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "unfused.onnx")
    ort.InferenceSession(
        str(corpus.ocr_cls_model()),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["ConvBNFusion"],
    )
    model = onnx.load(tmp_path / "unfused.onnx")
    norms = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(norms) == 35
    _, test = corpus.ocr_cls_data(tmp_path / "data", calib=1, test=4)
    x = np.load(test)
    reference = _run(model, x)
    assert sorted(fold_batch_norms(model)) == sorted(norms)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    onnx.checker.check_model(model)
    for ours, theirs in zip(_run(model, x), reference, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_an_equalized_model_is_another_prepared_model(tmp_path: Path) -> None:
    """Its own file and hash, so that statistics and FP32 outputs cached for one never serve the other."""
    plain = prepare_model(DIGITS / "model.onnx", tmp_path)
    equalized = prepare_model(DIGITS / "model.onnx", tmp_path, equalize=True)
    assert plain.prepared_path != equalized.prepared_path
    assert plain.prepared_path.is_file() and equalized.prepared_path.is_file()
    assert plain.model_hash != equalized.model_hash
    assert statistics_key(plain.model_hash, "data", 8192, 0) != statistics_key(
        equalized.model_hash, "data", 8192, 0
    )
    again = prepare_model(DIGITS / "model.onnx", tmp_path, equalize=True)
    assert again.model_hash == equalized.model_hash and again.prepared_path == equalized.prepared_path


def test_equalize_is_not_a_search_parameter_yet(tmp_path: Path) -> None:
    spec = tmp_path / "space.yaml"
    spec.write_text("parameters:\n  equalize: {choices: [false, true]}\n")
    with pytest.raises(ConfigError, match="'equalize'.* change the prepared model"):
        load_space(spec)


def _mlp(tmp_path: Path) -> tuple[onnx.ModelProto, np.ndarray]:
    """scikit-learn's MLP trained on digits, written as Gemm layers: transB 0 and 1 alternate, and
    ReLU, Clip at 0, Identity and ReLU6 (Clip 0..6) sit between them."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    mlp = MLPClassifier(hidden_layer_sizes=(48, 40, 32, 24), max_iter=60, random_state=0).fit(
        x[:1000], y[:1000]
    )
    h = onnx.helper
    inits, nodes, tensor = [], [], "x"
    zero = numpy_helper.from_array(np.float32(0.0), "zero")
    six = numpy_helper.from_array(np.float32(6.0), "six")
    between = [("Relu", []), ("Clip", ["zero"]), ("Identity", []), ("Clip", ["zero", "six"])]
    for i, (weight, bias) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        transposed = i % 2 == 1
        stored = weight.T if transposed else weight
        inits += [
            numpy_helper.from_array(stored.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(bias.astype(np.float32), f"b{i}"),
        ]
        nodes.append(
            h.make_node(
                "Gemm", [tensor, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}", transB=int(transposed)
            )
        )
        tensor = f"g{i}"
        if i < len(between):
            op, extra = between[i]
            nodes.append(h.make_node(op, [tensor, *extra], [f"a{i}"], name=f"act{i}"))
            tensor = f"a{i}"
    graph = h.make_graph(
        nodes,
        "mlp",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [h.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, ["n", 10])],
        [*inits, zero, six],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "mlp.onnx")
    return model, x[1000:]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_gemm_pairs_equalize_through_relu_clip_at_zero_and_identity(tmp_path: Path) -> None:
    model, x = _mlp(tmp_path)
    plain = prepare_model(tmp_path / "mlp.onnx", tmp_path / "cache")
    equalized = prepare_model(tmp_path / "mlp.onnx", tmp_path / "cache", equalize=True)
    before, after = _weights(plain.load()), _weights(equalized.load())
    # gemm0 -> Relu -> gemm1 -> Clip(0) -> gemm2 -> Identity -> gemm3: one chain of three pairs.
    # Output channels: axis 1 of a transB=0 weight, axis 0 of a transB=1 one; input channels the other.
    for first, second in ((0, 1), (1, 2), (2, 3)):
        out_axis, in_axis = (0, 0) if first % 2 else (1, 1)
        r1, r2 = _ranges(after[f"w{first}"], out_axis), _ranges(after[f"w{second}"], in_axis)
        np.testing.assert_allclose(r1, r2, rtol=1e-4)
        assert not np.allclose(after[f"w{first}"], before[f"w{first}"], rtol=1e-3)
    # ReLU6 is not crossed: its bound would have to become per channel.
    np.testing.assert_array_equal(after["w4"], before["w4"])
    for ours, theirs, source in zip(
        _run(equalized.prepared_path, x), _run(plain.prepared_path, x), _run(model, x), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(theirs, source, rtol=1e-5, atol=1e-5)
