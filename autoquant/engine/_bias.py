"""Bias correction: shift each quantized layer's bias by the mean error its quantization adds.

For every quantized Conv, Gemm and MatMul (its weight dequantized from INT8), the correction of
output channel ``c`` is ``E[y_fp32[c] - y_q[c]]`` over the calibration samples and the spatial
positions. ``y_q`` is the layer's output in the quantized model; ``y_fp32`` is the same layer with
its FP32 weight and bias on the same dequantized input (a copy of the FP32 node added beside it).
Both see the quantized model's own activations (the empirical bias correction of Nagel et al.,
2019), and the difference is this layer's own error, that of its INT8 weight and int32 bias: the
error that the layers before it pass on is theirs to correct, so every layer is measured in the
same single pass over the quantized model without correcting an error twice. (Fed the float
activation before its quantization instead, a layer would also count the activation's clipping;
but where onnxruntime folds a Relu into the quantization of the layer before, that float tensor
is the one before the Relu, so this module does not.) Outputs are compared before any activation
the quantizer folds into the layer. The pass keeps running per-channel sums: no activation
outlives its batch.

The correction is folded into the model as onnxruntime's QDQ format wants it, so that the layers
still run in INT8 kernels (QLinearConv, QGemm, ...):

* an int32 bias (``DequantizeLinear`` with scale ``input_scale * weight_scale``) gets
  ``round(correction / scale)`` added;
* a layer without a bias gets such an int32 bias;
* a float bias initializer, or the constant of an ``Add`` that follows a MatMul, gets the
  correction added (a quantized constant is quantized again over its new range).

A Gemm's correction is divided by its ``beta``; a Gemm without a bias and with ``beta != 1`` gets
none (onnxruntime would run it in float). A layer whose bias is shared, or of another shape than
its channels, is left alone, and so is a MatMul of two activations (attention), which has no
weight to correct.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from autoquant.engine._ort import scale_zero_point
from autoquant.engine.graph import ModelGraph, session_for

logger = logging.getLogger(__name__)

_INT32 = np.iinfo(np.int32)
_CHANNEL_AXIS = {"Conv": 1, "ConvTranspose": 1, "Gemm": -1, "MatMul": -1}
Feeds = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class _Site:
    """A layer whose bias can be corrected, and how (int32 | float | missing | add)."""

    layer: str
    axis: int  # the channel axis of its output
    kind: str


class _Model:
    """Lookups over one QDQ model's graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def dequantized(self, tensor: str) -> onnx.NodeProto | None:
        """The DequantizeLinear producing ``tensor`` from an initializer, if it is one."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in self.inits:
            return None
        return node

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def set(self, name: str, array: np.ndarray) -> None:
        """Replace an initializer's values (same name, dtype and shape)."""
        self.inits[name].CopyFrom(numpy_helper.from_array(array.astype(self.array(name).dtype), name))


def _bias_add(m: _Model, tensor: str) -> tuple[onnx.NodeProto, str, str] | None:
    """The Add that adds a constant to ``tensor`` (directly, or through the Q/DQ pair that
    quantizes it), the tensor it reads ``tensor`` as, and the constant."""
    after = m.consumers.get(tensor, [])
    if len(after) == 1 and after[0].op_type == "QuantizeLinear":
        dq = m.consumers.get(after[0].output[0], [])
        if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
            tensor, after = dq[0].output[0], m.consumers.get(dq[0].output[0], [])
    if len(after) != 1 or after[0].op_type != "Add":
        return None
    const = [t for t in after[0].input if t != tensor]
    if len(const) != 1 or (const[0] not in m.inits and m.dequantized(const[0]) is None):
        return None
    return after[0], tensor, const[0]


def _site(m: _Model, node: onnx.NodeProto) -> _Site | None:
    """The correction site of a quantized weighted node, or None (not quantized, no room)."""
    if node.op_type not in _CHANNEL_AXIS or len(node.input) < 2 or m.dequantized(node.input[1]) is None:
        return None
    axis = _CHANNEL_AXIS[node.op_type]
    bias = node.input[2] if len(node.input) > 2 else ""
    if node.op_type == "MatMul":
        add = _bias_add(m, node.output[0])
        return None if add is None else _Site(node.name, axis, "add")
    if not bias:
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        if node.op_type == "ConvTranspose" or m.producer.get(node.input[0]) is None or beta != 1.0:
            return None  # onnxruntime has no QGemm for a bias with beta != 1
        return _Site(node.name, axis, "missing")
    if bias in m.inits:
        return _Site(node.name, axis, "float")
    dq = m.dequantized(bias)
    if dq is not None and m.inits[dq.input[0]].data_type == onnx.TensorProto.INT32:
        return _Site(node.name, axis, "int32")
    return None


def correction_sites(model: onnx.ModelProto) -> list[_Site]:
    """The quantized Conv/Gemm/MatMul layers of a QDQ model whose bias can be corrected."""
    m = _Model(model)
    return [s for node in model.graph.node if (s := _site(m, node)) is not None]


def channel_means(
    model: onnx.ModelProto, tensors: dict[str, int], feeds: Iterable[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-channel mean of each tensor (name -> channel axis) over every sample and position,
    from one pass over ``feeds`` with running sums."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(
        helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors if t not in present
    )
    session = session_for(copy)
    del copy
    names = list(tensors)
    sums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(names, 0)
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            channels = np.moveaxis(np.asarray(value, np.float64), tensors[name], -1)
            flat = channels.reshape(-1, channels.shape[-1])
            sums[name] = sums.get(name, 0.0) + flat.sum(axis=0)
            counts[name] += len(flat)
    return {name: sums[name] / max(counts[name], 1) for name in names if name in sums}


def _add_int32(m: _Model, node: onnx.NodeProto, delta: np.ndarray) -> bool:
    dq = m.producer[node.input[2]]
    if m.uses.get(node.input[2], 0) != 1 or m.uses.get(dq.input[0], 0) != 1:
        return False
    values, scale = m.array(dq.input[0]), m.array(dq.input[1]).astype(np.float64)
    if values.size != delta.size or scale.size not in (1, delta.size):
        return False
    step = np.round(delta / scale.reshape(-1)).reshape(values.shape)
    m.set(dq.input[0], np.clip(values.astype(np.int64) + step, _INT32.min + 1, _INT32.max))
    return True


def _add_float(m: _Model, name: str, delta: np.ndarray) -> bool:
    values = m.array(name)
    if m.uses.get(name, 0) != 1 or values.size != delta.size:
        return False
    m.set(name, values + delta.reshape(values.shape))
    return True


def _add_missing(m: _Model, node: onnx.NodeProto, delta: np.ndarray) -> bool:
    """Give a layer without a bias an int32 one, as onnxruntime's quantizer writes them."""
    dq_input, dq_weight = m.producer[node.input[0]], m.producer[node.input[1]]
    if dq_input.op_type != "DequantizeLinear" or dq_input.input[1] not in m.inits:
        return False
    input_scale = m.array(dq_input.input[1]).astype(np.float64)
    weight_scale = m.array(dq_weight.input[1]).astype(np.float64)
    if input_scale.size != 1 or weight_scale.size not in (1, delta.size):
        return False
    scale = (input_scale.reshape(()) * weight_scale).astype(np.float32)
    values = np.clip(np.round(delta / scale.astype(np.float64)), _INT32.min + 1, _INT32.max)
    stem = f"{node.name}_bias_correction"
    m.model.graph.initializer.extend(
        [
            numpy_helper.from_array(values.reshape(-1).astype(np.int32), f"{stem}_quantized"),
            numpy_helper.from_array(scale, f"{stem}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int32), f"{stem}_zero_point"),
        ]
    )
    extra = {"axis": 0} if scale.size > 1 else {}
    dq = helper.make_node(
        "DequantizeLinear",
        [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
        [f"{stem}_dequantized"],
        name=f"{stem}_DequantizeLinear",
        **extra,
    )
    del node.input[2:]
    node.input.append(f"{stem}_dequantized")
    m.model.graph.node.insert(list(m.model.graph.node).index(node), dq)
    return True


def _add_to_add(m: _Model, layer: onnx.NodeProto, delta: np.ndarray) -> bool:
    """Fold into the constant of the Add after a MatMul: float, or quantized again over its range."""
    _, _, const = _bias_add(m, layer.output[0]) or (None, None, "")
    if const in m.inits:
        return _add_float(m, const, delta)
    dq = m.producer[const]
    if any(m.uses.get(t, 0) != 1 for t in (const, *dq.input)) or len(dq.input) < 3:
        return False
    values, scale, zero = m.array(dq.input[0]), m.array(dq.input[1]), m.array(dq.input[2])
    if scale.size != 1 or values.size != delta.size:
        return False
    floats = (values.astype(np.float64) - zero.astype(np.float64)) * float(scale) + delta.reshape(
        values.shape
    )
    symmetric = zero.dtype == np.int8 and int(zero) == 0
    new_scale, new_zero = scale_zero_point(
        min(float(floats.min()), 0.0), max(float(floats.max()), 0.0), zero.dtype, symmetric
    )
    info = np.iinfo(zero.dtype)
    quantized = np.clip(np.round(floats / float(new_scale)) + int(new_zero), info.min, info.max)
    m.set(dq.input[0], quantized)
    m.set(dq.input[1], new_scale.reshape(scale.shape))
    m.set(dq.input[2], new_zero.reshape(zero.shape))
    return True


def fold_corrections(model: onnx.ModelProto, corrections: dict[str, np.ndarray]) -> tuple[str, ...]:
    """Add each layer's correction (layer name -> per-channel values) to its bias, in place.

    Returns:
        The layers corrected.
    """
    m = _Model(model)
    nodes = {n.name: n for n in model.graph.node}
    done = []
    for site in correction_sites(model):
        delta = corrections.get(site.layer)
        if delta is None:
            continue
        node = nodes[site.layer]
        if node.op_type == "Gemm":  # its output adds beta * C
            beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
            if beta == 0:
                continue
            delta = delta / beta
        if site.kind == "int32":
            ok = _add_int32(m, node, delta)
        elif site.kind == "float":
            ok = _add_float(m, node.input[2], delta)
        elif site.kind == "missing":
            ok = _add_missing(m, node, delta)
        else:
            ok = _add_to_add(m, node, delta)
        if ok:
            done.append(site.layer)
    return tuple(done)


def with_fp32_layers(
    model: onnx.ModelProto, fp32: onnx.ModelProto, weights: Callable[[list[str]], dict[str, np.ndarray]]
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str, int]]]:
    """A copy of the QDQ ``model`` where each correctable layer has an FP32 twin beside it (the
    FP32 node of ``fp32`` with its FP32 weight and bias, fed the layer's own dequantized input),
    and both outputs are graph outputs.

    Args:
        weights: Reads initializers of the FP32 model by name.

    Returns:
        The copy, and per layer: (its output, its twin's output, the channel axis).
    """
    source = {n.name: n for n in fp32.graph.node}
    known = {t.name for t in fp32.graph.initializer}
    sites = [s for s in correction_sites(model) if s.layer in source]
    sites = [s for s in sites if all(t in known for t in source[s.layer].input[1:] if t)]
    values = weights([t for s in sites for t in source[s.layer].input[1:] if t])
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = {n.name: n for n in model.graph.node}
    measured = {}
    for site in sites:
        original, stem = source[site.layer], f"{site.layer}_bias_correction_fp32"
        inputs = [nodes[site.layer].input[0]]
        for i, name in enumerate(original.input[1:], start=1):
            inputs.append(f"{stem}_{i}" if name else "")
            if name:
                copy.graph.initializer.append(numpy_helper.from_array(values[name], f"{stem}_{i}"))
        twin = helper.make_node(original.op_type, inputs, [f"{stem}_output"], name=stem)
        twin.attribute.extend(original.attribute)
        copy.graph.node.append(twin)
        measured[site.layer] = (nodes[site.layer].output[0], f"{stem}_output", site.axis)
    return copy, measured


class BiasCorrector:
    """Corrects the biases of the quantized models of one prepared model on a few calibration
    samples (see the module docstring).

    Args:
        graph: The prepared FP32 model.
        feeds: The calibration samples, as model feeds, each time it is called.
    """

    def __init__(self, graph: ModelGraph, feeds: Feeds) -> None:
        self._graph = graph
        self._feeds = feeds
        self._structure: onnx.ModelProto | None = None  # the FP32 model without its weights

    def errors(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        """Per correctable layer of the QDQ ``model``, its mean output error per channel
        (FP32 twin minus quantized), from one pass over the calibration samples."""
        if self._structure is None:
            self._structure = self._graph.load(weights=False)
        probe, measured = with_fp32_layers(model, self._structure, self._graph.initializers)
        if not measured:
            return {}
        axes = {t: axis for q, f, axis in measured.values() for t in (q, f)}
        means = channel_means(probe, axes, self._feeds())
        del probe
        return {
            layer: means[f] - means[q]
            for layer, (q, f, _) in measured.items()
            if q in means and f in means and means[q].shape == means[f].shape
        }

    def correct(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[str, ...]]:
        """A copy of the QDQ ``model`` with every quantized layer's bias corrected.

        Returns:
            The corrected model and the names of the layers corrected.
        """
        errors = {k: v for k, v in self.errors(model).items() if np.all(np.isfinite(v))}
        if not errors:
            return model, ()
        corrected = onnx.ModelProto()
        corrected.CopyFrom(model)
        done = fold_corrections(corrected, errors)
        logger.debug("bias correction: %d of %d layers corrected", len(done), len(errors))
        return corrected, done
