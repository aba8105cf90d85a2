"""Which compute layers onnxruntime runs in an integer kernel, read from its optimized graph.

A QDQ model only marks where INT8 may run: onnxruntime's graph optimizations fuse a
DequantizeLinear -> Conv -> QuantizeLinear group into QLinearConv only when it has an integer
kernel for it (no ConvTranspose has one on the CPU), and leave the float op with its
DequantizeLinear inputs otherwise. The count that matters is what runs: a compute layer counts
as INT8 only when an integer kernel of the optimized graph stands for it.

An integer kernel is matched to the layer it replaced by its name (onnxruntime keeps the node's
name, or adds ``_token_N`` suffixes when its layout transformers rewrite it), else by the
quantized weight it reads (the initializer behind the layer's DequantizeLinear), else by an
output tensor the layer or its QuantizeLinear wrote.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

from autoquant.engine.graph import session_for, session_options

#: Integer op types whose names do not follow the patterns of :func:`is_integer_kernel`.
_INTEGER_OPS = frozenset({"QGemm", "QAttention", "QEmbedLayerNormalization"})
_INTEGER_PREFIXES = ("QLinear", "NhwcQLinear", "QOrdered", "DynamicQuantize")
_INTEGER_SUFFIXES = ("Integer", "IntegerToFloat")
_TOKEN_SUFFIX = re.compile(r"(_token_\d+)+$")


def is_integer_kernel(op_type: str) -> bool:
    """Whether onnxruntime's op ``op_type`` computes in integers (QLinearConv, MatMulInteger,
    QGemm, DynamicQuantizeMatMul, MatMulIntegerToFloat, ...)."""
    return (
        op_type in _INTEGER_OPS
        or op_type.startswith(_INTEGER_PREFIXES)
        or op_type.endswith(_INTEGER_SUFFIXES)
    )


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _layer_tensors(model: onnx.ModelProto, layers: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """For the layers ``layers`` of the QDQ ``model``: weight tensor -> layer (each float
    initializer a layer reads, directly or through a DequantizeLinear) and output tensor ->
    layer (its outputs and those of the QuantizeLinear nodes that read them)."""
    initializers = {t.name for t in model.graph.initializer}
    producers = _producers(model)
    weights: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for node in model.graph.node:
        if node.name not in layers:
            continue
        for tensor in node.input:
            source = producers.get(tensor)
            if (
                source is not None
                and source.op_type == "DequantizeLinear"
                and source.input[0] in initializers
            ):
                weights.setdefault(source.input[0], node.name)
            elif tensor in initializers:
                weights.setdefault(tensor, node.name)
        for tensor in node.output:
            outputs[tensor] = node.name
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in outputs:
            outputs.setdefault(node.output[0], outputs[node.input[0]])
    return weights, outputs


def layers_in_integer_kernels(
    qdq: onnx.ModelProto, optimized: onnx.ModelProto, layers: Iterable[str]
) -> set[str]:
    """The layers (node names of the QDQ model ``qdq``) that an integer kernel of onnxruntime's
    ``optimized`` graph of it runs."""
    names = set(layers)
    weights, outputs = _layer_tensors(qdq, names)
    found: set[str] = set()
    for node in optimized.graph.node:
        if not is_integer_kernel(node.op_type):
            continue
        base = _TOKEN_SUFFIX.sub("", node.name)
        if base in names:
            found.add(base)
            continue
        match = next((weights[t] for t in node.input if t in weights), None)
        match = match or next((outputs[t] for t in node.output if t in outputs), None)
        if match is not None:
            found.add(match)
    return found


def layers_in_float(
    qdq: onnx.ModelProto, optimized: onnx.ModelProto, layers: Sequence[str]
) -> tuple[str, ...]:
    """The layers among ``layers`` (in their order) that onnxruntime's ``optimized`` graph of the
    QDQ model ``qdq`` runs in float: those no integer kernel stands for."""
    integer = layers_in_integer_kernels(qdq, optimized, layers)
    return tuple(name for name in layers if name not in integer)


def session_and_optimized(
    model: onnx.ModelProto,
    workdir: Path | None = None,
    open_session: Callable[[onnx.ModelProto, ort.SessionOptions], ort.InferenceSession] = session_for,
    options: ort.SessionOptions | None = None,
) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    """A CPU session for ``model`` (opened by ``open_session`` with ``options``, by default
    `session_options`) and onnxruntime's optimized graph of it, which the session writes as it is
    created (its initializers in a side file that is never read: only the graph's nodes matter).
    Both files go to a temporary folder in ``workdir`` (made if missing; None: the system's),
    deleted before returning."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autoquant-opt-", dir=workdir) as tmp:
        options = options or session_options()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "64"
        )
        session = open_session(model, options)
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return session, optimized
