"""Example ``test.decode`` function for SSD-style models with post-processing in the graph.

Use it with::

    test:
      objective: map
      label_format: detection
      decode: autoquant.objectives.ssd_decode:decode

Layout expected: one output of shape ``[N, K, 7]`` (``[N, 1, K, 7]`` is accepted too), K rows
per image as written by Caffe's ``DetectionOutput`` layer::

    image_id, cls, score, x1, y1, x2, y2

Row ``k`` of ``outputs[0][n]`` belongs to sample ``n`` of the batch whatever its ``image_id``,
except padding rows, which have ``image_id == -1`` and are dropped. Rows with
``score < MIN_SCORE`` are dropped too. Coordinates are kept as the model gives them (Caffe:
relative to the image size, in [0, 1]); the label boxes must use the same units.
"""

from __future__ import annotations

import numpy as np

from autoquant.errors import DataError
from autoquant.objectives._detection import Detection

MIN_SCORE = 0.01


def decode(outputs: list[np.ndarray]) -> list[list[Detection]]:
    """Turn SSD ``DetectionOutput`` rows into one list of :class:`Detection` per sample.

    Args:
        outputs: The model outputs of one batch; the first one holds the detection rows.

    Returns:
        For each sample, its detections with ``score >= MIN_SCORE``, in row order.

    Raises:
        DataError: The first output is not ``[N, K, 7]`` or ``[N, 1, K, 7]``.
    """
    rows = np.asarray(outputs[0]) if len(outputs) else np.empty(0)
    if rows.ndim == 4 and rows.shape[1] == 1:
        rows = rows[:, 0]
    if rows.ndim != 3 or rows.shape[2] != 7:
        raise DataError(
            "ssd_decode: expected a first output of shape [N, K, 7] (image_id, cls, score, x1, y1, x2, y2), "
            f"got shape {rows.shape}"
        )
    samples = []
    for image in rows.astype(np.float64):
        kept = image[(image[:, 0] != -1) & (image[:, 2] >= MIN_SCORE)]
        samples.append([Detection(int(r[1]), float(r[2]), *(float(v) for v in r[3:7])) for r in kept])
    return samples
