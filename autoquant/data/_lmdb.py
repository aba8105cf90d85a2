"""Preprocessed samples stored in LMDB, like the seed tool's ``lmdb_save.LMDB_Dataset``.

Each record holds the arrays of one ``put`` (one sample or a stack of samples) as ``.npz`` bytes
under an 8-digit zero-padded key; a bare array is stored as ``data``. Labels go to ``data.label``
in the same folder, one line per record (classification: the record's class ids comma-separated;
detection: the boxes of its one sample).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import lmdb
import numpy as np

from autoquant.data._base import DataReader, Sample, register_reader
from autoquant.data._labels import Box, format_boxes, read_labels
from autoquant.data._numpy import count_samples, match_names, npz_shapes, split_samples
from autoquant.errors import DataError

LABEL_FILE = "data.label"


def _label_line(labels: Any) -> str:
    if isinstance(labels, str):
        line = labels.strip()
    elif isinstance(labels, Box) or (isinstance(labels, Sequence) and labels and isinstance(labels[0], Box)):
        line = format_boxes([labels] if isinstance(labels, Box) else labels)
    else:
        line = ",".join(str(int(label)) for label in np.asarray(labels).reshape(-1))
    if "\n" in line:
        raise DataError(f"labels of one record must fit on one line, got {labels!r}")
    return line


class LmdbWriter:
    """Write preprocessed samples (and labels) to an LMDB folder; appends if it already holds records.

    Example:
        >>> with LmdbWriter("calib_lmdb") as writer:  # doctest: +SKIP
        ...     for images, targets in loader:
        ...         writer.put(images.numpy(), labels=targets.tolist())
    """

    def __init__(self, path: str | Path, map_size: int = 1 << 34) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self.path), map_size=map_size, subdir=True)
        self._index = self._env.stat()["entries"]
        self._labelled: bool | None = (self.path / LABEL_FILE).exists() if self._index else None

    def put(self, inputs: np.ndarray | Mapping[str, np.ndarray], labels: Any = None) -> None:
        """Store one record.

        Args:
            inputs: One array (a single input; a stack with batch dim first, or one sample) or a
                mapping input name -> array.
            labels: None, class ids (list or array of ints, one per sample), boxes (a list of
                :class:`Box` for a record of one sample) or a line already in ``data.label`` format.

        Raises:
            DataError: Labels given for some records but not others, or not on one line.
        """
        if self._labelled is not None and (labels is not None) != self._labelled:
            state = "have labels" if self._labelled else "have none"
            raise DataError(
                f"{self.path}: give labels for every record or for none (earlier records {state})"
            )
        arrays = {"data": inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(array) for name, array in arrays.items()})
        line = None if labels is None else _label_line(labels)
        with self._env.begin(write=True) as txn:
            txn.put(f"{self._index:08d}".encode(), buffer.getvalue())
        if line is not None:
            with open(self.path / LABEL_FILE, "a", encoding="utf-8") as file:
                file.write(line + "\n")
        self._labelled = labels is not None
        self._index += 1

    def close(self) -> None:
        """Flush and close the database."""
        self._env.sync()
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@register_reader("lmdb")
class LmdbReader(DataReader):
    """Samples from an LMDB folder written by :class:`LmdbWriter` (or the seed's ``lmdb_save``).

    Records are read in key order, one at a time; a record holding a stack of samples is split.
    Labels come from ``data.labels`` in the config or else from ``data.label`` in the folder.
    """

    expects = "an LMDB folder (holding data.mdb)"

    @classmethod
    def claims(cls, source: str) -> bool:
        """A folder holding ``data.mdb``, or that file itself."""
        path = Path(source)
        return (path / "data.mdb").is_file() if path.is_dir() else path.is_file() and path.name == "data.mdb"

    def _open(self) -> None:
        path = Path(self.source)
        self._path = path.parent if path.name == "data.mdb" else path
        if not (self._path / "data.mdb").is_file():
            raise DataError(f"{self.source}: no LMDB here (expected a folder holding data.mdb)")
        label_file = self._path / LABEL_FILE
        if self.config.labels is None and label_file.is_file():
            self.labels, self.labels_path = read_labels(label_file, self.config.label_format), str(label_file)
        self._size = 0
        for where, value in self._records():
            try:
                stored = npz_shapes(io.BytesIO(value))
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise DataError(
                    f"{where}: the record is not .npz array data ({exc}); write it with LmdbWriter"
                ) from None
            names = match_names(stored, self.inputs, where)
            size = count_samples({name: stored[key] for key, name in names.items()}, self.inputs, where)
            self._size += 1 if size is None else size

    def _records(self) -> Iterator[tuple[str, bytes]]:
        try:
            env = lmdb.open(str(self._path), readonly=True, lock=False, subdir=True)
        except lmdb.Error as exc:
            raise DataError(f"{self.source}: cannot open the LMDB ({exc})") from None
        try:
            with env.begin() as txn:
                for key, value in txn.cursor():
                    yield f"{self._path}#{key.decode(errors='replace')}", value
        finally:
            env.close()

    def _count(self) -> int | None:
        return self._size

    def _samples(self) -> Iterator[Sample]:
        index = 0
        for where, value in self._records():
            with np.load(io.BytesIO(value), allow_pickle=False) as archive:
                names = match_names(archive.files, self.inputs, where)
                arrays = {name: archive[key] for key, name in names.items()}
            for sample_id, sample in split_samples(arrays, self.inputs, where):
                yield Sample(sample, self._label(index), sample_id)
                index += 1
