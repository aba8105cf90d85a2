"""Graph preparation: turn a model as an exporter wrote it into one the quantizer can rely on.

Exporters write weights as ``Constant`` nodes (Paddle2ONNX, ``torch.onnx.export`` without
constant folding), use old opsets, dynamic shapes and decomposed activations. Preparation:

1. refuses models that are already quantized;
2. upgrades the opset to at least 13 (per-channel QDQ needs it) and names unnamed nodes;
3. runs onnxruntime's basic-level offline optimization, which turns ``Constant`` nodes into
   initializers, folds constant subgraphs and applies the fusions onnxruntime would apply at load
   time anyway (Conv+BatchNormalization, Conv+Add, ...), writing standard ONNX ops only;
4. folds what is left of constant subgraphs feeding weights with ONNX's reference evaluator;
5. gives every Gemm bias of shape [1, N] the shape [N] (the same broadcast; onnxruntime's
   quantizer indexes a bias per output channel and fails on a row);
6. infers shapes, keeping dynamic dimensions symbolic;
7. checks the invariant: every constant weight of a Conv, ConvTranspose, Gemm or MatMul is an
   initializer, and warns once, naming each node, where that is not so;
8. (:func:`check_control_flow`, on every load) keeps control flow in FP32: the branches of
   ``If``, ``Loop`` and ``Scan`` nodes are not quantized, and a model whose every weighted layer
   lies in such a branch is refused.

onnxruntime's ``quant_pre_process`` is not used: it fails on models without initializers and on
incomplete symbolic shapes, and writes temporary files into the current directory.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from autoquant.engine._memory_plan import weightless_copy
from autoquant.engine.graph._model_io import SourceModel, session_for, session_options
from autoquant.errors import ModelError

logger = logging.getLogger("autoquant.engine.graph")

MIN_OPSET = 13
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops whose output differs from run to run: never constant, whatever their inputs.
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
#: Beyond this size a model is handed to onnxruntime as a file with external data.
_FILE_BYTES = 64 * 2**20


def _is_quantized_op(op_type: str) -> bool:
    return (
        op_type == "QuantizeLinear"
        or op_type.endswith("Integer")
        or op_type.startswith(("QLinear", "DynamicQuantize", "QGemm", "QAttention"))
    )


def refuse_quantized(model: onnx.ModelProto, path: Path) -> None:
    """Raise :class:`ModelError` when the model already holds quantized ops."""
    found = Counter(n.op_type for n in model.graph.node if _is_quantized_op(n.op_type))
    if found:
        ops = ", ".join(f"{op} x{count}" for op, count in found.most_common(4))
        raise ModelError(f"{path}: the model is already quantized ({ops}); autoquant needs its FP32 original")


def opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_loads(source: SourceModel) -> None:
    """Raise a one-line :class:`ModelError` when onnxruntime cannot load the user's model."""
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session_for(source.path, options)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{source.path}: onnxruntime cannot load the model: {reason}") from None


def upgrade_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """The model at opset :data:`MIN_OPSET` or above."""
    current = opset(model)
    if current >= MIN_OPSET:
        return model
    logger.info("%s: upgrading the opset from %d to %d (per-channel QDQ needs it)", path, current, MIN_OPSET)
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot upgrade opset {current} to {MIN_OPSET} ({exc}); "
            f"convert the model to opset >= {MIN_OPSET} and try again"
        ) from None


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique, stable name: ``<op_type>_<index>``."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Drop initializers from the graph inputs (old exporters list them there), so that they are
    constants that onnxruntime can fold rather than inputs a user could override."""
    initializers = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in initializers]
    if len(kept) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, 4)


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


def optimize(model: onnx.ModelProto, workdir: Path, path: Path) -> onnx.ModelProto:
    """onnxruntime's basic-level offline optimization: constant folding and standard-op fusions."""
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(workdir / "optimized.onnx")
    # A large model goes to onnxruntime as a file with external data: no serialized copy in memory.
    large = model.ByteSize() > _FILE_BYTES
    if large:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.onnx.data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        onnx.save_model(model, workdir / "input.onnx", save_as_external_data=True, location="input.onnx.data")
    try:
        session_for(workdir / "input.onnx" if large else model, options)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: onnxruntime cannot optimize the model: {reason}") from None
    optimized = onnx.load(workdir / "optimized.onnx")
    _keep_used_opsets(optimized, model)
    _restore_fused_names(optimized, {n.name for n in model.graph.node})
    return optimized


_FUSED_NAME = re.compile(r"^(?P<name>.*?)/[A-Za-z0-9]+Fusion(/.*)?$")


def _restore_fused_names(model: onnx.ModelProto, names: set[str]) -> None:
    """Give fused nodes their source name back (onnxruntime calls them ``<name>/<Pass>Fusion/``),
    so that ``nodes_to_exclude`` and ``fp32_nodes.txt`` speak of the user's nodes."""
    taken = {n.name for n in model.graph.node}
    for node in model.graph.node:
        match = _FUSED_NAME.match(node.name)
        if match and match["name"] in names and match["name"] not in taken:
            taken.discard(node.name)
            node.name = match["name"]
            taken.add(node.name)


def _keep_used_opsets(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Drop the opset imports onnxruntime adds to every model it writes, unless a node uses them."""
    used = {n.domain for n in model.graph.node} | {o.domain for o in original.opset_import}
    kept = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)


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
            for attribute in node.attribute:  # subgraphs may read outer-scope tensors
                for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
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
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _outer_names(sub)


def infer_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Shapes and types of every tensor, dynamic dimensions kept symbolic.

    ONNX's inference runs first; onnxruntime's symbolic inference is tried only when some
    tensors are left without a type (contrib ops, shape-computing subgraphs). Both run on a
    weightless copy of the model (:func:`weightless_copy`): they copy what they are given, and a
    large model's weights would be copied twice.
    """
    del model.graph.value_info[:]
    light = weightless_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:
        logger.debug("%s: ONNX shape inference failed: %s", path, exc)
        inferred = light
    missing = _untyped(inferred)
    if missing:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            symbolic = SymbolicShapeInference.infer_shapes(light, auto_merge=True)
        except Exception as exc:
            logger.debug("%s: symbolic shape inference failed: %s", path, exc)
            symbolic = None
        if symbolic is not None and len(_untyped(symbolic)) < len(missing):
            inferred, missing = symbolic, _untyped(symbolic)
    if missing:
        logger.debug("%s: no type inferred for %d tensors: %s", path, len(missing), ", ".join(missing[:5]))
    # What inference found goes back into the model: the types of inner tensors, the outputs'
    # shapes, and the nodes (whose subgraphs carry their own inferred types).
    graph = model.graph
    graph.value_info.extend(inferred.graph.value_info)
    del graph.output[:]
    graph.output.extend(inferred.graph.output)
    del graph.node[:]
    graph.node.extend(inferred.graph.node)
    # Tell onnxruntime's quantizer that shapes are inferred, so that it does not redo it through
    # temporary files.
    onnx.helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, "onnx.infer": "onnxruntime.quant"}
    )
    return model


def _untyped(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    typed = {
        vi.name for vi in (*graph.value_info, *graph.input, *graph.output) if vi.type.HasField("tensor_type")
    }
    typed |= {t.name for t in graph.initializer}
    return [o for n in graph.node for o in n.output if o and o not in typed]


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
    for attribute in node.attribute:
        for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
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


def prepare(source: SourceModel, workdir: Path) -> onnx.ModelProto:
    """Run every preparation step on a user's model (see the module docstring).

    Args:
        source: The user's model, as read by :func:`~autoquant.engine.graph.read_model`.
        workdir: Folder for onnxruntime's files; the caller deletes it.

    Raises:
        ModelError: The model is quantized already, onnxruntime cannot load it, its opset
            cannot be upgraded.
    """
    model = source.model  # changed in place: the caller drops the source (a large model is not copied)
    refuse_quantized(model, source.path)
    check_loads(source)
    model = upgrade_opset(model, source.path)
    name_nodes(model)
    drop_initializer_inputs(model)
    expected = weighted_nodes(model.graph, constant_tensors(model.graph))
    model = optimize(model, workdir, source.path)
    name_nodes(model)
    fold_weights(model)
    flatten_gemm_biases(model.graph)
    model = infer_shapes(model, source.path)
    check_weights(model, expected, source.path)
    return model


def private_workdir(parent: Path) -> tempfile.TemporaryDirectory:
    """A hidden temporary folder inside ``parent`` (the cache), removed when closed."""
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=parent, prefix=".prepare-")
