"""Top-k accuracy against integer class labels: ``top1`` and ``top5``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from autoquant.errors import DataError
from autoquant.objectives._base import register_objective
from autoquant.objectives._common import MeanObjective, check_labels, class_ids, class_scores, top_classes


class TopK(MeanObjective):
    """Share of samples whose label is among the ``k`` highest class scores.

    The class scores are output ``output`` (default: the first), of shape [N, C] or [N, C, 1, 1];
    logits or probabilities alike. Ties go to the lower class id (as ``argmax``), so a tie is not
    counted as a hit for every tied class.

    Args:
        output: Position of the class-score output in the model outputs.
    """

    k: ClassVar[int]
    needs_labels = True
    binary_scores = True

    def __init__(self, output: int = 0) -> None:
        super().__init__()
        self.output = output

    def _values(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> np.ndarray:
        scores = class_scores(outputs, self.name, self.output, min_classes=self.k)
        classes = class_ids(check_labels(labels, len(scores), self.name), self.name)
        outside = (classes < 0) | (classes >= scores.shape[1])
        if outside.any():
            position = int(np.argmax(outside))
            raise DataError(
                f"{self.name}: label {classes[position]} of sample {position} is outside the "
                f"{scores.shape[1]} classes [0, {scores.shape[1]}) of output {self.output}"
            )
        return (top_classes(scores, self.k) == classes[:, None]).any(axis=1)


@register_objective("top1")
class Top1(TopK):
    """Top-1 accuracy: the highest class score is the label."""

    k = 1


@register_objective("top5")
class Top5(TopK):
    """Top-5 accuracy: the label is among the five highest class scores (needs C >= 5)."""

    k = 5
