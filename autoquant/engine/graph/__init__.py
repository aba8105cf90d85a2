"""Graph stage: read an ONNX model as an exporter wrote it, prepare it for quantization and list
its quantizable nodes.

The prepared model is cached in the cache folder, keyed by the hash of the model and its external
data. Every node and tensor name reported afterwards is a real name of the prepared model.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import onnx

from autoquant.engine.graph._activations import MS_DOMAIN, ActivationChain, fuse_activations
from autoquant.engine.graph._checks import check_control_flow
from autoquant.engine.graph._describe import (
    ModelGraph,
    QuantizableNode,
    describe,
    model_inputs,
    weight_channel_ranges,
)
from autoquant.engine.graph._equalize import EqualizedPair, channel_ranges, fold_batch_norms
from autoquant.engine.graph._equalize import equalize as equalize_layers
from autoquant.engine.graph._fold import WEIGHTED_OPS
from autoquant.engine.graph._model_io import (
    EXTERNAL_DATA_BYTES,
    SourceModel,
    load_model,
    model_identity,
    read_model,
    session_for,
    session_options,
    session_threads,
    set_session_threads,
    write_model,
)
from autoquant.engine.graph._prepare import MIN_OPSET, prepare, private_workdir

#: Bumped when preparation changes, so that models prepared by an older version are redone.
PREPARATION_VERSION = 3
#: Bumped when cross-layer equalization changes (it is part of an equalized model's hash).
EQUALIZATION_VERSION = 1


def prepare_model(
    path: str | Path, cache_dir: str | Path, persist: bool = True, equalize: bool = False
) -> ModelGraph:
    """Read, prepare and describe a model; the prepared model is cached in ``cache_dir``.

    Args:
        path: The FP32 ONNX model (its external data files beside it).
        cache_dir: Folder for the prepared model, keyed by the hash of the model's files.
        persist: Write the prepared model to the cache. Without it nothing is written (a cached
            model is still used); the graph then describes a model that `ModelGraph.load`
            cannot load unless it was cached (``autoquant check``).
        equalize: Fold BatchNormalization into Convs and equalize the weight ranges of
            consecutive layers (`equalize_layers`). The equalized model is another prepared
            model: its file and its ``model_hash`` differ from the plain one's, so that no
            statistics or FP32 outputs cached for one are read for the other.

    Returns:
        The model graph description.

    Raises:
        ModelError: The model is missing, corrupt, already quantized, cannot be prepared, or
            holds its every weighted layer inside control flow.
    """
    path, cache_dir = Path(path), Path(cache_dir)
    sha256, external_data = model_identity(path)  # the weights are read only to prepare them
    if equalize:
        sha256 = hashlib.sha256(f"{sha256}|equalized-v{EQUALIZATION_VERSION}".encode()).hexdigest()
    prepared_path = cache_dir / f"prepared-v{PREPARATION_VERSION}-{sha256[:16]}.onnx"
    if prepared_path.is_file():
        prepared = load_model(prepared_path)
        return _described(prepared, path, sha256, prepared_path, external_data)
    source = read_model(path)
    if not persist:
        with tempfile.TemporaryDirectory(prefix="autoquant-prepare-") as workdir:
            prepared = prepare(source, Path(workdir), equalize)
    else:
        created = not cache_dir.exists()
        try:
            with private_workdir(cache_dir) as workdir:
                prepared = prepare(source, Path(workdir), equalize)
            large = source.external_data or prepared.ByteSize() >= EXTERNAL_DATA_BYTES
            write_model(prepared, prepared_path, external_data=large, consume=True)
        except BaseException:
            if created and cache_dir.is_dir() and not any(cache_dir.iterdir()):
                cache_dir.rmdir()  # a failed first preparation leaves no empty cache folder
            raise
    del source  # before the description: a large model is not held twice
    return _described(prepared, path, sha256, prepared_path, external_data)


def _described(
    prepared: onnx.ModelProto, path: Path, sha256: str, prepared_path: Path, external_data: bool
) -> ModelGraph:
    check_control_flow(prepared, path)
    return describe(prepared, path, sha256, prepared_path, external_data)


__all__ = [
    "MIN_OPSET",
    "MS_DOMAIN",
    "WEIGHTED_OPS",
    "ActivationChain",
    "EqualizedPair",
    "ModelGraph",
    "QuantizableNode",
    "SourceModel",
    "channel_ranges",
    "equalize_layers",
    "fold_batch_norms",
    "fuse_activations",
    "load_model",
    "model_identity",
    "model_inputs",
    "prepare_model",
    "read_model",
    "session_for",
    "session_options",
    "session_threads",
    "set_session_threads",
    "weight_channel_ranges",
    "write_model",
]
