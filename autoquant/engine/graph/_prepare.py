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
   5b. with ``quantization.equalize``: folds the BatchNormalization nodes onnxruntime left and
   equalizes the weight ranges of consecutive Conv/Gemm layers (`_equalize`);
6. infers shapes, keeping dynamic dimensions symbolic;
7. checks the invariant: every constant weight of a Conv, ConvTranspose, Gemm or MatMul is an
   initializer, and warns once, naming each node, where that is not so;
8. (`check_control_flow`, on every load) keeps control flow in FP32: the branches of
   ``If``, ``Loop`` and ``Scan`` nodes are not quantized, and a model whose every weighted layer
   lies in such a branch is refused.

onnxruntime's ``quant_pre_process`` is not used: it fails on models without initializers and on
incomplete symbolic shapes, and writes temporary files into the current directory.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from autoquant.engine._memory_plan import weightless_copy
from autoquant.engine.graph._checks import check_loads, check_weights, first_line, refuse_quantized
from autoquant.engine.graph._equalize import equalize as equalize_layers
from autoquant.engine.graph._fold import constant_tensors, flatten_gemm_biases, fold_weights, weighted_nodes
from autoquant.engine.graph._model_io import SourceModel, session_for, session_options
from autoquant.errors import ModelError

logger = logging.getLogger("autoquant.engine.graph")

MIN_OPSET = 13
#: Beyond this size a model is handed to onnxruntime as a file with external data.
_FILE_BYTES = 64 * 2**20


def opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """The model at opset `MIN_OPSET` or above."""
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
        if shutil.disk_usage(workdir).free < model.ByteSize():  # it could not write the optimized model
            raise OSError(errno.ENOSPC, "No space left on device", str(workdir.parent)) from None
        raise ModelError(f"{path}: onnxruntime cannot optimize the model: {first_line(exc)}") from None
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


def infer_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Shapes and types of every tensor, dynamic dimensions kept symbolic.

    ONNX's inference runs first; onnxruntime's symbolic inference is tried only when some
    tensors are left without a type (contrib ops, shape-computing subgraphs). Both run on a
    weightless copy of the model (`weightless_copy`): they copy what they are given, and a
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


def prepare(source: SourceModel, workdir: Path, equalize: bool = False) -> onnx.ModelProto:
    """Run every preparation step on a user's model (see the module docstring).

    Args:
        source: The user's model, as read by `read_model`.
        workdir: Folder for onnxruntime's files; the caller deletes it.
        equalize: Fold BatchNormalization into Convs and equalize consecutive layers
            (step 5b, `autoquant.engine.graph._equalize`).

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
    if equalize:
        equalize_layers(model)
    model = infer_shapes(model, source.path)
    check_weights(model, expected, source.path)
    return model


def private_workdir(parent: Path) -> tempfile.TemporaryDirectory:
    """A hidden temporary folder inside ``parent`` (the cache), removed when closed."""
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=parent, prefix=".prepare-")
