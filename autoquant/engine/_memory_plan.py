"""How the statistics pass keeps its live activations within a memory budget.

Every tensor the pass collects is a graph output of the session that runs it, and onnxruntime keeps
every graph output of a run alive until the run returns, whichever outputs the caller asked for.
So the pass bounds its memory by what each session returns at once: the tensors are split into
groups, one session (and one pass over the data) per group, and each batch into sub-batches of a
few samples. Both splits leave the statistics exact: every tensor still sees every sample once.

The bytes a tensor takes per sample are read from ONNX shape inference on a copy of the graph with
the real input shapes at batch 1, and without its weights (inference needs their shapes, not their
values), so the estimate costs neither memory nor a model run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassPlan:
    """How the statistics pass runs within its memory budget.

    Attributes:
        groups: Tensor names per session, in topological order; one pass over the data each.
        samples_per_run: Samples in one ``session.run`` (0: the batch as the reader gives it).
        overlap: Whether the next run goes on while this one's histograms are built (two runs'
            activations alive at once).
        bytes_per_sample: The estimated activation bytes of one sample, every tensor together.
    """

    groups: tuple[tuple[str, ...], ...]
    samples_per_run: int
    overlap: bool
    bytes_per_sample: int

    @property
    def passes(self) -> int:
        """Passes over the calibration data."""
        return len(self.groups)


#: Initializers with more elements than this are left out of a `weightless_copy`.
_WEIGHTLESS_LIMIT = 1024


def weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers turned into typed graph inputs: what shape inference
    needs (shapes, and the values of small tensors such as a Reshape's target shape), at a
    fraction of the memory. Its nodes are copies; the model is not changed."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for tensor in model.graph.initializer:
        large = math.prod(tensor.dims) > _WEIGHTLESS_LIMIT and tensor.data_type != onnx.TensorProto.INT64
        if large:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            graph.initializer.append(tensor)
    return light


def bytes_per_sample(
    model: onnx.ModelProto, tensors: Sequence[str], feed: Mapping[str, np.ndarray]
) -> dict[str, int | None]:
    """The bytes each of ``tensors`` holds for one sample (None where shape inference cannot tell).

    Args:
        model: The FP32 model.
        tensors: Tensor names (graph inputs included).
        feed: One batch of real inputs, batch dimension first; its shapes fix every input's.
    """
    light = weightless_copy(model)
    per_run = 1  # samples the inferred shapes hold: 1, or a fixed batch size
    for value in light.graph.input:
        if value.name in feed:
            dims = value.type.tensor_type.shape.dim
            fixed = len(dims) > 0 and dims[0].HasField("dim_value")
            shape = feed[value.name].shape if fixed else (1, *feed[value.name].shape[1:])
            per_run = max(per_run, int(shape[0]) if fixed and shape else 1)
            del dims[:]
            for size in shape:
                dims.add().dim_value = int(size)
    found = _inferred_bytes(_onnx_inference(light))
    if any(found.get(name) is None for name in tensors):  # e.g. a Reshape to a computed shape
        found = {**_inferred_bytes(_symbolic_inference(light)), **found}
    return {name: -(-found[name] // per_run) if name in found else None for name in tensors}


def _onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # an estimate only: the plan falls back to its guess
        logger.debug("ONNX shape inference for the memory plan failed: %s", exc)
        return model


def _symbolic_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic inference, which also evaluates the shape computations that
    exporters write for dynamic axes (Shape, Slice, Concat into a Reshape)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True) or model
    except Exception as exc:
        logger.debug("symbolic shape inference for the memory plan failed: %s", exc)
        return model


def _inferred_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of every tensor of ``model`` whose type and shape are fully known."""
    graph = model.graph
    found = {}
    for value in (*graph.value_info, *graph.output, *graph.input):
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        if tensor_type.HasField("shape") and tensor_type.elem_type and all(d >= 0 for d in dims):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
            found[value.name] = math.prod(dims) * itemsize
    return found


def plan_pass(sizes: Mapping[str, int | None], budget: int, batch: int, splittable: bool = True) -> PassPlan:
    """Groups and sub-batches that keep the pass's live activations within ``budget`` bytes.

    One pass over the data costs a full FP32 inference, so the plan uses as few groups as the
    budget allows, then the largest sub-batch, and overlaps runs only where two fit.

    Args:
        sizes: Bytes per sample of each tensor, in topological order (None: unknown, taken as the
            largest known size, or as a 64th of the budget when no size is known).
        budget: Bytes of activations alive at once.
        batch: Samples per batch as the reader gives them.
        splittable: Whether a batch may be split (False when the model's batch size is fixed).
    """
    known = [s for s in sizes.values() if s is not None]
    guess = max(known) if known else max(1, budget // 64)
    size = {name: max(1, s if s is not None else guess) for name, s in sizes.items()}
    total = sum(size.values())
    smallest_run = 1 if splittable else batch
    if 2 * total * batch <= budget:
        return PassPlan((tuple(size),), 0, True, total)
    if total * smallest_run <= budget:
        if not splittable:
            return PassPlan((tuple(size),), 0, False, total)
        per_run = budget // (2 * total)
        if per_run >= 1:
            return PassPlan((tuple(size),), min(per_run, batch), True, total)
        return PassPlan((tuple(size),), min(budget // total, batch), False, total)
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    held = 0
    for name, nbytes in size.items():
        if current and (held + nbytes) * smallest_run > budget:
            groups.append(tuple(current))
            current, held = [], 0
        current.append(name)
        held += nbytes
    if current:
        groups.append(tuple(current))
    return PassPlan(tuple(groups), 0 if not splittable else 1, False, total)
