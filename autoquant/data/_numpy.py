"""Samples stored as ``.npy``/``.npz`` arrays, and the array helpers shared with LMDB and callables.

An array whose rank equals the model input rank is a stack of samples (leading sample axis); one
rank less is a single sample.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from autoquant.data._base import (
    DataReader,
    InputSpec,
    Sample,
    file_or_folder_of,
    files_with,
    format_shape,
    register_reader,
)
from autoquant.errors import DataError

LABELS_KEY = "labels"
ARRAY_SUFFIXES = (".npy", ".npz")


def match_names(keys: Iterable[str], inputs: Sequence[InputSpec], where: str) -> dict[str, str]:
    """Map stored array names to model input names.

    Arrays named after the inputs map to themselves; for a single-input model any one array does.
    A ``labels`` array is ignored unless the model has an input of that name.

    Raises:
        DataError: The names do not match the model inputs.
    """
    names = [spec.name for spec in inputs]
    keys = [key for key in keys if key != LABELS_KEY or LABELS_KEY in names]
    if set(keys) == set(names):
        return {key: key for key in keys}
    if len(names) == 1 and len(keys) == 1:
        return {keys[0]: names[0]}
    raise DataError(
        f"{where}: holds arrays {sorted(keys)}, the model inputs are {names}; name the arrays after them"
    )


def count_samples(
    shapes: Mapping[str, tuple[int, ...]], inputs: Sequence[InputSpec], where: str
) -> int | None:
    """Samples held by arrays of these shapes (keyed by input name): the stack size, or None for one sample.

    Raises:
        DataError: A rank fits neither a sample nor a stack, or inputs disagree on the stack size.
    """
    sizes = set()
    for spec in inputs:
        shape = tuple(shapes[spec.name])
        if not spec.shape:
            raise DataError(
                f"{where}: model input '{spec.name}' is a scalar (rank 0); autoquant stacks samples along "
                "a first, batch axis of every input; export the model with one on this input"
            )
        if len(shape) == len(spec.shape):
            sizes.add(shape[0])
        elif len(shape) == len(spec.shape) - 1:
            sizes.add(None)
        else:
            raise DataError(
                f"{where}: input '{spec.name}' has shape {format_shape(shape)}, the model expects "
                f"{format_shape(spec.shape[1:])} per sample or {format_shape(spec.shape)} for a stack"
            )
    if len(sizes) != 1:
        raise DataError(f"{where}: the inputs hold different numbers of samples: {shapes}")
    return sizes.pop()


def split_samples(
    arrays: Mapping[str, np.ndarray], inputs: Sequence[InputSpec], where: str
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield ``(sample_id, arrays)`` for each sample in arrays keyed by input name (a stack or one)."""
    size = count_samples({name: np.shape(array) for name, array in arrays.items()}, inputs, where)
    if size is None:
        yield where, dict(arrays)
        return
    for index in range(size):
        yield f"{where}[{index}]", {name: array[index] for name, array in arrays.items()}


def npz_shapes(file: str | Path | IO[bytes]) -> dict[str, tuple[int, ...]]:
    """The array shapes of an ``.npz`` archive, read from the headers without loading the data."""
    shapes = {}
    with zipfile.ZipFile(file) as archive:
        for member in archive.namelist():
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape = np.lib.format.read_array_header_1_0(stream)[0]
                else:
                    shape = np.lib.format.read_array_header_2_0(stream)[0]
            shapes[member.removesuffix(".npy")] = shape
    return shapes


def _file_shapes(path: Path, inputs: Sequence[InputSpec]) -> dict[str, tuple[int, ...]]:
    if path.suffix.lower() == ".npy" and len(inputs) != 1:
        raise DataError(
            f"{path}: a .npy file feeds one input, the model has {len(inputs)} ({[s.name for s in inputs]}); "
            "use .npz files with one array per input, named after it"
        )
    try:
        if path.suffix.lower() == ".npz":
            return npz_shapes(path)
        return {inputs[0].name: np.load(path, mmap_mode="r", allow_pickle=False).shape}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read the array file ({exc})") from None


@register_reader("numpy")
class NumpyReader(DataReader):
    """Samples from a ``.npy`` file, an ``.npz`` file or a folder of them (sorted by name).

    A ``.npy`` file feeds a single-input model; ``.npz`` arrays are named after the inputs and may
    hold a ``labels`` array of class ids (``data.labels`` in the config takes precedence). ``.npy``
    files are memory-mapped and ``.npz`` files are read one at a time, so only what is read is held.
    """

    expects = "a .npy/.npz file or a folder of them"

    @classmethod
    def claims(cls, source: str) -> bool:
        """A ``.npy``/``.npz`` file, or a folder holding such files."""
        return file_or_folder_of(source, ARRAY_SUFFIXES, ARRAY_SUFFIXES)

    def _open(self) -> None:
        path = Path(self.source)
        if path.is_dir():
            self._files = files_with(path, ARRAY_SUFFIXES)
        elif path.is_file():
            self._files = [path]
        else:
            raise DataError(f"{self.source}: no such .npy/.npz file or folder")
        self._sizes: list[int] = []
        file_labels: list[Any] = []
        files_with_labels = 0
        for file in self._files:
            shapes = _file_shapes(file, self.inputs)
            names = match_names(shapes, self.inputs, str(file))
            stored = {name: shapes[key] for key, name in names.items()}
            size = count_samples(stored, self.inputs, str(file))
            self._sizes.append(1 if size is None else size)
            if LABELS_KEY in shapes and LABELS_KEY not in names and self.config.labels is None:
                with np.load(file, allow_pickle=False) as archive:
                    labels = [int(label) for label in np.asarray(archive[LABELS_KEY]).reshape(-1)]
                if len(labels) != self._sizes[-1]:
                    raise DataError(f"{file}: {len(labels)} labels for {self._sizes[-1]} samples")
                file_labels += labels
                files_with_labels += 1
        if files_with_labels:
            if files_with_labels != len(self._files):
                raise DataError(
                    f"{self.source}: only {files_with_labels} of {len(self._files)} files hold a 'labels' array; "
                    "add one to every file or set data.labels"
                )
            self.labels, self.labels_path = file_labels, self.source

    def _count(self) -> int | None:
        return sum(self._sizes)

    def _samples(self) -> Iterator[Sample]:
        index = 0
        for file in self._files:
            if file.suffix.lower() == ".npz":
                with np.load(file, allow_pickle=False) as archive:
                    names = match_names(archive.files, self.inputs, str(file))
                    arrays = {name: archive[key] for key, name in names.items()}
            else:
                arrays = {self.inputs[0].name: np.load(file, mmap_mode="r", allow_pickle=False)}
            for sample_id, sample in split_samples(arrays, self.inputs, str(file)):
                yield Sample(sample, self._label(index), sample_id)
                index += 1
