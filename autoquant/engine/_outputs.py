"""Outputs stage: write a quantization result to a folder, all files or none.

Files are first written to a private staging folder inside the output folder; the INT8 model is
loaded by onnxruntime there; only then are the files moved into place one ``os.replace`` at a time.
A failure leaves the output folder as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from autoquant.config import StudyConfig
from autoquant.engine._methods import METHODS
from autoquant.engine._quantize import QuantizedModel, activation_quant_params
from autoquant.engine.graph import write_model
from autoquant.errors import ModelError, OutputError, QuantizationError, write_fault
from autoquant.names import CONFIG_FILE, FP32_NODES_FILE, MODEL_FILE, TABLE_FILE, TRT_CACHE_FILE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenOutputs:
    """Paths of the files written by `write_outputs`."""

    model: Path
    table: Path
    trt_cache: Path
    fp32_nodes: Path
    config: Path


def check_output_dir(directory: Path) -> None:
    """Fail at once when the output folder cannot be written, before any work; creates nothing.

    A probe file is created and removed in the folder, or in its nearest existing parent when the
    folder does not exist yet (the real outcome of a write, which permission bits alone do not
    tell for root or on a read-only mount).

    Raises:
        OutputError: The path is a file, or the folder (or its parent) is not writable.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory}: the output folder is a file; choose another with --output")
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{directory}: {existing} is a file, not a folder; choose another --output")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".autoquant-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        exc.filename = exc.filename or str(existing)
        raise OutputError(write_fault(exc) or f"{existing}: cannot write ({exc.strerror})") from None


def calibration_table(result: QuantizedModel) -> dict[str, dict]:
    """Tensor -> method, threshold, range, scale and zero point (scale and zero point as used by the model)."""
    params = activation_quant_params(result.model)
    table = {}
    for name, r in result.ranges.items():
        entry = {"method": r.method, "threshold": r.threshold, "lowest": r.lowest, "highest": r.highest}
        if name in params:
            p = params[name]
            entry.update(scale=p.scale, zero_point=p.zero_point, dtype=p.dtype)
        table[name] = entry
    return table


def trt_calibration_cache(result: QuantizedModel) -> str:
    """TensorRT-style calibration cache: a header, then ``tensor: <float32 scale as big-endian hex>``.

    The header names the TensorRT calibrator of the method most tensors were calibrated with
    (its `trt_calibrator`; a method TensorRT has no calibrator for names the closest one).
    The scale is `threshold / 127` as in TensorRT's symmetric INT8.
    """
    methods = [r.method for r in result.ranges.values()]
    method = max(sorted(set(methods)), key=methods.count) if methods else "kl"
    calibrator = METHODS.get(method).trt_calibrator if method in METHODS else "EntropyCalibration2"
    lines = [f"TRT-8601-{calibrator}"]
    for name, r in result.ranges.items():
        scale = r.threshold / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def write_files(directory: Path, files: dict[str, bytes | Callable[[Path], None]]) -> list[Path]:
    """Write ``files`` into ``directory``: all are staged first, then moved into place with
    ``os.replace``, so a failure while staging changes nothing.

    Args:
        directory: The output folder.
        files: Name -> content, or name -> a function that writes that file (and any companion
            files, such as external data) at the path it is given.

    Raises:
        OutputError: A file cannot be written.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory, prefix=".staging-"))
    except OSError as exc:
        raise OutputError(f"{directory}: cannot write the outputs ({exc.strerror})") from None
    current = directory  # the file being written, for the message
    try:
        for name, content in files.items():
            current = directory / name
            if callable(content):
                content(staging / name)
            else:
                (staging / name).write_bytes(content)
        companions = sorted(p.name for p in staging.iterdir() if p.name not in files)
        for name in [*companions, *files]:  # external data before the model that refers to it
            os.replace(staging / name, directory / name)
    except OSError as exc:
        exc.filename = exc.filename or str(current)
        raise OutputError(
            write_fault(exc) or f"{directory}: cannot write the outputs ({exc.strerror})"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [directory / name for name in files]


def clear_leftovers(directory: Path) -> None:
    """Remove what an interrupted run (a kill, a full disk) left half-written in an output folder:
    staging folders and temporary files, which are never outputs; say so in one line. Call only
    while no other process writes into the folder (under its lock)."""
    found = [p for p in Path(directory).glob(".staging-*") if p.is_dir()]
    found += [p for p in Path(directory).glob(".*.tmp") if p.is_file()]
    if not found:
        return
    for leftover in found:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    names = ", ".join(sorted(p.name for p in found)[:3]) + (", ..." if len(found) > 3 else "")
    logger.info(
        "%s: removed %d half-written file(s) of an interrupted run (%s)", directory, len(found), names
    )


def resolved_config(result: QuantizedModel, config: StudyConfig) -> StudyConfig:
    """``config`` with ``quantization.reduce_range`` as the model was built (not ``auto``)."""
    return config.replace(quantization={"reduce_range": result.reduce_range})


def write_outputs(
    result: QuantizedModel,
    config: StudyConfig,
    directory: Path,
    extra: dict[str, bytes] | None = None,
    model_name: str = MODEL_FILE,
) -> WrittenOutputs:
    """Write the INT8 model, calibration tables, FP32 node list and resolved config to ``directory``,
    with the ``extra`` files (name -> content) in the same all-or-nothing write; the model is
    named ``model_name`` (a study's best trial over the budget is not ``model.int8.onnx``).

    The model is written with external data when the source model had it. The resolved config
    names ``quantization.reduce_range`` as decided (true or false, not auto), so that
    ``autoquant quantize`` rebuilds the same model on any CPU.

    Raises:
        QuantizationError: onnxruntime cannot load the INT8 model.
        OutputError: A file cannot be written.
    """

    def write_int8_model(path: Path) -> None:
        try:
            write_model(result.model, path, external_data=result.external_data)
        except ModelError as exc:
            raise QuantizationError(f"onnxruntime cannot load the quantized model: {exc.__cause__}") from exc

    files: dict[str, bytes | Callable[[Path], None]] = {
        model_name: write_int8_model,
        TABLE_FILE: json.dumps(calibration_table(result), indent=2).encode(),
        TRT_CACHE_FILE: trt_calibration_cache(result).encode(),
        FP32_NODES_FILE: "".join(f"{n}\n" for n in result.fp32_nodes).encode(),
        CONFIG_FILE: resolved_config(result, config).to_yaml().encode(),
        **(extra or {}),
    }
    model, table, trt_cache, fp32_nodes, config_path = write_files(directory, files)[:5]
    return WrittenOutputs(
        model=model, table=table, trt_cache=trt_cache, fp32_nodes=fp32_nodes, config=config_path
    )


def int8_kernels(model: onnx.ModelProto | bytes) -> dict[str, int]:
    """Count the op types of onnxruntime's optimized graph for a model (e.g. QLinearConv)."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="autoquant-opt-") as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
