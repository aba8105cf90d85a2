"""Objectives that compare with the FP32 model instead of labels: ``agreement`` and ``cosine``."""

from __future__ import annotations

from typing import Any

import numpy as np

from autoquant.objectives._base import register_objective
from autoquant.objectives._common import (
    MeanObjective,
    batch_size,
    check_reference,
    class_scores,
    top_classes,
)


@register_objective("agreement")
class Agreement(MeanObjective):
    """Share of samples whose top-1 class equals the FP32 model's top-1 class, in [0, 1].

    Uses the first output, of shape [N, C] or [N, C, 1, 1]; ties go to the lower class id on both
    sides, so the FP32 model scores exactly 1.0 against itself.
    """

    needs_reference = True
    binary_scores = True

    def _values(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> np.ndarray:
        reference = check_reference(reference, outputs, self.name)
        predicted = top_classes(class_scores(outputs, self.name), 1)[:, 0]
        expected = top_classes(class_scores(reference, self.name), 1)[:, 0]
        return predicted == expected


def _max_scaled(rows: np.ndarray) -> np.ndarray:
    """Rows divided by their largest magnitude (zero rows stay zero), so squares cannot overflow."""
    largest = np.abs(rows).max(axis=1, keepdims=True) if rows.shape[1] else np.zeros((len(rows), 1))
    return rows / np.where(largest > 0, largest, 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows; 1.0 for two zero rows, 0.0 for one zero row.

    Equal rows give exactly 1.0 (``sqrt(x * x) == x`` in IEEE arithmetic).
    """
    a, b = _max_scaled(a), _max_scaled(b)
    dot = np.einsum("ij,ij->i", a, b)
    norm_a, norm_b = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = dot / np.sqrt(norm_a * norm_b)
    cosine = np.where((norm_a == 0) | (norm_b == 0), ((norm_a == 0) & (norm_b == 0)).astype(float), cosine)
    return np.clip(cosine, -1.0, 1.0)


@register_objective("cosine")
class Cosine(MeanObjective):
    """Mean over samples of the cosine similarity between the outputs and the FP32 outputs.

    All outputs of a sample are flattened and concatenated into one vector. A pair of zero vectors
    counts as 1.0, a zero vector against a non-zero one as 0.0. The score lies in [-1, 1].
    """

    needs_reference = True

    def _values(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> np.ndarray:
        reference = check_reference(reference, outputs, self.name)
        size = batch_size(outputs, self.name)
        if size == 0:
            return np.empty(0)

        def flat(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([array.reshape(size, -1).astype(np.float64) for array in arrays], axis=1)

        return cosine_rows(flat(outputs), flat(reference))
