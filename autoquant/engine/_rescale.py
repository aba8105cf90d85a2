"""Structure-preserving re-quantization: a new set of ranges without a new QDQ graph.

The threshold method, bins, percentile, ratio search and per-tensor scales change only the ranges,
so only the scales and zero points of the activation Q/DQ pairs, and the int32 biases that depend
on them. `Requantizer` quantizes each graph structure (the choices that do change the graph,
with the FP32 nodes and ``reduce_range`` resolved) with onnxruntime's quantizer, and from the
second time a structure is asked for, rewrites those initializers of that model instead.

Which range each scale initializer comes from is read off a probe quantization, whose tensors get
ranges that tell them apart; the new values are computed with onnxruntime's own formula, so the
rewritten model is the one the quantizer would write (tested initializer by initializer). A
structure the probe cannot map (a scale that follows no single tensor, weight scales that depend
on the ranges) is simply quantized every time.

``bias_correction`` is not part of a structure: `autoquant.search.pipeline.quantize` corrects a
copy of the model this module returns, whether rewritten or quantized.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from autoquant.common import release_memory
from autoquant.config import QuantizationConfig
from autoquant.engine._ort import scale_zero_point
from autoquant.engine._quantize import QuantizedModel, float_nodes, fp32_nodes, quantize_model
from autoquant.engine._thresholds import TensorRange
from autoquant.engine.graph import ModelGraph
from autoquant.hardware import resolve_reduce_range, target_isa

logger = logging.getLogger(__name__)

#: Choices that change only ranges, never the graph.
SCALE_ONLY_CHOICES = frozenset(
    {
        "method",
        "bins",
        "max_percentile",
        "ratio_search",
        "start_ratio",
        "end_ratio",
        "step_ratio",
        "layer_scales",
    }
)
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class _Activation:
    """A scale/zero-point initializer pair and the tensor whose range sets it."""

    scale: str
    zero_point: str
    tensor: str
    dtype: np.dtype


@dataclass(frozen=True)
class _Bias:
    """An int32 bias: its initializers, the scales it is the product of, and its float values."""

    quantized: str
    scale: str
    input_scale: str
    weight_scale: str
    values: np.ndarray


@dataclass(frozen=True)
class _Template:
    model: onnx.ModelProto
    symmetric: bool
    activations: tuple[_Activation, ...]
    biases: tuple[_Bias, ...]


def structure_key(graph: ModelGraph, config: QuantizationConfig, ranking: Sequence[str] = ()) -> str:
    """The choices that decide the QDQ graph, as resolved: equal keys give the same graph."""
    # bias_correction is applied to a copy of the model this returns (search.pipeline.quantize)
    choices = config.model_dump(
        mode="json",
        exclude=set(SCALE_ONLY_CHOICES) | {"fp32_layers", "reduce_range", "bias_correction", "equalize"},
    )
    choices.update(
        fp32=sorted(fp32_nodes(graph, config, ranking)),
        reduce_range=resolve_reduce_range(config.reduce_range),
    )
    for implied in ("first_layer_fp32", "norm_layers_fp32", "nodes_to_exclude"):
        choices.pop(implied)  # in fp32
    return json.dumps(choices, sort_keys=True)


def _probe_ranges(ranges: dict[str, TensorRange]) -> dict[str, TensorRange]:
    """Ranges that tell tensors apart and match no fixed range onnxruntime sets itself (a Softmax
    output's [0, 1]): the i-th tensor gets [-(i + 1.37), i + 1.37]."""
    return {
        name: replace(r, lowest=-(i + 1.37), highest=i + 1.37)
        for i, (name, r) in enumerate(sorted(ranges.items()))
    }


def _pairs(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """Activation scale initializer -> (its zero-point initializer, the zero point's dtype), for
    every Q/DQ pair whose data is not an initializer (a weight or bias)."""
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        data, scale, zero = node.input[:3]
        if data in inits or scale not in inits or zero not in inits or inits[scale].dims:
            continue
        found[scale] = (zero, numpy_helper.to_array(inits[zero]).dtype)
    return found


def _biases(model: onnx.ModelProto, graph: ModelGraph) -> list[_Bias] | None:
    """The int32 biases of Conv/Gemm nodes and where their scales come from; None when a bias
    cannot be traced (then the structure is not rewritten). Only the FP32 biases are read from the
    prepared model, not its weights."""
    prepared = graph.load(weights=False)
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    source = {n.name: n for n in prepared.graph.node}
    biases = {
        source[n.name].input[2]
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "ConvTranspose")
        and n.name in source
        and len(source[n.name].input) > 2
    }
    source_inits = graph.initializers(biases)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "ConvTranspose") or len(node.input) < 3:
            continue
        dq_bias = producer.get(node.input[2])
        if dq_bias is None or dq_bias.op_type != "DequantizeLinear" or dq_bias.input[0] not in inits:
            continue
        if inits[dq_bias.input[0]].data_type != onnx.TensorProto.INT32:
            continue
        dq_input, dq_weight = producer.get(node.input[0]), producer.get(node.input[1])
        original = source.get(node.name)
        if (
            dq_input is None
            or dq_weight is None
            or "DequantizeLinear" not in (dq_input.op_type, dq_weight.op_type)
            or original is None
            or len(original.input) < 3
            or original.input[2] not in source_inits
        ):
            return None
        values = source_inits[original.input[2]].astype(np.float64)
        found.append(_Bias(dq_bias.input[0], dq_bias.input[1], dq_input.input[1], dq_weight.input[1], values))
    return found


def _weight_scales(model: onnx.ModelProto, biases: Sequence[_Bias]) -> dict[str, np.ndarray]:
    inits = {t.name: t for t in model.graph.initializer}
    return {b.weight_scale: numpy_helper.to_array(inits[b.weight_scale]) for b in biases}


def _template(
    graph: ModelGraph,
    model: onnx.ModelProto,
    ranges: dict[str, TensorRange],
    config: QuantizationConfig,
    ranking: Sequence[str],
) -> _Template | None:
    """Map a quantized model's activation scales to tensors with a probe quantization."""
    symmetric = config.activation_scheme == "symmetric"
    probe_ranges = _probe_ranges(ranges)
    probe = quantize_model(graph, probe_ranges, config, ranking).model
    pairs, probe_pairs = _pairs(model), _pairs(probe)
    if set(pairs) != set(probe_pairs):
        return None
    # Only the activation scales: a large model's weights are not copied into arrays.
    probe_inits = {t.name: numpy_helper.to_array(t) for t in probe.graph.initializer if t.name in pairs}
    model_inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in pairs}
    lookup: dict[tuple[str, bytes], str] = {}
    for name, r in probe_ranges.items():
        for dtype in {dtype for _, dtype in probe_pairs.values()}:
            scale, _ = scale_zero_point(r.lowest, r.highest, dtype, symmetric)
            lookup[(str(dtype), scale.tobytes())] = name
    activations = []
    for scale, (zero, dtype) in pairs.items():
        tensor = lookup.get((str(dtype), probe_inits[scale].astype(np.float32).tobytes()))
        if tensor is None:
            if np.array_equal(probe_inits[scale], model_inits[scale]):
                continue  # a range onnxruntime fixes itself (a Softmax output): the same for all
            return None
        activations.append(_Activation(scale, zero, tensor, dtype))
    biases = _biases(model, graph)
    if biases is None:
        return None
    if any(
        not np.array_equal(a, _weight_scales(probe, biases)[name])
        for name, a in _weight_scales(model, biases).items()
    ):
        return None  # onnxruntime widened weight scales for a bias: they depend on the ranges
    return _Template(model, symmetric, tuple(activations), tuple(biases))


def _rewrite(template: _Template, ranges: dict[str, TensorRange]) -> onnx.ModelProto | None:
    """The template with every activation scale, zero point and int32 bias set for ``ranges``;
    None when a bias would leave int32 (onnxruntime then widens a weight scale)."""
    values: dict[str, np.ndarray] = {}
    for a in template.activations:
        r = ranges.get(a.tensor)
        if r is None:
            return None
        values[a.scale], values[a.zero_point] = scale_zero_point(
            r.lowest, r.highest, a.dtype, template.symmetric
        )
    inits = {t.name: t for t in template.model.graph.initializer}
    for b in template.biases:
        input_scale = values.get(b.input_scale, numpy_helper.to_array(inits[b.input_scale]))
        weight_scale = numpy_helper.to_array(inits[b.weight_scale])
        scale = (input_scale.astype(np.float64) * weight_scale.astype(np.float64)).astype(np.float32)
        quantized = np.round(b.values / scale.astype(np.float64))
        if quantized.size and (quantized.max() > _INT32.max or quantized.min() < _INT32.min + 1):
            return None
        original = numpy_helper.to_array(inits[b.scale])
        values[b.scale] = scale.reshape(original.shape)
        values[b.quantized] = quantized.astype(np.int32).reshape(
            numpy_helper.to_array(inits[b.quantized]).shape
        )
    model = onnx.ModelProto()
    model.CopyFrom(template.model)
    for tensor in model.graph.initializer:
        if tensor.name in values:  # stored as the quantizer stored it (raw bytes or typed fields)
            array = values[tensor.name]
            raw = tensor.HasField("raw_data")
            data = array.tobytes() if raw else array.ravel().tolist()
            tensor.CopyFrom(
                onnx.helper.make_tensor(tensor.name, tensor.data_type, list(tensor.dims), data, raw=raw)
            )
    return model


_UNMAPPABLE = "unmappable"


class Requantizer:
    """`quantize_model` that rewrites a structure's model from the
    second time on (see the module docstring). Keeps the ``capacity`` structures used last.

    Attributes:
        rewrites: How many models were rewritten instead of quantized.
    """

    def __init__(self, graph: ModelGraph, capacity: int = 4, memory: int = 512 * 2**20) -> None:
        self.graph = graph
        self.capacity = capacity
        self.memory = memory  # bytes of kept models; the last one is kept whatever its size
        # structure -> the first model built (to map when it repeats), its template, or unmappable
        self._seen: OrderedDict[str, tuple | _Template | str] = OrderedDict()
        self.rewrites = 0

    def quantize(
        self, ranges: dict[str, TensorRange], config: QuantizationConfig, ranking: Sequence[str] = ()
    ) -> QuantizedModel:
        """A QDQ model for these ranges and choices, as `quantize_model`
        writes it.

        Raises:
            QuantizationError: Bad node names, or onnxruntime's quantizer fails.
        """
        key = structure_key(self.graph, config, ranking)
        entry = self._seen.pop(key, None)
        if isinstance(entry, tuple):  # seen once: map its scales now that the structure repeats
            entry = _template(self.graph, *entry, ranking) or _UNMAPPABLE
        model = _rewrite(entry, ranges) if isinstance(entry, _Template) else None
        if model is not None:
            self.rewrites += 1
            fp32 = fp32_nodes(self.graph, config, ranking)
            result = QuantizedModel(
                model=model,
                fp32_nodes=tuple(fp32),
                float_nodes=tuple(n for n in float_nodes(self.graph, config) if n not in set(fp32)),
                ranges=ranges,
                external_data=self.graph.external_data,
                reduce_range=resolve_reduce_range(config.reduce_range),
                cpu_isa=target_isa().label,
            )
        else:
            result = quantize_model(self.graph, ranges, config, ranking)
        self._seen[key] = (result.model, ranges, config) if entry is None else entry
        while len(self._seen) > 1 and (len(self._seen) > self.capacity or self._held() > self.memory):
            self._seen.popitem(last=False)
        release_memory()
        return result

    def _held(self) -> int:
        """Bytes of the models kept (first builds and templates)."""
        models = [
            e[0] if isinstance(e, tuple) else e.model for e in self._seen.values() if not isinstance(e, str)
        ]
        return sum(m.ByteSize() for m in models)
