"""Object detection: ``map``, the mean average precision at IoU 0.5 (VOC style, our own code).

The raw model outputs are turned into boxes by a user ``decode`` function (``test.decode``):
``decode(outputs) -> list[list[Detection]]``, one list per sample of the batch; see
``autoquant.objectives.ssd_decode`` for an example. Labels are lists of
:class:`~autoquant.data.Box` in the same coordinates as the decoded boxes.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoquant.data._labels import Box
from autoquant.errors import DataError
from autoquant.objectives._base import register_objective
from autoquant.objectives._common import as_outputs, batch_size, check_labels, resample


@dataclass(frozen=True)
class Detection:
    """One detected box: class id, confidence and corner coordinates."""

    cls: int
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


DecodeFn = Callable[[list[np.ndarray]], list[list[Detection]]]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x1, y1, x2, y2]`` box with each row of ``boxes`` (continuous coordinates, no +1)."""

    def area(b: np.ndarray) -> np.ndarray:
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(
    detections: Sequence[Detection], boxes: Sequence[Box], iou_threshold: float
) -> np.ndarray:
    """Which detections of one image are true positives (VOC greedy matching).

    By decreasing score, each detection takes the ground-truth box of its class with the highest
    IoU; it is a hit if that IoU is >= ``iou_threshold`` and the box is not taken yet, else a false
    positive (as in the VOC devkit, it does not fall back to the next best box).
    """
    hits = np.zeros(len(detections), dtype=bool)
    truth = np.array([[b.cls, b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=np.float64).reshape(-1, 5)
    taken = np.zeros(len(truth), dtype=bool)
    scores = np.array([d.score for d in detections], dtype=np.float64)
    for index in np.argsort(-scores, kind="stable"):
        det = detections[index]
        candidates = np.flatnonzero(truth[:, 0] == det.cls)
        if not candidates.size:
            continue
        ious = box_iou(np.array([det.x1, det.y1, det.x2, det.y2], dtype=np.float64), truth[candidates, 1:])
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold and not taken[candidates[best]]:
            hits[index] = taken[candidates[best]] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, weights: np.ndarray, truths: float) -> float:
    """All-point interpolated AP (VOC 2010+) of one class.

    Args:
        scores: Detection scores.
        hits: Whether each detection is a true positive.
        weights: How many times each detection counts (its image's count in a resample).
        truths: Number of ground-truth boxes of the class (> 0), counted with the same weights.
    """
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(weights[order] * hits[order])
    false_pos = np.cumsum(weights[order] * ~hits[order])
    recall = np.concatenate([[0.0], true_pos / truths, [1.0]])
    precision = np.concatenate([[0.0], true_pos / np.maximum(true_pos + false_pos, 1e-300), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the best precision at recall >= r
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _check_boxes(labels: list[Any], name: str) -> None:
    for position, boxes in enumerate(labels):
        if not isinstance(boxes, list | tuple) or not all(isinstance(box, Box) for box in boxes):
            raise DataError(
                f"{name}: expected detection labels (a list of Box per sample; data.label_format: "
                f"detection), got {type(boxes).__name__} {reprlib.repr(boxes)} for sample {position}"
            )


@register_objective("map")
class MeanAveragePrecision:
    """mAP@0.5: the mean over classes with at least one ground-truth box of their VOC AP.

    Detections of a class without ground truth are ignored; a class with ground truth but no
    detection has AP 0. Equal scores keep data order. ``score(indices)`` recomputes the mAP on the
    resampled image list, each repeat of an image counting as a distinct image.

    Args:
        decode: Turns the outputs of a batch into one list of :class:`Detection` per sample.
        iou_threshold: Minimum IoU for a detection to match a ground-truth box.
    """

    name: str
    needs_labels = True
    needs_reference = False
    needs_decode = True

    def __init__(self, decode: DecodeFn, iou_threshold: float = 0.5) -> None:
        self.decode = decode
        self.iou_threshold = iou_threshold
        self._images: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._flat_cache: tuple[np.ndarray, ...] | None = None

    def _decoded(self, outputs: list[np.ndarray], size: int) -> list[list[Detection]]:
        what = getattr(self.decode, "__qualname__", repr(self.decode))
        detections = self.decode(outputs)
        if not isinstance(detections, list | tuple) or len(detections) != size:
            got = (
                f"{len(detections)} lists"
                if isinstance(detections, list | tuple)
                else type(detections).__name__
            )
            raise DataError(
                f"{self.name}: decode {what} must return one list of Detection per sample "
                f"({size} for this batch), got {got}"
            )
        for position, found in enumerate(detections):
            if not isinstance(found, list | tuple) or not all(isinstance(d, Detection) for d in found):
                raise DataError(
                    f"{self.name}: decode {what} must return lists of Detection, got "
                    f"{reprlib.repr(found)} for sample {position}"
                )
        return list(detections)

    def _flat(self) -> tuple[np.ndarray, ...]:
        """Detection classes, scores, hits and images; ground-truth classes and images (cached)."""
        if self._flat_cache is None:
            det_cls, det_score, det_hit, truth_cls = (
                np.concatenate(parts) for parts in zip(*self._images, strict=True)
            )
            det_image = np.repeat(np.arange(len(self._images)), [len(image[0]) for image in self._images])
            truth_image = np.repeat(np.arange(len(self._images)), [len(image[3]) for image in self._images])
            self._flat_cache = (det_cls, det_score, det_hit, det_image, truth_cls, truth_image)
        return self._flat_cache

    def update(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> None:
        """Decode one batch and match its detections with the ground-truth boxes.

        Raises:
            DataError: Labels are missing, not boxes or not one per sample, or decode returns
                something other than one list of :class:`Detection` per sample.
        """
        outputs = as_outputs(outputs, self.name)
        labels = check_labels(labels, batch_size(outputs[:1], self.name), self.name)
        _check_boxes(labels, self.name)
        for found, boxes in zip(self._decoded(outputs, len(labels)), labels, strict=True):
            hits = match_detections(found, boxes, self.iou_threshold)
            classes = np.array([d.cls for d in found], dtype=np.int64)
            scores = np.array([d.score for d in found], dtype=np.float64)
            self._images.append((classes, scores, hits, np.array([b.cls for b in boxes], dtype=np.int64)))
        self._flat_cache = None

    def score(self, indices: np.ndarray | None = None) -> float:
        """mAP over every image seen, or over the resampled image list ``indices``.

        Raises:
            DataError: No image was seen, or the images scored have no ground-truth box.
        """
        count = len(self._images)
        weights = np.bincount(resample(count, indices, self.name), minlength=count).astype(np.float64)
        det_cls, det_score, det_hit, det_image, truth_cls, truth_image = self._flat()
        det_weight, truth_weight = weights[det_image], weights[truth_image]
        classes = np.unique(truth_cls[truth_weight > 0])
        if not classes.size:
            raise DataError(
                f"{self.name}: the {int(weights.sum())} images scored have no ground-truth box, "
                f"so mAP is undefined; check test.labels"
            )
        precisions = []
        for cls in classes:
            mask = (det_cls == cls) & (det_weight > 0)
            truths = float(truth_weight[truth_cls == cls].sum())
            precisions.append(average_precision(det_score[mask], det_hit[mask], det_weight[mask], truths))
        return float(np.mean(precisions))
