"""Input checks shared by the built-in objectives, and the base of per-sample mean objectives."""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from autoquant.errors import DataError


def as_outputs(outputs: Any, name: str, what: str = "outputs") -> list[np.ndarray]:
    """Check that ``outputs`` is a non-empty list of arrays, each with a batch dimension.

    Raises:
        DataError: Not a list or tuple, empty, or an output is a scalar.
    """
    if not isinstance(outputs, list | tuple):
        raise DataError(
            f"{name}: expected {what} as a list of arrays (one per model output), "
            f"got {type(outputs).__name__}"
        )
    if not outputs:
        raise DataError(f"{name}: expected at least one array in {what}, got an empty list")
    arrays = [np.asarray(output) for output in outputs]
    for index, array in enumerate(arrays):
        if array.ndim == 0:
            raise DataError(f"{name}: {what}[{index}] must have a batch dimension first, got a scalar")
    return arrays


def batch_size(outputs: list[np.ndarray], name: str, what: str = "outputs") -> int:
    """The batch size shared by every output.

    Raises:
        DataError: The outputs disagree on their first dimension.
    """
    sizes = [len(output) for output in outputs]
    if len(set(sizes)) != 1:
        raise DataError(f"{name}: every array in {what} must have the same batch size, got sizes {sizes}")
    return sizes[0]


def check_labels(labels: Any, size: int, name: str) -> list[Any]:
    """Check that there is one label per sample.

    Raises:
        DataError: ``labels`` is ``None`` or its length is not ``size``.
    """
    if labels is None:
        raise DataError(f"{name}: needs one label per sample, got labels=None; set test.labels")
    labels = list(labels)
    if len(labels) != size:
        raise DataError(f"{name}: the batch has {size} samples in its outputs but {len(labels)} labels")
    return labels


def check_reference(reference: Any, outputs: list[np.ndarray], name: str) -> list[np.ndarray]:
    """Check that ``reference`` has the structure of ``outputs`` (same count, same shapes).

    Raises:
        DataError: ``reference`` is ``None`` or does not match.
    """
    if reference is None:
        raise DataError(f"{name}: needs the FP32 reference outputs, got reference=None")
    reference = as_outputs(reference, name, "reference")
    if len(reference) != len(outputs):
        raise DataError(
            f"{name}: expected {len(outputs)} reference arrays (one per output), got {len(reference)}"
        )
    for index, (output, fp32) in enumerate(zip(outputs, reference, strict=False)):
        if output.shape != fp32.shape:
            raise DataError(
                f"{name}: outputs[{index}] has shape {output.shape} but the FP32 reference has {fp32.shape}"
            )
    return reference


def class_scores(outputs: list[np.ndarray], name: str, index: int = 0, min_classes: int = 1) -> np.ndarray:
    """Output ``index`` as float64 class scores of shape [N, C], squeezing trailing 1-dims ([N, C, 1, 1]).

    Raises:
        DataError: There is no such output, or it is not [N, C] with C >= ``min_classes``.
    """
    if index >= len(outputs):
        raise DataError(
            f"{name}: expected at least {index + 1} outputs (class scores in output {index}), "
            f"got {len(outputs)}"
        )
    scores = outputs[index]
    while scores.ndim > 2 and scores.shape[-1] == 1:
        scores = scores[..., 0]
    if scores.ndim != 2 or scores.shape[1] < min_classes:
        raise DataError(
            f"{name}: expected output {index} to hold class scores of shape [N, C] with C >= {min_classes} "
            f"(or [N, C, 1, 1]), got shape {outputs[index].shape}"
        )
    return scores.astype(np.float64)


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best classes per row, best first; ties go to the lower class id, NaN ranks last."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def class_ids(labels: Sequence[Any], name: str) -> np.ndarray:
    """Integer class labels as an int64 array.

    Raises:
        DataError: A label is not an integer (bool, float and detection boxes are refused).
    """
    for position, label in enumerate(labels):
        if isinstance(label, bool | np.bool_) or not isinstance(label, int | np.integer):
            hint = ""
            if isinstance(label, list | tuple):
                hint = "; detection labels (lists of boxes) need the map objective"
            elif isinstance(label, float | np.floating):
                hint = "; class ids must be integers, check the label file"
            raise DataError(
                f"{name}: expected an integer class id per sample, got {type(label).__name__} "
                f"{reprlib.repr(label)} for sample {position}{hint}"
            )
    return np.asarray(labels, dtype=np.int64).reshape(len(labels))


def resample(count: int, indices: np.ndarray | Sequence[int] | None, name: str) -> np.ndarray:
    """Sample positions to score: every sample, or the checked ``indices``.

    Raises:
        DataError: There is no sample to score.
        ValueError: ``indices`` is not a 1-D integer array.
        IndexError: An index is outside ``[0, count)``.
    """
    if indices is None:
        if count == 0:
            raise DataError(f"{name}: no samples to score; update() was not given any sample")
        return np.arange(count)
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(f"{name}: indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
    if indices.size == 0:
        raise DataError(f"{name}: no samples to score; indices is empty")
    if indices.min() < 0 or indices.max() >= count:
        raise IndexError(f"{name}: indices must lie in [0, {count}), got {indices.min()}..{indices.max()}")
    return indices.astype(np.int64)


class MeanObjective:
    """An objective whose score is the mean of one value per sample (accuracy, similarity...).

    Subclasses implement :meth:`_values`; ``update`` stores its result and ``score`` averages it.
    """

    name: str
    needs_labels: bool = False
    needs_reference: bool = False
    #: Every per-sample value is 0 or 1 (a hit or a miss): the test set's resolution counts samples
    #: lost (see ``autoquant.evaluation``'s ``estimate_resolution``).
    binary_scores: bool = False

    def __init__(self) -> None:
        self._batches: list[np.ndarray] = []

    def _values(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> np.ndarray:
        """One value per sample of the batch; raise DataError on unusable input."""
        raise NotImplementedError

    def update(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> None:
        """Add one batch (see :class:`~autoquant.objectives.Objective`).

        Raises:
            DataError: The outputs, labels or reference do not fit this objective.
        """
        values = self._values(as_outputs(outputs, self.name), labels, reference)
        self._batches.append(np.asarray(values, dtype=np.float64).reshape(-1))

    def score(self, indices: np.ndarray | None = None) -> float:
        """Mean over every sample seen, or over the resample ``indices`` (repeats count again).

        Raises:
            DataError: There is no sample to score.
        """
        values = np.concatenate(self._batches) if self._batches else np.empty(0)
        return float(values[resample(len(values), indices, self.name)].mean())
