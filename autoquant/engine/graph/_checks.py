"""What preparation refuses or warns about: quantized models, models onnxruntime cannot load,
weights that are not initializers, and weighted layers inside control flow."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

from autoquant.engine.graph._fold import WEIGHTED_OPS, constant_tensors, subgraphs
from autoquant.engine.graph._model_io import SourceModel, session_for, session_options
from autoquant.errors import ModelError

logger = logging.getLogger("autoquant.engine.graph")


def _is_quantized_op(op_type: str) -> bool:
    return (
        op_type == "QuantizeLinear"
        or op_type.endswith("Integer")
        or op_type.startswith(("QLinear", "DynamicQuantize", "QGemm", "QAttention"))
    )


def refuse_quantized(model: onnx.ModelProto, path: Path) -> None:
    """Raise `ModelError` when the model already holds quantized ops."""
    found = Counter(n.op_type for n in model.graph.node if _is_quantized_op(n.op_type))
    if found:
        ops = ", ".join(f"{op} x{count}" for op, count in found.most_common(4))
        raise ModelError(f"{path}: the model is already quantized ({ops}); autoquant needs its FP32 original")


def first_line(exc: BaseException) -> str:
    """The first line of an onnxruntime error's message, else the error's type."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_loads(source: SourceModel) -> None:
    """Raise a one-line `ModelError` when onnxruntime cannot load the user's model."""
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session_for(source.path, options)
    except Exception as exc:
        raise ModelError(f"{source.path}: onnxruntime cannot load the model: {first_line(exc)}") from None


def check_weights(model: onnx.ModelProto, expected: dict[str, str], path: Path) -> list[str]:
    """Check that every constant weight of a weighted node is an initializer; warn once otherwise.

    Args:
        model: The prepared model.
        expected: Nodes of the source model whose weight was constant (node -> weight).
        path: The user's model, for the message.

    Returns:
        One ``"node (reason)"`` string per node that breaks the invariant.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    constant = constant_tensors(graph)
    producer = {o: n for n in graph.node for o in n.output}
    problems = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight in initializers or (weight not in constant and node.name not in expected):
            continue
        source = producer.get(weight)
        reason = (
            f"its weight {weight!r} is computed by {source.op_type} node {source.name!r}"
            if source is not None
            else f"its weight {weight!r} is not a constant of the prepared model"
        )
        problems.append(f"{node.name} ({reason})")
    if problems:
        logger.warning(
            "%s: %d weights are not initializers after preparation and are quantized per tensor as "
            "activations: %s",
            path,
            len(problems),
            "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
        )
    return problems


def _subgraph_ops(node: onnx.NodeProto) -> Counter[str]:
    """Op types inside the subgraphs of ``node``, nested ones included."""
    found: Counter[str] = Counter()
    for sub in subgraphs(node):
        for inner in sub.node:
            found[inner.op_type] += 1
            found.update(_subgraph_ops(inner))
    return found


def check_control_flow(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a model whose weighted layers all live inside control flow; warn when some do.

    Raises:
        ModelError: The main graph holds no Conv, ConvTranspose, Gemm or MatMul, its subgraphs do.
    """
    inside = {n.name: _subgraph_ops(n) for n in model.graph.node if n.op_type in ("If", "Loop", "Scan")}
    weighted = {
        name: sum(ops[op] for op in WEIGHTED_OPS)
        for name, ops in inside.items()
        if any(ops[op] for op in WEIGHTED_OPS)
    }
    if not weighted:
        return
    kinds = {n.name: n.op_type for n in model.graph.node}
    holders = ", ".join(f"{kinds[name]} {name!r} holds {count}" for name, count in list(weighted.items())[:3])
    if not any(n.op_type in WEIGHTED_OPS for n in model.graph.node):
        raise ModelError(
            f"{path}: every Conv/Gemm/MatMul lies inside control flow ({holders}); autoquant quantizes "
            "the main graph only; export the model without the If/Loop/Scan (one graph per branch)"
        )
    logger.warning("%s: the Conv/Gemm/MatMul layers inside control flow stay in FP32 (%s)", path, holders)
