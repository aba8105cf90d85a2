"""Reading and writing ONNX models, external data included, and opening onnxruntime sessions.

Models above the 2 GB protobuf limit keep their weights in external data files. They are read
with those files (and hashed with them), and a model read that way is written that way.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx.external_data_helper import (
    ExternalDataInfo,
    load_external_data_for_model,
    set_external_data,
    uses_external_data,
)

from autoquant.errors import ModelError

#: Log level of every onnxruntime session autoquant opens: errors only.
ORT_LOG_SEVERITY = 3


@dataclass(frozen=True)
class SourceModel:
    """A user's model as read from disk.

    Attributes:
        path: The model file.
        model: The parsed model with any external data loaded into it.
        sha256: Hash of the model file and of its external data files.
        external_data: Whether the file keeps its weights in external data files.
    """

    path: Path
    model: onnx.ModelProto
    sha256: str
    external_data: bool


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in a graph: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _tensors(subgraph)


def _external_files(model: onnx.ModelProto) -> list[str]:
    """Locations of the external data files a model refers to, sorted."""
    return sorted({ExternalDataInfo(t).location for t in _tensors(model.graph) if uses_external_data(t)})


def _parse(path: Path) -> onnx.ModelProto:
    """The model file parsed, its external data files checked but not read.

    Raises:
        ModelError: The file cannot be read, is not ONNX, or has no nodes.
    """
    try:
        model = onnx.load(path, load_external_data=False)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    locations = _external_files(model)
    for location in locations:
        if not (path.parent / location).is_file():
            raise ModelError(f"{path}: its external data file {location!r} is missing from {path.parent}")
    return model


def _digest(path: Path, locations: list[str]) -> str:
    """Hash of the model file and of its external data files, read a block at a time."""
    digest = hashlib.sha256()
    for file, name in ((path, None), *((path.parent / location, location) for location in locations)):
        if name is not None:
            digest.update(name.encode())
        with file.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_identity(path: str | Path) -> tuple[str, bool]:
    """The hash a model is cached by (see `read_model`) and whether it keeps its weights in
    external data files, without loading those weights.

    Raises:
        ModelError: The file or one of its external data files is missing, or the file is not ONNX.
    """
    path = Path(path)
    locations = _external_files(_parse(path))
    return _digest(path, locations), bool(locations)


def read_model(path: str | Path) -> SourceModel:
    """Read and parse an ONNX file and its external data.

    Raises:
        ModelError: The file or one of its external data files is missing, or the file is not ONNX.
    """
    path = Path(path)
    model = _parse(path)
    locations = _external_files(model)
    digest = _digest(path, locations)
    if locations:
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelError(f"{path}: cannot read its external data ({exc})") from None
    return SourceModel(path, model, digest, bool(locations))


def load_model(path: Path, weights: bool = True) -> onnx.ModelProto:
    """Load a model written by `write_model` (its external data too, unless ``weights`` is
    False)."""
    return onnx.load(path, load_external_data=weights)


#: A model at least this large is written with its weights in an external data file, so that
#: sessions load it from the file and a structure can be read without its weights.
EXTERNAL_DATA_BYTES = 64 * 2**20


def write_model(
    model: onnx.ModelProto, path: Path, external_data: bool = False, consume: bool = False
) -> None:
    """Write ``model`` to ``path`` once onnxruntime has loaded it, replacing any older file whole.

    With ``external_data`` the weights go to ``<name>.data`` beside the model (``consume``: moved
    out of ``model``, which then refers to that file, instead of copied first). The files are
    staged in a hidden folder next to ``path`` and moved into place only after onnxruntime loaded
    them, so an interrupted or failed write leaves the previous model intact.

    Raises:
        ModelError: onnxruntime cannot load the model.
        OSError: The folder cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        staged = staging / path.name
        if external_data:
            copy = model
            if not consume:
                copy = onnx.ModelProto()
                copy.CopyFrom(model)  # onnx.save moves the weights of the proto it is given
            _mark_external(copy, f"{path.name}.data")
            onnx.save_model(copy, staged)  # writes the marked tensors' data beside ``staged``
        else:
            staged.write_bytes(model.SerializeToString())
        try:
            session_for(staged)
        except Exception as exc:
            raise ModelError(f"{path}: onnxruntime cannot load the model to be written ({exc})") from exc
        data = staging / f"{path.name}.data"
        if data.exists():
            data.replace(path.parent / data.name)
        staged.replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _mark_external(model: onnx.ModelProto, location: str, threshold: int = 1024) -> None:
    """Mark the tensors of ``threshold`` bytes or more to be saved in ``location``.

    onnx's own ``save_as_external_data`` refuses when a file named ``location`` exists relative
    to the working folder (not the model's): a run from inside the output folder could not write
    a second best model. Marking the tensors and saving writes the same files.
    """
    for tensor in _tensors(model.graph):
        if (
            tensor.HasField("raw_data")
            and len(tensor.raw_data) >= threshold
            and not uses_external_data(tensor)
        ):
            set_external_data(tensor, location)


#: Threads of every onnxruntime session autoquant creates (None: onnxruntime's default, one per
#: core); set by ``--threads`` when several processes share a machine's cores.
_THREADS: int | None = None


def set_session_threads(threads: int | None) -> None:
    """Run every session with ``threads`` intra-op threads that do not spin while idle (None:
    onnxruntime's default)."""
    global _THREADS
    _THREADS = threads


def session_threads() -> int | None:
    """The threads `set_session_threads` set (None: onnxruntime's default)."""
    return _THREADS


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options with onnxruntime's log at error level and ``threads`` intra-op threads
    (0: onnxruntime's default, one per physical core; None: those of `set_session_threads`)."""
    options = ort.SessionOptions()
    options.log_severity_level = ORT_LOG_SEVERITY
    if threads is not None:
        options.intra_op_num_threads = threads
    elif _THREADS is not None:
        options.intra_op_num_threads = _THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def session_for(
    model: onnx.ModelProto | bytes | Path | str, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """An onnxruntime CPU session over a model, its bytes or its file."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model),
        options or session_options(),
        providers=["CPUExecutionProvider"],
    )
