"""Quantize stage: build a QDQ ONNX model from our ranges with onnxruntime's quantizer.

onnxruntime does the graph rewriting; this module only turns a typed
:class:`~autoquant.config.QuantizationConfig` and the computed ranges into its options. It is the
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
from autoquant.errors import QuantizationError
from autoquant.graph import ModelGraph
from autoquant.hardware import resolve_reduce_range, target_isa
from autoquant.logs import quiet_onnxruntime
from autoquant.thresholds import TensorRange

logger = logging.getLogger(__name__)
# onnxruntime's quantizer creates sessions of its own; their warnings are not the user's concern.
quiet_onnxruntime()

#: Ops with heavy INT8 compute kernels.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops that onnxruntime's CPU provider runs in INT8 after QDQ fusion (QLinear* kernels and
#: data-movement ops that pass INT8 through).
ORT_INT8_OPS = (
    *COMPUTE_OPS,
    "Add",
    "Mul",
    "Concat",
    "AveragePool",
    "GlobalAveragePool",
    "MaxPool",
    "LeakyRelu",
    "Sigmoid",
    "Softmax",
    "Relu",
    "Clip",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Resize",
    "Gather",
    "Split",
    "Slice",
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


def op_types_to_quantize(graph: ModelGraph, config: QuantizationConfig) -> list[str]:
    """Op types handed to the quantizer for ``config.op_types`` and ``enable_concat_quantize``."""
    present = sorted({n.op_type for n in graph.nodes})
    wanted = {"all": present, "compute": COMPUTE_OPS, "ort_int8": ORT_INT8_OPS}[config.op_types]
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


def _tensors_range(ranges: dict[str, TensorRange]):
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    data = {
        name: TensorData(lowest=np.float32(r.lowest), highest=np.float32(r.highest))
        for name, r in ranges.items()
    }
    return TensorsData(CalibrationMethod.MinMax, data)


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
        ranges: Activation ranges, from :func:`autoquant.thresholds.compute_thresholds`.
        config: Weight granularity, activation scheme, exclusions, op types and ``reduce_range``
            (``auto`` decides from :func:`autoquant.hardware.target_isa`).
        ranking: Node names by decreasing sensitivity, for ``config.fp32_layers``.
        only: Quantize only these nodes (the per-layer analysis); None quantizes every node.

    Returns:
        The quantized model (not yet written anywhere).

    Raises:
        QuantizationError: Bad node names, or onnxruntime's quantizer fails.
        ConfigError: ``AUTOQUANT_TARGET_ISA`` names an unknown instruction set.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import update_opset_version

    excluded = fp32_nodes(graph, config, ranking)
    symmetric = config.activation_scheme == "symmetric"
    overrides: dict[str, list[dict]] = {}
    if config.first_input_unsigned and symmetric:
        overrides.update({spec.name: [{"quant_type": QuantType.QUInt8}] for spec in graph.inputs})
    if config.depthwise_per_channel and not config.per_channel:
        overrides.update({n.weight: [{"axis": 0}] for n in graph.nodes if n.depthwise and n.weight})
    extra_options = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "ForceQuantizeNoInputCheck": True,
        "TensorQuantOverrides": overrides,
    }
    activation_type = QuantType.QInt8 if symmetric else QuantType.QUInt8
    isa = target_isa()
    reduce_range = resolve_reduce_range(config.reduce_range, isa)
    model = graph.load()
    try:
        model = update_opset_version(
            model, QuantType.QInt8, activation_type, tensor_quant_overrides=overrides
        )
        quantizer = QDQQuantizer(
            model,
            config.per_channel,
            reduce_range,
            QuantType.QInt8,
            activation_type,
            _tensors_range(ranges),
            list(only) if only is not None else None,
            excluded,
            op_types_to_quantize(graph, config),
            extra_options,
        )
        quantized = quantizer.quantize_model()
        # onnxruntime sorts nodes when it loads a model, but the ONNX spec (and onnx.checker)
        # wants them sorted in the file: the quantizer appends Q/DQ nodes at the end.
        sortable = ONNXModel(quantized)
        sortable.topological_sort()
        quantized = sortable.model
    except Exception as exc:
        raise QuantizationError(f"{graph.source.name}: onnxruntime's quantizer failed: {exc}") from exc
    if only is not None:
        excluded = [n.name for n in graph.nodes if n.name not in set(only)]
    return QuantizedModel(
        model=quantized,
        fp32_nodes=tuple(excluded),
        ranges=ranges,
        reduce_range=reduce_range,
        cpu_isa=isa.label,
        external_data=graph.external_data,
    )


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
