"""Arrays on the wire of ``autoquant serve``: ``.npy`` and ``.npz`` files read without pickle.

A request body is one ``.npy`` file (a model with one input) or an ``.npz`` archive of ``.npy``
files named after the model's inputs. Each ``.npy`` header is parsed by numpy's header reader
(a Python literal, never code); the data is then checked against the header and the model input
before an array is made from it: object dtypes are refused, the byte count must match the shape,
the dtype must be the input's, the shape must fit the input's (dynamic axes take any size), and
floating-point inputs must be finite. Nothing is allocated from what a header claims.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"

#: onnxruntime's type strings of the tensors a batch may hold.
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


class PayloadError(ValueError):
    """A request body that cannot be used, with the HTTP status to answer it with (400: not a
    readable ``.npy``/``.npz``; 422: readable, but not what the model takes)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    """A model input: its name, numpy dtype and shape (None for a dynamic axis)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    @classmethod
    def from_ort(cls, node) -> InputSpec:
        """From an ``onnxruntime.NodeArg``."""
        if node.type not in ORT_DTYPES:
            raise ValueError(f"input {node.name!r}: type {node.type} cannot be sent as an array")
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in node.shape)
        return cls(node.name, np.dtype(ORT_DTYPES[node.type]), shape)

    def shape_text(self) -> str:
        return "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + ")"


def decode_batch(body: bytes, inputs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The model feeds in a request body, checked against ``inputs``.

    Raises:
        PayloadError: A malformed file, an object array, or an array the model does not take.
    """
    if body.startswith(NPY_MAGIC):
        if len(inputs) != 1:
            names = ", ".join(repr(i.name) for i in inputs)
            raise PayloadError(
                f"the model has {len(inputs)} inputs ({names}): send an .npz with one array per input", 422
            )
        arrays = {inputs[0].name: _read_npy(body, inputs[0].name)}
    elif body.startswith(ZIP_MAGIC):
        arrays = _read_npz(body)
    else:
        raise PayloadError("the body is neither an .npy file nor an .npz archive")
    expected = {i.name for i in inputs}
    unknown = sorted(set(arrays) - expected)
    missing = sorted(expected - set(arrays))
    if unknown or missing:
        parts = [
            f"unknown input(s) {unknown}" if unknown else "",
            f"missing input(s) {missing}" if missing else "",
        ]
        raise PayloadError("; ".join(p for p in parts if p) + f"; the model takes {sorted(expected)}", 422)
    for spec in inputs:
        _check(arrays[spec.name], spec)
    return arrays


def encode_arrays(arrays: list[np.ndarray]) -> bytes:
    """Outputs as an ``.npz`` archive whose members are named 0, 1, ... in the model's output order."""
    buffer = io.BytesIO()
    np.savez(buffer, **{str(i): np.asarray(a) for i, a in enumerate(arrays)})
    return buffer.getvalue()


def _read_npz(body: bytes) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise PayloadError(f"the .npz archive cannot be read: {exc}") from exc
    if sum(m.file_size for m in members) > 4 * len(body) + (1 << 20):
        raise PayloadError(
            "the .npz archive unpacks to far more than it holds: send it uncompressed (np.savez)"
        )
    arrays: dict[str, np.ndarray] = {}
    for member in members:
        if not member.filename.endswith(".npy"):
            raise PayloadError(f"the .npz archive holds {member.filename!r}, not an .npy file")
        name = member.filename[: -len(".npy")]
        if name in arrays:
            raise PayloadError(f"the .npz archive holds {name!r} twice")
        try:
            data = archive.read(member)
        except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError) as exc:
            raise PayloadError(f"{member.filename!r} in the .npz archive cannot be read: {exc}") from exc
        arrays[name] = _read_npy(data, name)
    return arrays


def _read_npy(data: bytes, name: str) -> np.ndarray:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise PayloadError(
                f"input {name!r}: .npy format version {version} is not supported (use np.save)"
            )
    except PayloadError:
        raise
    except Exception as exc:  # numpy raises ValueError and others on a bad header
        raise PayloadError(f"input {name!r}: not a readable .npy file: {exc}") from exc
    if dtype.hasobject:
        raise PayloadError(
            f"input {name!r}: object arrays are refused (the server never unpickles data); send a numeric array",
            422,
        )
    if any(d < 0 for d in shape):
        raise PayloadError(f"input {name!r}: the .npy header has a negative dimension {shape}")
    needed = math.prod(shape) * dtype.itemsize
    held = len(data) - stream.tell()
    if held != needed:
        raise PayloadError(
            f"input {name!r}: the .npy data is {held} bytes; shape {tuple(shape)} of {dtype} needs {needed}"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    array = array.reshape(shape, order="F" if fortran else "C")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


def _check(array: np.ndarray, spec: InputSpec) -> None:
    if array.dtype != spec.dtype:
        raise PayloadError(f"input {spec.name!r}: dtype {array.dtype}, the model takes {spec.dtype}", 422)
    fits = len(array.shape) == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape, array.shape, strict=True)
    )
    if not fits:
        raise PayloadError(
            f"input {spec.name!r}: shape {tuple(array.shape)}, the model takes {spec.shape_text()}", 422
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise PayloadError(f"input {spec.name!r} holds NaN or infinity", 422)
