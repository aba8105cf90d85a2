"""FP32 reference outputs on disk, written a batch at a time and read back a slice at a time.

A detector or a sequence model can emit megabytes per sample (the PP-OCR recognizer: 40 x 18710
floats, 3 MB), so the reference outputs of a few hundred test samples would otherwise hold
gigabytes in memory for the whole study. Each output is a raw C-order file beside a small
``meta.json`` (dtypes, shapes, batch axes) in one folder of the cache; the folder appears whole
(staged, then renamed) or not at all, so concurrent writers and interrupted runs are safe.
Slices are read with plain file reads, not a memory map, so they leave no resident pages behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

META_FILE = "meta.json"


class StoredArray:
    """A read-only array on disk whose first axis is the sample axis; ``array[a:b]`` reads rows a..b."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self._row = math.prod(self.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("a stored reference is read by slices of samples")
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("a stored reference is read by contiguous slices")
        rows = max(stop - start, 0)
        with open(self.path, "rb") as f:
            f.seek(start * self._row * self.dtype.itemsize)
            data = np.fromfile(f, self.dtype, rows * self._row)
        return data.reshape((rows, *self.shape[1:]))


def write_reference(
    folder: Path, batches: Iterable[Sequence[np.ndarray]], batch_axes: Sequence[int]
) -> list[StoredArray]:
    """Store ``batches`` (each a list with one sample-first array per output) in ``folder``.

    When another process stored the same folder first, its copy is kept and returned.

    Raises:
        OSError: The cache folder cannot be written.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        shapes: list[list[int]] = []
        dtypes: list[str] = []
        with contextlib.ExitStack() as stack:
            files: list[BinaryIO] = []
            for batch in batches:
                if not files:
                    files = [
                        stack.enter_context(open(staging / f"out{i}.bin", "wb")) for i in range(len(batch))
                    ]
                    shapes = [[0, *a.shape[1:]] for a in batch]
                    dtypes = [a.dtype.str for a in batch]
                for f, shape, array in zip(files, shapes, batch, strict=True):
                    f.write(np.ascontiguousarray(array).tobytes())
                    shape[0] += array.shape[0]
        meta = {"dtypes": dtypes, "shapes": shapes, "batch_axes": list(batch_axes)}
        (staging / META_FILE).write_text(json.dumps(meta))
        try:
            os.replace(staging, folder)
        except OSError:  # the folder exists: another writer's complete copy, or a stale one
            if read_reference(folder) is None:
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(staging, folder)
    except OSError as exc:
        if exc.filename is None:  # a write into an open file names none: name the cache folder
            raise OSError(exc.errno, exc.strerror, str(folder)) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stored = read_reference(folder)
    assert stored is not None
    return stored[0]


def read_reference(folder: Path) -> tuple[list[StoredArray], list[int]] | None:
    """The stored outputs and their batch axes, or None when ``folder`` is absent or incomplete."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        arrays = [
            StoredArray(folder / f"out{i}.bin", np.dtype(d), tuple(s))
            for i, (d, s) in enumerate(zip(meta["dtypes"], meta["shapes"], strict=True))
        ]
        axes = [int(a) for a in meta["batch_axes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for a in arrays:
        try:
            if a.path.stat().st_size != math.prod(a.shape) * a.dtype.itemsize:
                return None
        except OSError:
            return None
    return arrays, axes
