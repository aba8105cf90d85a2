"""Decomposed activations: GELU and SiLU as exporters write them, element-wise op by element-wise op.

``x * 0.5 * (1 + erf(x / sqrt(2)))`` and ``x * sigmoid(x)`` are one kernel in onnxruntime's FP32
session (its ``Gelu`` and ``QuickGelu`` fusions). In a QDQ model every op of the chain gets its
own Q/DQ pair, QLinearMul and QLinearAdd, and the fusion is lost: on the PP-OCR models that costs
more than the INT8 convolutions save (bench/RESULTS.md). Left in float, the chain still is not
fused, because onnxruntime gives each consumer of a DequantizeLinear its own copy and the fusion
wants one input; `fuse_activations` therefore writes the fused kernel itself, with the
operator onnxruntime's own fusion writes (``com.microsoft`` ``Gelu``, ``QuickGelu`` with
``alpha=1``), so the INT8 model runs the chain as the FP32 model does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: The domain of onnxruntime's fused kernels.
MS_DOMAIN = "com.microsoft"
#: Single-input element-wise steps a decomposed activation is written with.
_STEPS = frozenset({"Div", "Mul", "Add", "Sub", "Erf", "Sigmoid", "Tanh"})
_SQRT2 = float(np.sqrt(2.0))


@dataclass(frozen=True)
class ActivationChain:
    """One decomposed activation of a model.

    Attributes:
        kind: ``gelu`` or ``silu``.
        nodes: Its nodes, from the one that reads the input to the one that writes the output.
        input: The activation's input tensor.
        output: The activation's output tensor.
    """

    kind: str
    nodes: tuple[str, ...]
    input: str
    output: str

    @property
    def fused_op(self) -> str:
        """onnxruntime's operator for the whole chain (domain `MS_DOMAIN`)."""
        return {"gelu": "Gelu", "silu": "QuickGelu"}[self.kind]


def _scalar(name: str, values: dict[str, onnx.TensorProto]) -> float | None:
    if name not in values:
        return None
    array = numpy_helper.to_array(values[name])
    return float(array.reshape(-1)[0]) if array.size == 1 else None


def _near(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) <= 1e-3 * abs(expected)


class _Graph:
    """The lookups that chain detection needs, built once."""

    def __init__(self, graph: onnx.GraphProto, constant: set[str]) -> None:
        self.constant = constant
        self.values = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for tensor in node.input:
                self.consumers.setdefault(tensor, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def dynamic(self, node: onnx.NodeProto) -> list[str]:
        return [t for t in node.input if t and t not in self.constant]

    def constant_of(self, node: onnx.NodeProto) -> float | None:
        names = [t for t in node.input if t in self.constant]
        return _scalar(names[0], self.values) if len(names) == 1 else None

    def only_user(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None


def _step(g: _Graph, node: onnx.NodeProto, op: str, constant: float | None = None) -> bool:
    """Whether ``node`` is ``op`` with one dynamic input (and this scalar constant, if given)."""
    if node.op_type != op or node.domain not in ("", "ai.onnx") or len(g.dynamic(node)) != 1:
        return False
    if constant is None:
        return op in ("Erf", "Sigmoid", "Tanh")
    if op == "Div" and node.input[1] not in g.constant:
        return False  # c / x is not x / c
    return _near(g.constant_of(node), constant)


def _inner(g: _Graph, mul: onnx.NodeProto, x: str, y: str) -> list[onnx.NodeProto] | None:
    """The nodes from ``x`` to ``y`` (the other input of ``mul``), each used only by the next."""
    chain: list[onnx.NodeProto] = []
    tensor = y
    while tensor != x:
        node = g.producer.get(tensor)
        if node is None or node.op_type not in _STEPS or len(g.dynamic(node)) != 1 or len(chain) > 4:
            return None
        if g.only_user(tensor) is not (mul if not chain else chain[-1]):
            return None
        chain.append(node)
        tensor = g.dynamic(node)[0]
    return chain[::-1]


def _classify(g: _Graph, inner: list[onnx.NodeProto], trailing: onnx.NodeProto | None) -> str | None:
    """``gelu``, ``silu`` or None for the inner chain (input first) and a trailing scale node."""
    if len(inner) == 1 and _step(g, inner[0], "Sigmoid") and trailing is None:
        return "silu"
    if len(inner) < 3:
        return None
    first, erf, one = inner[:3]
    halves = inner[3:] + ([trailing] if trailing is not None else [])
    scaled = _step(g, first, "Div", _SQRT2) or _step(g, first, "Mul", 1.0 / _SQRT2)
    half = len(halves) == 1 and (_step(g, halves[0], "Mul", 0.5) or _step(g, halves[0], "Div", 2.0))
    if scaled and _step(g, erf, "Erf") and _step(g, one, "Add", 1.0) and half:
        return "gelu"
    return None


def find_activations(graph: onnx.GraphProto, constant: set[str]) -> list[ActivationChain]:
    """The decomposed GELU (erf form) and SiLU activations of a graph, in graph order.

    Each is a ``Mul`` of ``x`` by a chain computed from ``x`` alone (``sigmoid(x)``;
    ``1 + erf(x / sqrt(2))`` with the ``0.5`` inside the chain or after the ``Mul``), whose
    intermediate tensors have no other use.
    """
    g = _Graph(graph, constant)
    found: list[ActivationChain] = []
    claimed: set[str] = set()
    for mul in graph.node:
        inputs = g.dynamic(mul)
        if mul.op_type != "Mul" or len(inputs) != 2 or mul.name in claimed:
            continue
        for x, y in (inputs, inputs[::-1]):
            inner = _inner(g, mul, x, y)
            if not inner:
                continue
            after = g.only_user(mul.output[0])
            trailing = after if after is not None and after.op_type in ("Mul", "Div") else None
            kind = _classify(g, inner, trailing)
            if kind is None and trailing is not None:
                trailing, kind = None, _classify(g, inner, None)
            if kind is None:
                continue
            nodes = [*inner, mul, *([trailing] if trailing is not None else [])]
            claimed.update(n.name for n in nodes)
            found.append(ActivationChain(kind, tuple(n.name for n in nodes), x, nodes[-1].output[0]))
            break
    return found


def fuse_activations(
    model: onnx.ModelProto, chains: Iterable[ActivationChain], floating: set[str]
) -> tuple[onnx.ModelProto, list[ActivationChain]]:
    """Replace each chain left in float by onnxruntime's fused kernel (in place).

    A chain is fused when every node of it is still there, unquantized, and its intermediate
    tensors have no other use; its input is what its first node reads (a DequantizeLinear's
    output), its output tensor keeps its name.

    Args:
        model: A QDQ model.
        chains: The chains found in its FP32 source (`find_activations`).
        floating: Names of the nodes the quantizer left in float.

    Returns:
        The model and the chains that were fused.
    """
    by_name = {n.name: n for n in model.graph.node}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for tensor in node.input:
            uses[tensor] = uses.get(tensor, 0) + 1
    fused, replaced, dropped = [], {}, set()
    for chain in chains:
        nodes = [by_name.get(name) for name in chain.nodes]
        if any(n is None or n.name not in floating or n.domain not in ("", "ai.onnx") for n in nodes):
            continue
        inside = [o for n in nodes[:-1] for o in n.output]
        reads = sum(1 for n in nodes for t in n.input if t in inside)
        if reads != sum(uses.get(t, 0) for t in inside):
            continue  # an intermediate tensor is used outside the chain
        source = next(t for t in nodes[0].input if t not in {i.name for i in model.graph.initializer})
        attributes = {"alpha": 1.0} if chain.kind == "silu" else {}
        replaced[nodes[-1].name] = helper.make_node(
            chain.fused_op,
            [source],
            [nodes[-1].output[0]],
            name=f"{nodes[-1].name}/{chain.fused_op}",
            domain=MS_DOMAIN,
            **attributes,
        )
        dropped.update(n.name for n in nodes[:-1])
        fused.append(chain)
    if not fused:
        return model, []
    kept = [replaced.get(n.name, n) for n in model.graph.node if n.name not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(_without_dangling(kept, {o.name for o in model.graph.output}))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model, fused


def _without_dangling(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without the DequantizeLinear nodes whose output nothing reads any more."""
    read = {t for n in nodes for t in n.input} | outputs
    return [n for n in nodes if n.op_type != "DequantizeLinear" or any(o in read for o in n.output)]
