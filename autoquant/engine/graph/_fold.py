"""Constant weights: which tensors are constant, which weighted nodes read them, and the folding
of the ones still computed by nodes into initializers (preparation steps 4 and 5)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger("autoquant.engine.graph")

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

#: Ops whose output differs from run to run: never constant, whatever their inputs.
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from initializers and ``Constant`` nodes only (nodes in topological order)."""
    constant = {t.name for t in graph.initializer}
    for node in graph.node:
        has_subgraph = any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        )
        inputs = [t for t in node.input if t]
        if node.op_type == "Constant" or (
            inputs
            and all(t in constant for t in inputs)
            and node.op_type not in _RANDOM_OPS
            and not has_subgraph
        ):
            constant.update(t for t in node.output if t)
    return constant


def weighted_nodes(graph: onnx.GraphProto, constant: set[str]) -> dict[str, str]:
    """Conv/ConvTranspose/Gemm/MatMul nodes whose weight (input 1) is constant: node -> weight."""
    return {
        n.name: n.input[1]
        for n in graph.node
        if n.op_type in WEIGHTED_OPS
        and n.domain in ("", "ai.onnx")
        and len(n.input) > 1
        and n.input[1] in constant
    }


def fold_weights(model: onnx.ModelProto) -> list[str]:
    """Turn constant weights that are still computed by nodes into initializers.

    onnxruntime leaves some constant subgraphs unfolded; they are evaluated here with ONNX's
    reference evaluator. Returns the folded weight names.
    """
    graph = model.graph
    constant = constant_tensors(graph)
    initializers = {t.name for t in graph.initializer}
    wanted = sorted({w for w in weighted_nodes(graph, constant).values() if w not in initializers})
    if not wanted:
        return []
    from onnx.reference import ReferenceEvaluator

    producers = [
        n for n in graph.node if any(o in constant for o in n.output) and n.output[0] not in initializers
    ]
    sub = onnx.helper.make_graph(
        producers, "weights", [], [onnx.ValueInfoProto(name=w) for w in wanted], list(graph.initializer)
    )
    sub_model = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
    try:
        values = ReferenceEvaluator(sub_model).run(None, {})
    except Exception as exc:  # leave them to the invariant check, which names them
        logger.debug("cannot evaluate the constant weight subgraphs: %s", exc)
        return []
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v), w) for w, v in zip(wanted, values, strict=True)
    )
    _remove_dead_nodes(graph)
    return wanted


def flatten_gemm_biases(graph: onnx.GraphProto) -> list[str]:
    """Reshape constant Gemm biases of shape [1, N] to [N]; returns the nodes changed.

    Gemm broadcasts its C input to (M, N), so [1, N] and [N] compute the same. onnxruntime's fusion
    of MatMul + Add writes the row; its quantizer's int32 bias check then fails on per-channel
    weights. A bias shared with another node is copied, never changed in place.
    """
    initializers = {t.name: t for t in graph.initializer}
    readers = Counter(t for n in graph.node for t in n.input)
    changed = []
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        bias = initializers[node.input[2]]
        if len(bias.dims) != 2 or bias.dims[0] != 1:
            continue
        row = numpy_helper.to_array(bias).reshape(-1)
        name = bias.name if readers[bias.name] == 1 else f"{bias.name}_{node.name}_1d"
        flat = numpy_helper.from_array(row, name)
        if name == bias.name:
            bias.CopyFrom(flat)
        else:
            graph.initializer.append(flat)
            node.input[2] = name
        changed.append(node.name)
    return changed


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is used (the producers of folded weights)."""
    initializers = {t.name for t in graph.initializer}
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        outputs = [o for o in node.output if o]
        if any(o in needed and o not in initializers for o in outputs):
            kept.append(node)
            needed.update(node.input)
            for sub in subgraphs(node):  # subgraphs may read outer-scope tensors
                needed.update(_outer_names(sub))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = needed | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _outer_names(graph: onnx.GraphProto) -> Iterable[str]:
    for node in graph.node:
        yield from node.input
        for sub in subgraphs(node):
            yield from _outer_names(sub)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs held by ``node``'s attributes (the branches of ``If``, the bodies of ``Loop``
    and ``Scan``), not those nested in them."""
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs
