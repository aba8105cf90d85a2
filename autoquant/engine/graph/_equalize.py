"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction"), a preparation step of ``quantization.equalize``.

Two consecutive layers ``y = W2 · f(W1 · x + b1)`` compute the same when output channel ``i`` of
the first layer is divided by ``s_i > 0`` and input channel ``i`` of the second multiplied by it,
provided ``f(x / s) = f(x) / s``: ReLU, LeakyReLU, a Clip at 0 with no upper bound, Identity or
nothing. With ``r1_i`` and ``r2_i`` the largest absolute weight of the two channels,
``s_i = sqrt(r1_i · r2_i) / r2_i`` makes both ``sqrt(r1_i · r2_i)``: per-tensor weight scales then
lose less to a channel far narrower than the widest one.

Pairs: Conv -> Conv (the second one dense or depthwise, ``group`` = channels) and Gemm -> Gemm,
where each intermediate tensor has one reader and is no graph output, and where neither layer
shares its weight or bias. A layer may be the second of one pair and the first of the next
(chains); all pairs are equalized in turn, in sweeps, until no scale moves by more than
`_TOLERANCE` (at most `_SWEEPS` sweeps), in float64, cast back to float32 once. ReLU6 (a Clip with
an upper bound) is not crossed: its bound would have to become per channel.

Before that, every BatchNormalization that reads a Conv alone is folded into the Conv (onnxruntime
folds it at load time, but not in the statistics pass, which runs without optimizations).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger("autoquant.engine.graph")

#: Sweeps over the pairs at most, and the largest change of a scale that ends them.
_SWEEPS = 100
_TOLERANCE = 1e-6
#: Activations with f(x / s) = f(x) / s for s > 0 (Clip only without an upper bound).
_EQUIVARIANT = frozenset({"Relu", "LeakyRelu", "Identity", "Clip"})


@dataclass
class EqualizedPair:
    """Two layers equalized through the activations between them."""

    first: str
    second: str
    through: tuple[str, ...]  # the op types between them


@dataclass
class _Side:
    """One layer of a pair: its weight (a float64 working copy), the weight axis of the pair's
    channels, and its bias when it is the first layer."""

    node: onnx.NodeProto
    weight: np.ndarray
    axis: int


class _Graph:
    """Readers, producers and float32 initializers of a graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.reads = Counter(name for node in graph.node for name in set(node.input))
        self.outputs = {o.name for o in graph.output}

    def only_reader(self, tensor: str) -> onnx.NodeProto | None:
        """The one node reading ``tensor``, unless it is a graph output or read more than once."""
        readers = self.readers.get(tensor, [])
        if tensor in self.outputs or len(readers) != 1 or list(readers[0].input).count(tensor) != 1:
            return None
        return readers[0]

    def own_float(self, name: str) -> np.ndarray | None:
        """A float32 initializer that only one node reads, as an array."""
        tensor = self.initializers.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or self.reads[name] != 1:
            return None
        return numpy_helper.to_array(tensor)

    def store(self, name: str, value: np.ndarray) -> None:
        self.initializers[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _attribute(node: onnx.NodeProto, name: str, default: int | float) -> int | float:
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def fold_batch_norms(model: onnx.ModelProto) -> list[str]:
    """Fold each inference BatchNormalization that alone reads a Conv's output into that Conv.

    ``s = scale / sqrt(var + eps)``; the weight's output channels are multiplied by ``s`` and the
    bias becomes ``(b - mean) · s + B`` (one is added when the Conv has none). Returns the names of
    the folded BatchNormalization nodes.
    """
    g = _Graph(model.graph)
    producers = {o: n for n in model.graph.node for o in n.output}
    folded, removed = [], []
    for bn in model.graph.node:
        conv = producers.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or len([o for o in bn.output if o]) != 1:
            continue
        params = [g.own_float(name) for name in bn.input[1:5]]
        weight = g.own_float(conv.input[1]) if len(conv.input) > 1 else None
        bias = g.own_float(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if g.only_reader(conv.output[0]) is not bn or weight is None or any(p is None for p in params):
            continue
        if len(conv.input) > 2 and conv.input[2] and bias is None:
            continue  # a shared or computed bias
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        factor = scale / np.sqrt(var + float(_attribute(bn, "epsilon", 1e-5)))
        new_weight = weight.astype(np.float64) * factor.reshape(-1, *[1] * (weight.ndim - 1))
        new_bias = ((bias.astype(np.float64) if bias is not None else 0.0) - mean) * factor + shift
        g.store(conv.input[1], new_weight)
        if bias is None:
            name = _free_name(g, f"{conv.name}_folded_bias")
            model.graph.initializer.append(numpy_helper.from_array(new_bias.astype(np.float32), name))
            g.initializers[name] = model.graph.initializer[-1]
            del conv.input[2:]
            conv.input.extend([name] if len(conv.input) == 2 else [])
        else:
            g.store(conv.input[2], new_bias)
        conv.output[0] = bn.output[0]
        folded.append(bn.name)
        removed.append(bn)
    for bn in removed:
        model.graph.node.remove(bn)
    _drop_unread(model.graph)
    return folded


def _free_name(g: _Graph, name: str) -> str:
    taken = set(g.initializers) | set(g.readers) | {o for n in g.graph.node for o in n.output}
    while name in taken:
        name += "_"
    return name


def _drop_unread(graph: onnx.GraphProto) -> None:
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def _crossable(node: onnx.NodeProto, g: _Graph) -> bool:
    """Whether ``node`` is an activation with f(x / s) = f(x) / s for every s > 0."""
    if node.op_type not in _EQUIVARIANT or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type != "Clip":
        return True
    if len(node.input) == 1:  # opset < 11 Clip keeps its bounds in attributes
        return _attribute(node, "min", -np.inf) == 0.0 and _attribute(node, "max", np.inf) == np.inf
    low = g.initializers.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    high = node.input[2] if len(node.input) > 2 else ""
    return low is not None and float(numpy_helper.to_array(low)) == 0.0 and not high


def _first_side(node: onnx.NodeProto, g: _Graph) -> tuple[_Side, np.ndarray | None] | None:
    """The first layer of a pair and its bias (None without one), or None if it cannot be one."""
    weight = g.own_float(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return None
    axis = 0 if node.op_type == "Conv" or _attribute(node, "transB", 0) else 1
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = g.own_float(node.input[2])
        if bias is None or bias.shape != (weight.shape[axis],):
            return None
    return _Side(node, weight, axis), bias


def _second_side(node: onnx.NodeProto, g: _Graph, channels: int) -> _Side | None:
    """The second layer of a pair, or None if its input channels are not those of the first."""
    weight = g.own_float(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return None
    if node.op_type == "Gemm":
        if _attribute(node, "transA", 0):
            return None
        axis = 1 if _attribute(node, "transB", 0) else 0
    else:
        group = _attribute(node, "group", 1)
        depthwise = group == channels and weight.shape[0] == channels and weight.shape[1] == 1
        axis = 0 if depthwise else 1 if group == 1 else -1
    if axis < 0 or weight.shape[axis] != channels:
        return None
    return _Side(node, weight, axis)


def _pairs(
    model: onnx.ModelProto, g: _Graph
) -> list[tuple[_Side, np.ndarray | None, _Side, tuple[str, ...]]]:
    """Every pair of layers (module docstring), the first one's bias with it."""
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        walk = _walk_to_next(node, g)
        if walk is None:
            continue
        reader, through = walk
        first = _first_side(node, g)
        if first is None:
            continue
        side, bias = first
        second = _second_side(reader, g, side.weight.shape[side.axis])
        if second is not None:
            found.append((side, bias, second, through))
    return found


def _walk_to_next(node: onnx.NodeProto, g: _Graph) -> tuple[onnx.NodeProto, tuple[str, ...]] | None:
    """The layer of ``node``'s type that alone reads its output through crossable activations,
    and the op types of those activations; None if there is none."""
    through, tensor = [], node.output[0]
    reader = g.only_reader(tensor)
    while reader is not None and reader.input[0] == tensor:
        if reader.op_type == node.op_type:
            return reader, tuple(through)
        if not _crossable(reader, g):
            return None
        through.append(reader.op_type)
        tensor = reader.output[0]
        reader = g.only_reader(tensor)
    return None


def channel_ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    """The largest absolute weight of each channel along ``axis``."""
    others = tuple(a for a in range(weight.ndim) if a != axis % weight.ndim)
    return np.maximum(weight.max(axis=others), -weight.min(axis=others))


def _shape(weight: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(-1 if a == axis else 1 for a in range(weight.ndim))


def equalize(model: onnx.ModelProto) -> list[EqualizedPair]:
    """Fold BatchNormalization into Convs, then equalize every Conv/Gemm pair (module docstring),
    in place. Returns the equalized pairs."""
    fold_batch_norms(model)
    g = _Graph(model.graph)
    pairs = _pairs(model, g)
    # A layer in two pairs (a chain) has one working copy of its weight, shared by both.
    copies = {}
    for first, _, second, _ in pairs:
        for side in (first, second):
            side.weight = copies.setdefault(side.node.name, side.weight.astype(np.float64))
    biases = {first.node.name: None if bias is None else bias.astype(np.float64) for first, bias, *_ in pairs}
    sweeps = 0
    for sweeps in range(1, _SWEEPS + 1):  # noqa: B007 (logged below)
        moved = 0.0
        for first, _, second, _ in pairs:
            r1, r2 = channel_ranges(first.weight, first.axis), channel_ranges(second.weight, second.axis)
            scale = np.ones_like(r1)
            usable = (r1 > 0) & (r2 > 0)
            scale[usable] = np.sqrt(r1[usable] * r2[usable]) / r2[usable]
            first.weight /= scale.reshape(_shape(first.weight, first.axis))
            second.weight *= scale.reshape(_shape(second.weight, second.axis))
            if biases[first.node.name] is not None:
                biases[first.node.name] /= scale
            moved = max(moved, float(np.max(np.abs(scale - 1.0), initial=0.0)))
        if moved <= _TOLERANCE:
            break
    for first, _, second, _ in pairs:
        g.store(first.node.input[1], first.weight)
        g.store(second.node.input[1], second.weight)
        if biases[first.node.name] is not None:
            g.store(first.node.input[2], biases[first.node.name])
    logger.info("cross-layer equalization: %d layer pairs, %d sweeps", len(pairs), sweeps)
    return [EqualizedPair(first.node.name, second.node.name, through) for first, _, second, through in pairs]
