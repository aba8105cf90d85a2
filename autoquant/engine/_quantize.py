"""Quantize stage: build a QDQ ONNX model from our ranges with onnxruntime's quantizer.

onnxruntime does the graph rewriting; this module only turns a typed
`QuantizationConfig` and the computed ranges into its options. It is the
one place where onnxruntime's quantization API is called.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from autoquant.config import QuantizationConfig
from autoquant.engine._ort import int8_kernel_op_types, qdq_quantize
from autoquant.engine._thresholds import TensorRange
from autoquant.engine.graph import WEIGHTED_OPS, ModelGraph, fuse_activations
from autoquant.errors import QuantizationError
from autoquant.hardware import resolve_reduce_range, target_isa
from autoquant.logs import quiet_onnxruntime

logger = logging.getLogger(__name__)
# onnxruntime's quantizer creates sessions of its own; their warnings are not the user's concern.
quiet_onnxruntime()

#: The compute layers: a node of these types left in FP32 counts against a trial in the selection.
COMPUTE_OPS = WEIGHTED_OPS
#: Element-wise arithmetic that ``float_ops: elementwise`` leaves in float. Relu and Clip are not
#: among them: onnxruntime folds them into the QLinearConv before them.
ELEMENTWISE_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Sigmoid",
        "HardSigmoid",
        "Tanh",
        "Erf",
        "Pow",
        "Sqrt",
        "Exp",
        "Reciprocal",
        "Max",
        "Min",
        "Neg",
        "Abs",
    }
)


@dataclass(frozen=True)
class QuantizedModel:
    """A QDQ model and the decisions behind it.

    Attributes:
        reduce_range: Whether the weights are 7-bit (``quantization.reduce_range`` resolved).
        cpu_isa: The deployment CPU that decided ``reduce_range: auto``, e.g. ``x86_64 avx2 (no VNNI)``.
    """

    model: onnx.ModelProto
    fp32_nodes: tuple[str, ...]
    ranges: dict[str, TensorRange]
    external_data: bool = False  # written with external data, like its source model
    reduce_range: bool = False
    cpu_isa: str = ""
    float_nodes: tuple[str, ...] = ()  # left in float for speed (float_ops), not FP32 layers
    bias_corrected: tuple[str, ...] = ()  # layers whose bias quantization.bias_correction shifted


def compute_layers(graph: ModelGraph, names: Sequence[str]) -> tuple[str, ...]:
    """The compute layers (`COMPUTE_OPS`) among the nodes ``names``, in their order."""
    compute = {n.name for n in graph.nodes if n.op_type in COMPUTE_OPS}
    return tuple(n for n in names if n in compute)


def float_nodes(graph: ModelGraph, config: QuantizationConfig) -> list[str]:
    """Quantizable nodes left in float for speed by ``config.float_ops``, in graph order:
    ``activations``, the nodes of the decomposed GELU/SiLU activations; ``elementwise``, those and
    every node of `ELEMENTWISE_OPS`. They are never compute layers."""
    if config.float_ops == "none":
        return []
    chains = {name for chain in graph.activation_chains for name in chain.nodes}
    elementwise = config.float_ops == "elementwise"
    return [n.name for n in graph.nodes if n.name in chains or (elementwise and n.op_type in ELEMENTWISE_OPS)]


def _float_in(model: onnx.ModelProto, quantized: set[str]) -> set[str]:
    """Names of the nodes of ``model`` that the quantizer did not quantize."""
    return {n.name for n in model.graph.node} - quantized


def op_types_to_quantize(graph: ModelGraph, config: QuantizationConfig) -> list[str]:
    """Op types handed to the quantizer for ``config.op_types`` and ``enable_concat_quantize``."""
    present = sorted({n.op_type for n in graph.nodes})
    wanted = {"all": present, "compute": WEIGHTED_OPS, "ort_int8": int8_kernel_op_types()}[config.op_types]
    return [op for op in present if op in wanted and (config.enable_concat_quantize or op != "Concat")]


def fp32_nodes(graph: ModelGraph, config: QuantizationConfig, ranking: Sequence[str] = ()) -> list[str]:
    """Nodes kept in FP32: ``nodes_to_exclude``, the first layer and the decomposed normalizations
    if asked, and the ``fp32_layers`` most sensitive nodes of ``ranking`` (most sensitive first).

    Raises:
        QuantizationError: A name is not a quantizable node of the model, or ``fp32_layers`` is
            set without a ranking.
    """
    known = {n.name for n in graph.nodes}
    unknown = [n for n in (*config.nodes_to_exclude, *ranking) if n not in known]
    if unknown:
        raise QuantizationError(
            f"not quantizable nodes of {graph.source.name}: {', '.join(unknown[:5])}"
            + (" ..." if len(unknown) > 5 else "")
            + "; use the real ONNX node names (`autoquant analyze` lists them)"
        )
    if config.fp32_layers > len(ranking):
        raise QuantizationError(
            f"quantization.fp32_layers={config.fp32_layers} needs a sensitivity ranking of at least that many "
            f"layers, got {len(ranking)}; run `autoquant analyze` first"
        )
    names = list(config.nodes_to_exclude)
    if config.first_layer_fp32 and graph.first_layer:
        names.append(graph.first_layer)
    if config.norm_layers_fp32:
        names.extend(graph.norm_nodes)
    names.extend(ranking[: config.fp32_layers])
    return list(dict.fromkeys(names))


def quantize_model(
    graph: ModelGraph,
    ranges: dict[str, TensorRange],
    config: QuantizationConfig,
    ranking: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> QuantizedModel:
    """Quantize the prepared model of ``graph`` to QDQ with the given activation ranges.

    Args:
        graph: The prepared model.
        ranges: Activation ranges, from `autoquant.engine.compute_thresholds`.
        config: Weight granularity, activation scheme, exclusions, op types, ``float_ops`` (the
            chains it leaves in float become onnxruntime's fused kernels, see
            `autoquant.engine.graph.fuse_activations`) and ``reduce_range`` (``auto`` decides from
            `autoquant.hardware.target_isa`).
        ranking: Node names by decreasing sensitivity, for ``config.fp32_layers``.
        only: Quantize only these nodes (the per-layer analysis); None quantizes every node.

    Returns:
        The quantized model (not yet written anywhere).

    Raises:
        QuantizationError: Bad node names, or onnxruntime's quantizer fails.
        ConfigError: ``AUTOQUANT_TARGET_ISA`` names an unknown instruction set.
    """
    excluded = fp32_nodes(graph, config, ranking)
    speed = [n for n in float_nodes(graph, config) if n not in set(excluded)]
    op_types = op_types_to_quantize(graph, config)
    isa = target_isa()
    reduce_range = resolve_reduce_range(config.reduce_range, isa)
    quantized = _quantize_qdq(graph, ranges, config, reduce_range, only, [*excluded, *speed], op_types)
    if only is not None:
        excluded = [n.name for n in graph.nodes if n.name not in set(only)]
    if config.float_ops != "none" and only is None:
        wanted = set(op_types)
        left = set(excluded) | set(speed)
        kept = {n.name for n in graph.nodes if n.name not in left and n.op_type in wanted}
        quantized, _ = fuse_activations(quantized, graph.activation_chains, _float_in(quantized, kept))
    return QuantizedModel(
        model=quantized,
        fp32_nodes=tuple(excluded),
        ranges=ranges,
        reduce_range=reduce_range,
        cpu_isa=isa.label,
        float_nodes=tuple(speed),
        external_data=graph.external_data,
    )


def _quantize_qdq(
    graph: ModelGraph,
    ranges: dict[str, TensorRange],
    config: QuantizationConfig,
    reduce_range: bool,
    only: Sequence[str] | None,
    excluded: list[str],
    op_types: list[str],
) -> onnx.ModelProto:
    """onnxruntime's QDQ model for ``config``'s choices (see `quantize_model`).

    Raises:
        QuantizationError: onnxruntime's quantizer fails.
    """
    symmetric = config.activation_scheme == "symmetric"
    depthwise = config.depthwise_per_channel and not config.per_channel
    try:
        return qdq_quantize(
            graph.load(),
            {name: (r.lowest, r.highest) for name, r in ranges.items()},
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            symmetric_activations=symmetric,
            unsigned_inputs=[s.name for s in graph.inputs]
            if config.first_input_unsigned and symmetric
            else (),
            per_channel_weights=[n.weight for n in graph.nodes if depthwise and n.depthwise and n.weight],
            nodes_to_quantize=only,
            nodes_to_exclude=excluded,
            op_types=op_types,
        )
    except Exception as exc:
        raise QuantizationError(f"{graph.source.name}: onnxruntime's quantizer failed: {exc}") from exc


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point that the QDQ model uses for one activation tensor."""

    tensor: str
    scale: float
    zero_point: int
    dtype: str


def activation_quant_params(model: onnx.ModelProto) -> dict[str, QuantParams]:
    """Read the per-tensor scale and zero point of every QuantizeLinear in a QDQ model."""
    inits = {t.name: t for t in model.graph.initializer}
    params = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if scale.size != 1 or node.input[0] in params:
            continue
        params[node.input[0]] = QuantParams(node.input[0], float(scale), int(zero), str(zero.dtype))
    return params
