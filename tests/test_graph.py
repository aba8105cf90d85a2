"""Graph stage on the committed digits model and on model-zoo architectures from the onnx wheel."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
from onnx import helper

from autoquant.errors import ModelError
from autoquant.graph import prepare_model, weight_channel_ranges
from tests.conftest import DIGITS, ZOO


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

    from autoquant.graph._prepare import check_weights, fold_weights

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
