"""Data reader contract, registry and format detection.

A reader yields :class:`Sample` objects lazily, one at a time; the base class validates every
sample against the model inputs, casts it to the input dtype, applies ``limit`` and stacks
:class:`Batch` objects. Readers are registered by name with :func:`register_reader` in
:data:`autoquant.registry.DATA_READERS`; with ``format: auto`` each one is asked in registry
order whether it :meth:`~DataReader.claims` the source. Adding a reader is a change to one file
(plus its import in the package face); the conformance test
(``tests/data/test_reader_conformance.py``) runs over every registered reader.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from autoquant.config import DataConfig
from autoquant.data._labels import read_labels
from autoquant.errors import ConfigError, DataError
from autoquant.registry import DATA_READERS, Registry

logger = logging.getLogger("autoquant.data")

#: Samples named by the warning about NaN or infinity in an allowed data set.
FIRST_SAMPLES = 3


@dataclass(frozen=True)
class Sample:
    """One sample: input name -> array without batch dim, its label and where it came from."""

    inputs: dict[str, np.ndarray]
    label: Any = None
    sample_id: str = ""


@dataclass(frozen=True)
class Batch:
    """Stacked samples, batch dim first; ``labels`` is None when no sample has a label."""

    inputs: dict[str, np.ndarray]
    labels: list[Any] | None
    sample_ids: list[str]


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape including the batch dim (None = dynamic) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


def files_with(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """The files of ``folder`` whose suffix (any case) is one of ``suffixes``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def file_or_folder_of(source: str, file_suffixes: Sequence[str], folder_suffixes: Sequence[str]) -> bool:
    """Whether ``source`` is a file with one of ``file_suffixes`` or a folder holding files with
    one of ``folder_suffixes`` (for :meth:`DataReader.claims`)."""
    path = Path(source)
    if path.is_dir():
        return bool(files_with(path, folder_suffixes))
    return path.is_file() and path.suffix.lower() in file_suffixes


def count_nonfinite(array: np.ndarray) -> tuple[int, int]:
    """The NaN and the infinite values of ``array``: ``(0, 0)`` at once for a non-float array.

    One ``np.isfinite`` pass for float data; the NaN are counted only when something is not finite.
    """
    if array.dtype.kind not in "fc":
        return 0, 0
    finite = np.isfinite(array)
    if finite.all():
        return 0, 0
    nan = int(np.count_nonzero(np.isnan(array)))
    return nan, array.size - int(np.count_nonzero(finite)) - nan


@dataclass
class _NonFinite:
    """The samples holding NaN or infinity in one pass over an allowed data set."""

    samples: int = 0
    nan: int = 0
    inf: int = 0
    first: list[str] = dataclasses.field(default_factory=list)
    last: str = ""


def format_shape(shape: Sequence[int | None]) -> str:
    """``(None, 3, 224, 224)`` -> ``"(?, 3, 224, 224)"``."""
    return "(" + ", ".join("?" if dim is None else str(dim) for dim in shape) + ")"


class DataReader(abc.ABC):
    """A data set read lazily from one source.

    Subclasses implement :meth:`_open` (check the source, list files, read labels; called once by
    ``__init__``), :meth:`_samples` (yield raw samples one at a time) and :meth:`_count` (the number
    of samples in the source, or None when it is not known without reading the data). They never
    validate shapes or dtypes: :meth:`__iter__` does it once for every reader.

    A reader also says which sources it can read without being told (:meth:`claims`) and, for
    messages, what it expects (:attr:`expects`).

    Attributes:
        expects: What the reader reads, for the message when no reader claims a source.
        source: The data source as configured.
        config: The data section of the config.
        inputs: The model inputs.
        limit: The maximum number of samples to yield; 0 means all.
        labels: External labels (one per source sample), or None.
        labels_path: Where ``labels`` came from, for messages.
    """

    expects: ClassVar[str] = ""

    def __init__(self, source: str, config: DataConfig, inputs: Sequence[InputSpec], limit: int = 0) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 (0 means all samples), got {limit}")
        self.source = source
        self.config = config
        self.inputs = tuple(inputs)
        self.limit = limit
        self.labels: list[Any] | None = None
        self.labels_path: str = ""
        self._length: int | None = None
        self._casts_logged: set[str] = set()
        self._nonfinite = _NonFinite()
        self._nonfinite_warned = False
        if config.labels is not None:
            self.labels = read_labels(config.labels, config.label_format)
            self.labels_path = str(config.labels)
        self._open()
        self._check_counts()

    @classmethod
    def claims(cls, source: str) -> bool:
        """Whether this reader can read ``source`` (``data.format: auto``); False by default."""
        return False

    def _open(self) -> None:
        """Check the source and prepare to read it; raise DataError if it is unusable."""

    @abc.abstractmethod
    def _samples(self) -> Iterator[Sample]:
        """Yield the raw samples of the source in order, one at a time (no validation)."""

    @abc.abstractmethod
    def _count(self) -> int | None:
        """Return the number of samples in the source (ignoring ``limit``), None if unknown."""

    def _label(self, index: int) -> Any:
        """The external label of source sample ``index``, or None."""
        return None if self.labels is None else self.labels[index]

    def _check_counts(self) -> None:
        count = self._count()
        if count == 0:
            raise DataError(f"{self.source}: the data set is empty; check the path and the format")
        if count is not None and self.labels is not None and len(self.labels) != count:
            raise DataError(
                f"{self.labels_path}: {len(self.labels)} labels for {count} samples in {self.source}"
            )

    def __len__(self) -> int:
        """The number of samples :meth:`__iter__` yields, at most ``limit``.

        When the source cannot tell its size (a callable returning a generator), the first call
        counts by one pass over the source, stopping at ``limit``. It is an upper bound when
        undecodable images are skipped.
        """
        if self._length is None:
            count = self._count()
            if count is None:
                with contextlib.closing(self._samples()) as samples:
                    count = sum(1 for _ in itertools.islice(samples, self.limit or None))
            self._length = min(count, self.limit) if self.limit else count
        return self._length

    def __iter__(self) -> Iterator[Sample]:
        """Yield validated samples cast to the input dtypes, at most ``limit`` of them.

        Float inputs holding NaN or infinity are refused unless the data section sets
        ``allow_nonfinite``; then a whole pass ends with one warning (once per reader) that counts
        them and names the first samples.

        Raises:
            DataError: A sample does not match the model inputs or holds NaN or infinity, or the
                source yields nothing.
        """
        count = 0
        self._nonfinite = _NonFinite()
        with contextlib.closing(self._samples()) as samples:
            for sample in itertools.islice(samples, self.limit or None):
                yield self._validate(sample)
                count += 1
        if count == 0:
            raise DataError(f"{self.source}: the data set is empty; no sample could be read")
        self._warn_nonfinite(count)

    def _validate(self, sample: Sample) -> Sample:
        names = [spec.name for spec in self.inputs]
        if set(sample.inputs) != set(names):
            raise DataError(
                f"{sample.sample_id}: the sample has inputs {sorted(sample.inputs)}, the model expects {names}"
            )
        arrays = {}
        for spec in self.inputs:
            array = sample.inputs[spec.name]
            shape, expected = np.shape(array), tuple(spec.shape[1:])
            if len(shape) != len(expected) or any(
                e is not None and e != d for d, e in zip(shape, expected, strict=True)
            ):
                raise DataError(
                    f"{sample.sample_id}: input '{spec.name}' has shape {format_shape(shape)}, "
                    f"the model expects {format_shape(expected)}"
                )
            self._check_dtype(sample.sample_id, spec, np.asarray(array).dtype)
            try:
                with np.errstate(over="ignore"):  # an overflow to inf is refused just below
                    arrays[spec.name] = np.array(array, dtype=spec.dtype)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"{sample.sample_id}: input '{spec.name}' is not {spec.dtype} data ({exc})"
                ) from None
            self._check_finite(sample.sample_id, spec.name, arrays[spec.name])
        return dataclasses.replace(sample, inputs=arrays)

    def _check_finite(self, sample_id: str, name: str, array: np.ndarray) -> None:
        """Refuse NaN and infinity in a float input (after the cast, which can overflow) unless
        ``allow_nonfinite`` is set; then count the sample for the warning of :meth:`__iter__`."""
        nan, inf = count_nonfinite(array)
        if not (nan or inf):
            return
        if not self.config.allow_nonfinite:
            raise DataError(
                f"{sample_id}: input '{name}' holds {nan} NaN and {inf} infinite values; fix the data, "
                f"or set {self.config.section}.allow_nonfinite: true to read it as it is"
            )
        seen = self._nonfinite
        if seen.last != sample_id or not seen.samples:  # several inputs of one sample count once
            seen.samples, seen.last = seen.samples + 1, sample_id
            if len(seen.first) < FIRST_SAMPLES:
                seen.first.append(sample_id)
        seen.nan += nan
        seen.inf += inf

    def _warn_nonfinite(self, count: int) -> None:
        """Once per reader, after a whole pass: how many samples held NaN or infinity, and the first."""
        seen = self._nonfinite
        if not seen.samples or self._nonfinite_warned:
            return
        self._nonfinite_warned = True
        more = f" (+{seen.samples - len(seen.first)} more)" if seen.samples > len(seen.first) else ""
        # Formatted here, with no arguments left: the warnings of one stage fold by template, and
        # this one names its own data set (the calibration and test sets may warn in one stage).
        logger.warning(
            f"{self.source}: {seen.samples} of {count} samples hold NaN or infinity ({seen.nan} NaN, "
            f"{seen.inf} infinite values), read as {self.config.section}.allow_nonfinite allows: "
            f"{', '.join(seen.first)}{more}"
        )

    def _check_dtype(self, sample_id: str, spec: InputSpec, dtype: np.dtype) -> None:
        """Refuse a cast that changes what the numbers mean; log the others once per input.

        Exact casts (uint8 images to float32) and casts within a kind (float64 to float32,
        int64 to int32) are made; others (int64 to float32, float to int) are the wrong data.
        """
        if dtype == spec.dtype:
            return
        if not (np.can_cast(dtype, spec.dtype, "safe") or dtype.kind == spec.dtype.kind):
            raise DataError(
                f"{sample_id}: input '{spec.name}' is {dtype} data, the model expects {spec.dtype}; "
                f"convert the data (array.astype(np.{spec.dtype.name})) if that is what it holds"
            )
        if spec.name not in self._casts_logged:
            self._casts_logged.add(spec.name)
            logger.info("%s: casting input '%s' from %s to %s", self.source, spec.name, dtype, spec.dtype)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` stacked samples; the last one may be smaller.

        Raises:
            DataError: Samples of one batch differ in shape (dynamic dims), or see :meth:`__iter__`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        samples = iter(self)
        while chunk := list(itertools.islice(samples, batch_size)):
            ids = [sample.sample_id for sample in chunk]
            try:
                inputs = {spec.name: np.stack([s.inputs[spec.name] for s in chunk]) for spec in self.inputs}
            except ValueError:
                shapes = sorted({format_shape(s.inputs[n].shape) for s in chunk for n in s.inputs})
                raise DataError(
                    f"{ids[0]}..{ids[-1]}: samples of different shapes {shapes} cannot be stacked; "
                    "use batch_size 1 or resize them to one size"
                ) from None
            labels = [sample.label for sample in chunk]
            yield Batch(inputs, None if all(label is None for label in labels) else labels, ids)


ReaderT = TypeVar("ReaderT", bound=type[DataReader])
READERS: Registry[type[DataReader]] = DATA_READERS


def register_reader(name: str) -> Callable[[ReaderT], ReaderT]:
    """Class decorator registering a :class:`DataReader` under ``name`` (a ``data.format`` value)."""
    return READERS.register(name)


def registered_readers() -> dict[str, type[DataReader]]:
    """The registered readers by format name."""
    return dict(READERS.items())


def detect_format(source: str) -> str:
    """The name of the one registered reader that claims ``source``.

    Raises:
        DataError: The source is missing, or no reader or several readers claim it.
    """
    claimants = [name for name, reader in READERS.items() if reader.claims(source)]
    if len(claimants) == 1:
        return claimants[0]
    if claimants:
        raise DataError(
            f"{source}: could be read as {' or '.join(claimants)}; set data.format to one of them"
        )
    if not Path(source).exists():
        raise DataError(f"{source}: no such file or folder")
    expected = "; ".join(reader.expects for _, reader in READERS.items() if reader.expects)
    raise DataError(
        f"{source}: cannot tell the data format; expected {expected}; "
        f"or set data.format to one of {', '.join(READERS.names())}"
    )


def open_reader(config: DataConfig, inputs: Sequence[InputSpec], limit: int = 0) -> DataReader:
    """Open the data set described by a data config section.

    Args:
        config: The data section; ``config.format`` "auto" detects the format from ``config.source``.
        inputs: The model inputs each sample must match.
        limit: The maximum number of samples to read; 0 means all.

    Returns:
        The reader, already checked: its source exists, is not known to be empty and its labels
        count matches.

    Raises:
        ConfigError: No source is configured.
        DataError: A missing source, an unknown format, or unusable data or labels.
    """
    if not config.source:
        raise ConfigError(
            "no data source: set source to an image list or folder, .npy/.npz, LMDB or module:function"
        )
    name = detect_format(config.source) if config.format == "auto" else config.format
    return READERS.get(name)(config.source, config, inputs, limit)
