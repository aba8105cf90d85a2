"""Graph stage: load an ONNX model, prepare it for quantization and list its quantizable nodes.

Preparation upgrades the opset to at least 13 (per-channel QDQ needs it), names unnamed nodes,
runs onnxruntime's quantization pre-processing (shape inference, constant folding and
Conv+BatchNormalization fusion) and caches the result, keyed by the hash of the model bytes.
Every node and tensor name reported afterwards is a real name of the prepared model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from autoquant.data import InputSpec
from autoquant.errors import ModelError

logger = logging.getLogger(__name__)

MIN_OPSET = 13
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
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

    def node(self, name: str) -> QuantizableNode:
        """Return the quantizable node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ModelError(f"{self.source}: no quantizable node named {name!r}")

    def load(self) -> onnx.ModelProto:
        """Load the prepared FP32 model."""
        return onnx.load(self.prepared_path)

    def batch_size(self, requested: int) -> int:
        """``requested``, unless the model's batch dimension is fixed, in which case that size."""
        fixed = {spec.shape[0] for spec in self.inputs if spec.shape and spec.shape[0] is not None}
        if len(fixed) == 1 and (size := fixed.pop()) != requested:
            logger.debug("the model has a fixed batch size of %d; using it instead of %d", size, requested)
            return size
        return requested


def read_model(path: Path) -> tuple[onnx.ModelProto, bytes]:
    """Read and parse an ONNX file, raising :class:`ModelError` on a missing or corrupt file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    return model, data


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique, stable name: ``<op_type>_<index>``."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _check_loads(data: bytes, path: Path) -> None:
    """Raise a one-line :class:`ModelError` when onnxruntime cannot load the user's model."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: onnxruntime cannot load the model: {reason}") from None


def _constant_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers from the graph inputs (old exporters list them there), so that they are
    constants that onnxruntime can fold rather than inputs a user could override."""
    initializers = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in initializers]
    if len(kept) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, 4)


def _preprocess(model: onnx.ModelProto, source: Path) -> onnx.ModelProto:
    """Run onnxruntime's quantization pre-processing in a private temporary folder."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="autoquant-prep-") as tmp:
        out = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(model, out)
        except Exception as exc:  # symbolic shape inference fails on some real models
            logger.warning(
                "%s: symbolic shape inference failed (%s: %s); falling back to ONNX shape inference",
                source,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            try:
                quant_pre_process(model, out, skip_symbolic_shape=True)
            except Exception as exc2:
                raise ModelError(f"{source}: cannot prepare the model for quantization ({exc2})") from None
        return onnx.load(out)


def prepare_model(path: str | Path, cache_dir: str | Path) -> ModelGraph:
    """Load, prepare and analyse a model; the prepared model is cached in ``cache_dir``.

    Args:
        path: The FP32 ONNX model.
        cache_dir: Folder for the prepared model, keyed by the hash of the model bytes.

    Returns:
        The model graph description.

    Raises:
        ModelError: The model is missing, corrupt or cannot be prepared.
    """
    path = Path(path)
    model, data = read_model(path)
    model_hash = hashlib.sha256(data).hexdigest()
    cache_dir = Path(cache_dir)
    prepared_path = cache_dir / f"prepared-{model_hash[:16]}.onnx"
    if prepared_path.is_file():
        prepared = onnx.load(prepared_path)
    else:
        _check_loads(data, path)
        opset = _opset(model)
        if opset < MIN_OPSET:
            logger.info(
                "%s: upgrading the opset from %d to %d (per-channel QDQ needs it)", path, opset, MIN_OPSET
            )
            try:
                model = onnx.version_converter.convert_version(model, MIN_OPSET)
            except Exception as exc:
                raise ModelError(
                    f"{path}: cannot upgrade opset {opset} to {MIN_OPSET} ({exc}); "
                    f"convert the model to opset >= {MIN_OPSET} and try again"
                ) from None
        _name_nodes(model)
        _constant_initializers(model)
        prepared = _preprocess(model, path)
        _name_nodes(prepared)
        save_model_checked(prepared, prepared_path)
    return _describe(prepared, path, model_hash, prepared_path)


def session_for(model: onnx.ModelProto | bytes | Path) -> ort.InferenceSession:
    """An onnxruntime CPU session with default options."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"]
    )


def save_model_checked(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` atomically, after onnxruntime has loaded it."""
    data = model.SerializeToString()
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load the model to be written ({exc})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _describe(model: onnx.ModelProto, source: Path, model_hash: str, prepared_path: Path) -> ModelGraph:
    weights = {t.name: t for t in model.graph.initializer}
    types = _tensor_types(model)
    nodes, activations, seen = [], [], set()

    def is_activation(name: str) -> bool:
        return bool(name) and name not in weights and types.get(name) in _FLOAT_TYPES

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
        opset=_opset(model),
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
