"""Graph stage on the committed digits model and on model-zoo architectures from the onnx wheel."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
from onnx import helper

from autoquant.engine.graph import prepare_model, weight_channel_ranges
from autoquant.errors import ModelError
from tests.helpers import DIGITS, ZOO


def test_digits_graph(tmp_path: Path) -> None:
    graph = prepare_model(DIGITS / "model.onnx", tmp_path)
    ops = [n.op_type for n in graph.nodes]
    assert ops.count("Conv") == 9 and ops.count("Gemm") == 1 and ops.count("Add") == 2
    assert graph.first_layer == "/stem/Conv" == graph.nodes[0].name
    assert sum(n.depthwise for n in graph.nodes) == 4
    assert all("/dw/" in n.name for n in graph.nodes if n.depthwise)
    initializers = {t.name for t in graph.load().graph.initializer}
    assert all(n.weight in initializers for n in graph.nodes if n.op_type in ("Conv", "Gemm"))
    assert all(n.weight is None for n in graph.nodes if n.op_type not in ("Conv", "Gemm"))
    assert [s.name for s in graph.inputs] == ["input"] and graph.inputs[0].shape == (None, 1, 32, 32)
    assert graph.outputs == ("logits",)
    original = {n.name for n in onnx.load(DIGITS / "model.onnx").graph.node}
    assert {n.name for n in graph.nodes} <= original  # real node names
    assert graph.activations[0] == "input"
    ranges = weight_channel_ranges(graph.load(), graph.nodes[0])
    assert ranges.shape == (16,) and (ranges > 0).all()


def test_prepared_model_is_cached(tmp_path: Path) -> None:
    first = prepare_model(DIGITS / "model.onnx", tmp_path)
    stamp = first.prepared_path.stat().st_mtime_ns
    second = prepare_model(DIGITS / "model.onnx", tmp_path)
    assert second == first and second.prepared_path.stat().st_mtime_ns == stamp


def test_old_opset_is_upgraded_and_initializer_inputs_become_constants(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    graph = prepare_model(ZOO / "light_squeezenet.onnx", tmp_path)
    assert graph.opset >= 13
    assert "upgrading the opset from 9 to 13" in caplog.text
    assert [s.name for s in graph.inputs] == ["data_0"]
    assert graph.load().graph.initializer  # ConstantOfShape weights were folded


def test_missing_and_corrupt_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope.onnx: cannot read the model"):
        prepare_model(tmp_path / "nope.onnx", tmp_path)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    with pytest.raises(ModelError, match=r"corrupt.onnx: not a valid ONNX model"):
        prepare_model(corrupt, tmp_path)


def test_symbolic_shape_failure_is_harmless_and_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def fail(*args, **kwargs):
        raise RuntimeError("symbolic shape inference is not supported for this model")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(fail))
    model_dir = tmp_path / "user"
    model_dir.mkdir()
    model_path = model_dir / "model.onnx"
    model_path.write_bytes((DIGITS / "model.onnx").read_bytes())
    caplog.set_level(logging.WARNING)
    graph = prepare_model(model_path, tmp_path / "cache")
    assert "Traceback" not in caplog.text
    assert len(graph.nodes) == 23
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.onnx"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [graph.prepared_path.name]


def test_model_that_onnxruntime_cannot_load(tmp_path: Path) -> None:
    model = onnx.load(DIGITS / "model.onnx")
    model.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=r"bad.onnx: onnxruntime cannot load the model: .*NoSuchOp"):
        prepare_model(path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unnamed_nodes_get_stable_names(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    w = onnx.numpy_helper.from_array(__import__("numpy").eye(4, dtype="float32"), "w")
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
            "g",
            [x],
            [y],
            [w],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    graph = prepare_model(path, tmp_path / "cache")
    assert [n.name for n in graph.nodes] == ["MatMul_0", "Relu_1"]
    assert graph.first_layer == "MatMul_0"


@pytest.mark.parametrize("style", ["digits_constant_weights", "tiny_vit_constant_weights"])
def test_fused_nodes_keep_the_names_of_the_source_model(style: str, tmp_path: Path) -> None:
    from tests.fixtures.export_styles import write_style

    path = write_style(style, tmp_path)
    source = {n.name for n in onnx.load(path).graph.node}
    graph = prepare_model(path, tmp_path / "cache")
    renamed = [n.name for n in graph.nodes if n.name not in source]
    assert renamed == []


def test_weights_left_computed_are_folded_and_the_rest_named_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import numpy as np

    from autoquant.engine.graph._checks import check_weights
    from autoquant.engine.graph._fold import fold_weights

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    nodes = [
        helper.make_node("Constant", [], ["w_t"], value=onnx.numpy_helper.from_array(w.T.copy())),
        helper.make_node("Transpose", ["w_t"], ["w"], name="transpose_w"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="folded"),
        helper.make_node("MatMul", ["h", "v"], ["y"], name="runtime_weight"),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    v = helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [4, 2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x, v], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    assert fold_weights(model) == ["w"]
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(folded["w"], w)
    assert [n.name for n in model.graph.node] == ["folded", "runtime_weight"]
    # A weight that a source exporter wrote as a constant but that stays computed is named once.
    model.graph.node.insert(0, helper.make_node("Identity", ["w"], ["w2"], name="copy_w"))
    model.graph.node[2].input[1] = "w2"
    model.graph.node[2].name = "was_constant"
    caplog.set_level(logging.WARNING)
    problems = check_weights(model, {"was_constant": "w2"}, tmp_path / "m.onnx")
    assert problems == ["was_constant (its weight 'w2' is computed by Identity node 'copy_w')"]
    assert caplog.text.count("not initializers after preparation") == 1


def _model(nodes: list[onnx.NodeProto], inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = 8
    return model


def _const(name: str, value) -> onnx.TensorProto:
    import numpy as np

    return onnx.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def test_normalization_nodes_of_a_layernorm_written_as_the_difference_of_moments() -> None:
    """tf2onnx's LayerNorm (magika): var = E[x^2] - E[x]^2, Rsqrt as Sqrt + Reciprocal."""
    from autoquant.engine.graph._describe import normalization_nodes
    from autoquant.engine.graph._fold import constant_tensors

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    axes = onnx.numpy_helper.from_array(__import__("numpy").array([-1], dtype="int64"), "axes")
    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [out], name=out, **kw)  # noqa: E731
    nodes = [
        n("Add", ["x", "shift"], "stream"),  # the input of the norm: not part of it
        n("ReduceSum", ["stream", "axes"], "sum", keepdims=1),
        n("Mul", ["sum", "inv_n"], "mean"),
        n("Mul", ["stream", "stream"], "square"),
        n("ReduceSum", ["square", "axes"], "sum_sq", keepdims=1),
        n("Mul", ["sum_sq", "inv_n"], "mean_sq"),
        n("Mul", ["mean", "mean"], "mean_squared"),
        n("Sub", ["mean_sq", "mean_squared"], "var"),
        n("Add", ["var", "eps"], "var_eps"),
        n("Sqrt", ["var_eps"], "std"),
        n("Reciprocal", ["std"], "inv_std"),
        n("Mul", ["inv_std", "gamma"], "scale"),
        n("Sub", ["stream", "mean"], "centred"),
        n("Mul", ["centred", "scale"], "normed"),
        n("Add", ["normed", "beta"], "out"),  # the affine shift after the norm is an activation
        n("MatMul", ["out", "w"], "y"),
    ]
    inits = [
        axes,
        _const("shift", [0.5] * 8),
        _const("inv_n", 1 / 8),
        _const("eps", 1e-5),
        _const("gamma", [1.0] * 8),
        _const("beta", [0.0] * 8),
        _const("w", [[0.1] * 4] * 8),
    ]
    model = _model(nodes, [x], [y], inits)
    onnx.checker.check_model(model)
    found = normalization_nodes(model.graph, constant_tensors(model.graph))
    assert found == {
        "sum", "mean", "square", "sum_sq", "mean_sq", "mean_squared", "var", "var_eps", "std",
        "inv_std", "scale", "centred", "normed",
    }  # fmt: skip


def test_normalization_nodes_of_an_rmsnorm_and_of_the_tiny_vit(tmp_path: Path) -> None:
    from autoquant.engine.graph._describe import normalization_nodes
    from autoquant.engine.graph._fold import constant_tensors
    from tests.fixtures.export_styles import TINY_VIT_MODEL

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])
    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [out], name=out, **kw)  # noqa: E731
    nodes = [
        n("Relu", ["x"], "stream"),
        n("Pow", ["stream", "two"], "square"),
        n("ReduceMean", ["square"], "ms", axes=[-1], keepdims=1),
        n("Add", ["ms", "eps"], "ms_eps"),
        n("Sqrt", ["ms_eps"], "rms"),
        n("Div", ["stream", "rms"], "normed"),
        n("Mul", ["normed", "gamma"], "y"),
    ]
    model = _model(nodes, [x], [y], [_const("two", 2.0), _const("eps", 1e-6), _const("gamma", [2.0] * 8)], 13)
    assert normalization_nodes(model.graph, constant_tensors(model.graph)) == {
        "square", "ms", "ms_eps", "rms", "normed",
    }  # fmt: skip
    # The transformer's three LayerNorms (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div): of
    # their nodes only the epsilon Add is quantizable; attention, HardSwish and residuals are not norms.
    graph = prepare_model(TINY_VIT_MODEL, tmp_path)
    assert graph.norm_nodes == ("/ln1/add_eps", "/ln2/add_eps", "/ln3/add_eps")


def test_gemm_biases_of_shape_1_n_become_vectors_and_quantize_per_channel(tmp_path: Path) -> None:
    """onnxruntime fuses MatMul + Add([1, N]) into a Gemm with a row bias, which its per-channel
    quantizer cannot index; preparation reshapes it without changing the outputs."""
    import numpy as np
    import onnxruntime as ort

    from autoquant.config import QuantizationConfig
    from autoquant.engine import TensorRange, quantize_model

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 6])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 5])
    w = onnx.numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(rng.normal(size=(1, 5)).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    path = tmp_path / "m.onnx"
    onnx.save(_model(nodes, [x], [y], [w, b]), path)
    graph = prepare_model(path, tmp_path / "cache")
    prepared = graph.load()
    gemm = next(n for n in prepared.graph.node if n.op_type == "Gemm")
    bias = next(t for t in prepared.graph.initializer if t.name == gemm.input[2])
    assert list(bias.dims) == [5]
    feed = {"x": rng.normal(size=(3, 6)).astype(np.float32)}
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, feed)[0]  # noqa: E731
    np.testing.assert_allclose(run(prepared), run(onnx.load(path)), rtol=1e-6)
    ranges = {t: TensorRange(t, "max", -4.0, 4.0) for t in graph.activations}
    quantized = quantize_model(graph, ranges, QuantizationConfig(per_channel=True))
    scales = [
        onnx.numpy_helper.to_array(t)
        for t in quantized.model.graph.initializer
        if t.name.startswith("w") and "scale" in t.name
    ]
    assert [s.shape for s in scales] == [(5,)]


def _if_model(main_matmul: bool) -> onnx.ModelProto:
    import numpy as np

    def branch(name: str) -> onnx.GraphProto:
        w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), f"{name}_w")
        out = helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, [1, 4])
        return helper.make_graph(
            [helper.make_node("MatMul", ["h", f"{name}_w"], [f"{name}_y"])], name, [], [out], [w]
        )

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    flag = helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    first = (
        helper.make_node("MatMul", ["x", "w"], ["h"], name="main")
        if main_matmul
        else helper.make_node("Relu", ["x"], ["h"], name="main")
    )
    cond = helper.make_node(
        "If", ["flag"], ["y"], name="branches", then_branch=branch("a"), else_branch=branch("b")
    )
    return _model([first, cond], [x, flag], [y], [w] if main_matmul else [])


def test_control_flow_is_kept_in_fp32_or_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refused = tmp_path / "refused.onnx"
    onnx.save(_if_model(main_matmul=False), refused)
    with pytest.raises(
        ModelError,
        match=r"refused.onnx: every Conv/Gemm/MatMul lies inside control flow \(If 'branches' holds 2\)",
    ):
        prepare_model(refused, tmp_path / "cache")
    mixed = tmp_path / "mixed.onnx"
    onnx.save(_if_model(main_matmul=True), mixed)
    caplog.set_level(logging.WARNING, logger="autoquant")
    for _ in range(2):  # the warning comes on a cache hit too
        caplog.clear()
        graph = prepare_model(mixed, tmp_path / "cache")
        assert [n.name for n in graph.nodes] == ["main"]
        assert caplog.text.count("inside control flow stay in FP32 (If 'branches' holds 2)") == 1


def test_a_model_with_external_data_is_written_again_from_inside_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnx's own external-data saving looks for an existing data file in the working folder:
    run from inside the output folder, the second best model of a study could not be written."""
    from autoquant.engine.graph import write_model

    model = onnx.load(DIGITS / "model.onnx")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        write_model(model, tmp_path / "model.int8.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.int8.onnx.data"]
    written = onnx.load(tmp_path / "model.int8.onnx")
    assert {t.name: t.raw_data for t in written.graph.initializer} == {
        t.name: t.raw_data for t in model.graph.initializer
    }
    assert (tmp_path / "model.int8.onnx").stat().st_size < (tmp_path / "model.int8.onnx.data").stat().st_size
