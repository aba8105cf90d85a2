"""What the later stages need to know about a prepared model: inputs, quantizable nodes in
topological order, the activation tensors whose ranges the quantizer needs, the first layer."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from autoquant.data import InputSpec
from autoquant.engine._ort import quantizable_op_types
from autoquant.engine.graph._activations import ActivationChain, find_activations
from autoquant.engine.graph._fold import WEIGHTED_OPS, constant_tensors
from autoquant.engine.graph._model_io import load_model
from autoquant.engine.graph._prepare import opset
from autoquant.errors import ModelError

logger = logging.getLogger("autoquant.engine.graph")

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
#: Ops a decomposed normalization is written with (LayerNorm, RMSNorm, TF's Rsqrt, ...).
_NORM_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "Max",
        "Reshape",
        "Expand",
        "Cast",
        "Squeeze",
        "Unsqueeze",
    }
)
_NORM_REDUCES = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare"})
#: How far back from the square root a normalization's reductions are looked for.
_NORM_DEPTH = 10


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
        model_hash: SHA-256 of the user's model bytes (of those and of the transform when the
            prepared model is equalized, see `prepare_model`).
        prepared_path: The prepared FP32 model (cached on disk).
        inputs: The model inputs (batch dim first; ``None`` for dynamic dims).
        outputs: The model output names.
        nodes: Quantizable nodes in topological order.
        activations: Float tensors whose ranges the quantizer needs, in topological order.
        first_layer: Name of the first Conv/Gemm/MatMul node, if any.
        norm_nodes: Quantizable nodes of decomposed normalizations (see
            `normalization_nodes`), kept in FP32 by ``quantization.norm_layers_fp32``.
        opset: The prepared model's ai.onnx opset.
        external_data: The model keeps its weights in external data files, and so do the models
            written from it.
        activation_chains: Its decomposed GELU and SiLU activations (see
            `find_activations`), which
            ``quantization.float_ops`` may leave in float as one fused kernel.
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
    norm_nodes: tuple[str, ...] = ()
    activation_chains: tuple[ActivationChain, ...] = ()

    def node(self, name: str) -> QuantizableNode:
        """Return the quantizable node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ModelError(f"{self.source}: no quantizable node named {name!r}")

    def load(self, weights: bool = True) -> onnx.ModelProto:
        """Load the prepared FP32 model (``weights=False``: without the initializers it keeps in
        external data, for a model written that way)."""
        return load_model(self.prepared_path, weights)

    def initializers(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The values of some initializers of the prepared model, the others left unread when the
        model keeps them in external data."""
        wanted = set(names)
        model = load_model(self.prepared_path, weights=False)
        found = {}
        for tensor in model.graph.initializer:
            if tensor.name in wanted:
                if uses_external_data(tensor):
                    load_external_data_for_tensor(tensor, str(self.prepared_path.parent))
                found[tensor.name] = numpy_helper.to_array(tensor)
        return found

    def batch_size(self, requested: int) -> int:
        """``requested``, unless the model's batch dimension is fixed, in which case that size."""
        fixed = {spec.shape[0] for spec in self.inputs if spec.shape and spec.shape[0] is not None}
        if len(fixed) == 1 and (size := fixed.pop()) != requested:
            logger.debug("the model has a fixed batch size of %d; using it instead of %d", size, requested)
            return size
        return requested


def normalization_nodes(graph: onnx.GraphProto, constant: set[str]) -> set[str]:
    """Nodes of decomposed normalizations: LayerNorm, RMSNorm and the like, as exporters write them.

    A normalization divides by a square root of reduced statistics. Its statistics (the
    reductions, squares, variance, epsilon, square root and reciprocal), the centring and the node
    that applies the scale have a dynamic range no 8-bit scale covers: a variance of 1e-3 next to
    one of 10 rounds to zero and its reciprocal explodes, and a rounded mean shifts every centred
    value. Found from each ``Sqrt`` (or ``Reciprocal``, or ``Pow`` with an exponent below 1):
    forward through single-input steps to the node that merges the scale with the input, then
    the nodes within `_NORM_DEPTH` element-wise steps back from it that descend from a
    reduction, and what feeds only those reductions.
    """
    walk = _NormWalk(graph, constant)
    found: set[str] = set()
    for root in graph.node:
        if walk.is_root(root) and root.name not in found:
            found |= walk.branch(root)
    return found


class _NormWalk:
    """The lookups `normalization_nodes` walks a graph with, and the walk from one root."""

    def __init__(self, graph: onnx.GraphProto, constant: set[str]) -> None:
        self.constant = constant
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for tensor in node.input:
                self.consumers.setdefault(tensor, []).append(node)
        self.values = {t.name: t for t in graph.initializer}

    def dynamic_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [t for t in node.input if t and t not in self.constant]

    def is_root(self, node: onnx.NodeProto) -> bool:
        """Whether ``node`` is a square root: ``Sqrt``, ``Reciprocal`` or ``Pow`` below 1."""
        if node.op_type in ("Sqrt", "Reciprocal"):
            return True
        if node.op_type == "Pow" and len(node.input) > 1 and node.input[1] in self.values:
            exponent = numpy_helper.to_array(self.values[node.input[1]])
            return exponent.size == 1 and float(exponent.reshape(-1)[0]) < 1.0
        return False

    def branch(self, root: onnx.NodeProto) -> set[str]:
        """The nodes of the normalization around ``root``; none when no reduction feeds it."""
        chain, merge = [root], root
        while len(self.dynamic_inputs(merge)) < 2:  # forward: reciprocal, gamma, to the node applying it
            users = [c for o in merge.output for c in self.consumers.get(o, [])]
            if len(users) != 1 or users[0].op_type not in _NORM_OPS:
                break
            merge = users[0]
            chain.append(merge)
        ancestors = self._ancestors(merge, _NORM_DEPTH + len(chain))
        reduces = [n for n in ancestors.values() if n.op_type in _NORM_REDUCES]
        if not reduces:
            return set()
        branch = {n.name: n for n in chain}
        stack = list(reduces)
        while stack:  # what descends from a reduction: statistics, centring, scale
            node = stack.pop()
            branch[node.name] = node
            stack.extend(
                c
                for o in node.output
                for c in self.consumers.get(o, [])
                if c.name in ancestors and c.name not in branch
            )
        for node in ancestors.values():  # and what feeds only reductions (the square in E[x^2])
            users = [c for o in node.output if o for c in self.consumers.get(o, [])]
            if users and all(c.name in branch and c.op_type in _NORM_REDUCES for c in users):
                branch[node.name] = node
        return set(branch)

    def _ancestors(self, merge: onnx.NodeProto, depth: int) -> dict[str, onnx.NodeProto]:
        """The element-wise nodes within ``depth`` steps back from ``merge``."""
        ancestors: dict[str, onnx.NodeProto] = {}
        frontier = [merge]
        for _ in range(depth):
            frontier = [
                self.producer[t]
                for node in frontier
                for t in self.dynamic_inputs(node)
                if t in self.producer
                and self.producer[t].op_type in _NORM_OPS
                and self.producer[t].name not in ancestors
            ]
            ancestors.update((n.name, n) for n in frontier)
        return ancestors


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


def model_inputs(path: Path) -> tuple[InputSpec, ...]:
    """The inputs of a model file, read without its weights or any preparation (for data checks).

    Raises:
        ModelError: The file cannot be read or is not ONNX.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None
    return _input_specs(model, {t.name for t in model.graph.initializer})


def _is_depthwise(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    dims = weights[node.input[1]].dims
    return group > 1 and len(dims) >= 2 and dims[1] == 1 and dims[0] == group


def describe(
    model: onnx.ModelProto, source: Path, model_hash: str, prepared_path: Path, external_data: bool = False
) -> ModelGraph:
    """Describe a prepared model (see `ModelGraph`).

    Activations are the float tensors of quantizable nodes that depend on a model input:
    initializers and tensors computed from constants only get no statistics.
    """
    quantizable = quantizable_op_types()
    weights = {t.name: t for t in model.graph.initializer}
    types = _tensor_types(model)
    constant = constant_tensors(model.graph)
    nodes, activations, seen = [], [], set()

    def is_activation(name: str) -> bool:
        return bool(name) and name not in constant and types.get(name) in _FLOAT_TYPES

    for node in model.graph.node:
        if node.op_type not in quantizable or node.domain not in ("", "ai.onnx"):
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
    norms = normalization_nodes(model.graph, constant)
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
        norm_nodes=tuple(n.name for n in nodes if n.name in norms),
        activation_chains=tuple(find_activations(model.graph, constant)),
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
