"""What the later stages need to know about a prepared model: inputs, quantizable nodes in
topological order, the activation tensors whose ranges the quantizer needs, the first layer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from autoquant.data import InputSpec
from autoquant.errors import ModelError
from autoquant.graph._model_io import load_model
from autoquant.graph._prepare import WEIGHTED_OPS, constant_tensors, opset

logger = logging.getLogger("autoquant.graph")

#: Op types whose tensors onnxruntime's QDQ quantizer can quantize.
QUANTIZABLE_OPS = (
    "Add",
    "ArgMax",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Flatten",
    "Gather",
    "GatherElements",
    "Gemm",
    "GlobalAveragePool",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
    "Where",
)
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@dataclass(frozen=True)
class QuantizableNode:
    """A node the quantizer may turn into INT8, with its float activation tensors."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    depthwise: bool = False
    weight: str | None = None  # the weight initializer of a Conv/ConvTranspose/Gemm/MatMul


@dataclass(frozen=True)
class ModelGraph:
    """A prepared model and what the later stages need to know about it.

    Attributes:
        source: The user's model file.
        model_hash: SHA-256 of the user's model bytes.
        prepared_path: The prepared FP32 model (cached on disk).
        inputs: The model inputs (batch dim first; ``None`` for dynamic dims).
        outputs: The model output names.
        nodes: Quantizable nodes in topological order.
        activations: Float tensors whose ranges the quantizer needs, in topological order.
        first_layer: Name of the first Conv/Gemm/MatMul node, if any.
        opset: The prepared model's ai.onnx opset.
        external_data: The model keeps its weights in external data files, and so do the models
            written from it.
    """

    source: Path
    model_hash: str
    prepared_path: Path
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    nodes: tuple[QuantizableNode, ...]
    activations: tuple[str, ...]
    first_layer: str | None
    opset: int
    external_data: bool = False

    def node(self, name: str) -> QuantizableNode:
        """Return the quantizable node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ModelError(f"{self.source}: no quantizable node named {name!r}")

    def load(self) -> onnx.ModelProto:
        """Load the prepared FP32 model."""
        return load_model(self.prepared_path)

    def batch_size(self, requested: int) -> int:
        """``requested``, unless the model's batch dimension is fixed, in which case that size."""
        fixed = {spec.shape[0] for spec in self.inputs if spec.shape and spec.shape[0] is not None}
        if len(fixed) == 1 and (size := fixed.pop()) != requested:
            logger.debug("the model has a fixed batch size of %d; using it instead of %d", size, requested)
            return size
        return requested


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _input_specs(model: onnx.ModelProto, initializers: set[str]) -> tuple[InputSpec, ...]:
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tensor_type = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(name=vi.name, shape=shape, dtype=dtype))
    return tuple(specs)


def _is_depthwise(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    dims = weights[node.input[1]].dims
    return group > 1 and len(dims) >= 2 and dims[1] == 1 and dims[0] == group


def describe(
    model: onnx.ModelProto, source: Path, model_hash: str, prepared_path: Path, external_data: bool = False
) -> ModelGraph:
    """Describe a prepared model (see :class:`ModelGraph`).

    Activations are the float tensors of quantizable nodes that depend on a model input:
    initializers and tensors computed from constants only get no statistics.
    """
    weights = {t.name: t for t in model.graph.initializer}
    types = _tensor_types(model)
    constant = constant_tensors(model.graph)
    nodes, activations, seen = [], [], set()

    def is_activation(name: str) -> bool:
        return bool(name) and name not in constant and types.get(name) in _FLOAT_TYPES

    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        ins = tuple(t for t in node.input if is_activation(t))
        outs = tuple(t for t in node.output if is_activation(t))
        if not ins and not outs:
            continue
        weight = node.input[1] if node.op_type in WEIGHTED_OPS and len(node.input) > 1 else None
        weight = weight if weight in weights else None
        nodes.append(
            QuantizableNode(node.name, node.op_type, ins, outs, _is_depthwise(node, weights), weight)
        )
        for tensor in (*ins, *outs):
            if tensor not in seen:
                seen.add(tensor)
                activations.append(tensor)
    first = next((n.name for n in nodes if n.op_type in WEIGHTED_OPS), None)
    return ModelGraph(
        source=source,
        model_hash=model_hash,
        prepared_path=prepared_path,
        inputs=_input_specs(model, set(weights)),
        outputs=tuple(o.name for o in model.graph.output),
        nodes=tuple(nodes),
        activations=tuple(activations),
        first_layer=first,
        opset=opset(model),
        external_data=external_data,
    )


def weight_channel_ranges(model: onnx.ModelProto, node: QuantizableNode) -> np.ndarray | None:
    """Per-output-channel absolute maximum of a Conv/Gemm/MatMul weight, straight from the initializer."""
    weights = {t.name: t for t in model.graph.initializer}
    if node.weight is None or node.weight not in weights:
        return None
    onnx_node = next(n for n in model.graph.node if n.name == node.name)
    w = numpy_helper.to_array(weights[node.weight])
    axis = 0 if node.op_type in ("Conv", "ConvTranspose") else w.ndim - 1
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in onnx_node.attribute):
        axis = 0
    return np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
