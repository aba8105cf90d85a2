"""The one module that reaches into onnxruntime's quantization package.

onnxruntime's quantizer rewrites the graph (QDQ nodes, per-channel weights, bias folding); this
adapter calls it with keyword arguments built from our typed choices, so that an onnxruntime
release that reorders its private signatures breaks here, loudly, and nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import onnx


@functools.lru_cache(maxsize=1)
def quantizable_op_types() -> frozenset[str]:
    """Op types onnxruntime's quantizer knows how to quantize (its QDQ and QOperator registries,
    read at run time: what ``quantize_static`` quantizes by default)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


@functools.lru_cache(maxsize=1)
def int8_kernel_op_types() -> frozenset[str]:
    """Op types with an INT8 operator in onnxruntime (its QOperator registry: QLinearConv,
    QLinearAdd, QGemm, ... and the data-movement ops that pass INT8 through)."""
    from onnxruntime.quantization.registry import QLinearOpsRegistry

    return frozenset(QLinearOpsRegistry)


def qdq_quantize(
    model: onnx.ModelProto,
    ranges: Mapping[str, tuple[float, float]],
    *,
    per_channel: bool,
    reduce_range: bool,
    symmetric_activations: bool,
    unsigned_inputs: Sequence[str] = (),
    per_channel_weights: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] = (),
) -> onnx.ModelProto:
    """A QDQ model from onnxruntime's quantizer, its nodes sorted topologically.

    Over 60 lines for its ten keyword arguments and their docs; the body is one quantizer call.

    Args:
        model: The prepared FP32 model (not modified).
        ranges: Activation tensor -> (lowest, highest).
        per_channel: Per-channel weights (one scale per output channel).
        reduce_range: 7-bit weights.
        symmetric_activations: int8 activations with zero point 0; else uint8 asymmetric.
        unsigned_inputs: Tensors quantized as uint8 whatever the activation scheme.
        per_channel_weights: Weights quantized per channel (axis 0) even without ``per_channel``.
        nodes_to_quantize: Only these nodes; None quantizes every eligible node.
        nodes_to_exclude: Nodes kept in FP32.
        op_types: Op types to quantize.

    Raises:
        Exception: Whatever onnxruntime raises; the caller names the stage.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import update_opset_version

    overrides: dict[str, list[dict]] = {name: [{"quant_type": QuantType.QUInt8}] for name in unsigned_inputs}
    overrides.update({name: [{"axis": 0}] for name in per_channel_weights})
    activation_type = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
    model = update_opset_version(model, QuantType.QInt8, activation_type, tensor_quant_overrides=overrides)
    tensors = {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high))
        for name, (low, high) in ranges.items()
    }
    quantizer = QDQQuantizer(
        model=model,
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_qType=QuantType.QInt8,
        activation_qType=activation_type,
        tensors_range=TensorsData(CalibrationMethod.MinMax, tensors),
        nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize is not None else None,
        nodes_to_exclude=list(nodes_to_exclude),
        op_types_to_quantize=list(op_types),
        extra_options={
            "ActivationSymmetric": symmetric_activations,
            "WeightSymmetric": True,
            "ForceQuantizeNoInputCheck": True,
            "TensorQuantOverrides": overrides,
        },
    )
    return _sorted_copy(quantizer.quantize_model())


def _sorted_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A fresh copy of the quantizer's model, its nodes sorted topologically.

    onnxruntime sorts nodes when it loads a model, but the ONNX spec (and onnx.checker) wants
    them sorted in the file: the quantizer appends Q/DQ nodes at the end. The quantizer rewrites
    the FP32 model in place; its float weights, though removed, stay in the memory arena of that
    message as long as it lives: a fresh copy holds only the INT8 model.
    """
    from onnxruntime.quantization.onnx_model import ONNXModel

    sortable = ONNXModel(model)
    sortable.topological_sort()
    compact = onnx.ModelProto()
    compact.ParseFromString(sortable.model.SerializeToString())
    return compact


def scale_zero_point(
    lowest: float, highest: float, dtype: np.dtype, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The scale (float32) and zero point (``dtype``) onnxruntime's quantizer gives an activation
    with this range: its own ``compute_scale_zp``, so that a rewritten model is bit for bit the
    one the quantizer would write."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qtype = QuantType.QUInt8 if np.dtype(dtype) == np.uint8 else QuantType.QInt8
    qmin, qmax = get_qmin_qmax_for_qType(qtype.tensor_type, symmetric=symmetric)
    zero, scale = compute_scale_zp(
        np.array(lowest, np.float32), np.array(highest, np.float32), qmin, qmax, symmetric
    )
    return np.asarray(scale, np.float32), np.asarray(zero).astype(dtype)
