"""Example of a user-written objective: closeness to the FP32 outputs, ``1 / (1 + MAE)``.

Copy this file and adapt it. An objective is any object with two methods (and three optional
attributes); autoquant creates a fresh one for each model it evaluates, by calling the function
or class named in the config with no arguments::

    test:
      objective: path/to/my_objective.py:make_objective    # or my_package.my_module:make_objective

The protocol:

* ``update(outputs, labels, reference)`` is called once per test batch.

  - ``outputs``: list of numpy arrays, the model outputs in model output order, batch dim first
    (an output that is not batch-first, such as time-major logits, has its batch axis moved
    first: see ``model.output_batch_axes``).
  - ``labels``: one label per sample (``int`` for classification, ``list[Box]`` for detection,
    see ``autoquant.data.Box``), or ``None`` when the test data has no labels.
  - ``reference``: the FP32 model's outputs for the same batch (same structure as ``outputs``),
    or ``None`` unless ``needs_reference`` is true.

  Raise ``autoquant.errors.DataError`` for input you cannot use, saying what you expected and what
  you got: autoquant reports it as a one-line message.
* ``score(indices=None) -> float``: the score over every sample seen so far; **higher is better**.
  With ``indices`` (an int array of sample positions that may repeat: a bootstrap resample),
  the score of that resample; autoquant uses it for a confidence interval. ``score()`` without
  an ``indices`` parameter works too; the interval is then skipped.
* ``name`` (str), ``needs_labels`` and ``needs_reference`` (bool, default False): ask autoquant
  to pass labels (it refuses to run without them) and the FP32 reference outputs.

Run ``python example_user_objective.py`` to see it score two tiny batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoquant.errors import DataError


class MeanAbsoluteError:
    """Score ``1 / (1 + MAE)`` between the outputs and the FP32 reference: 1.0 when identical.

    The MAE of a sample is the mean absolute difference over all its output values; the score
    averages it over samples first, so every sample weighs the same.
    """

    name = "mae"
    needs_labels = False
    needs_reference = True

    def __init__(self) -> None:
        self.errors: list[np.ndarray] = []  # one MAE per sample, one array per batch

    def update(
        self, outputs: list[np.ndarray], labels: list[Any] | None, reference: list[np.ndarray] | None
    ) -> None:
        """Store the MAE of each sample of the batch."""
        if reference is None or len(reference) != len(outputs):
            raise DataError(f"mae: expected {len(outputs)} FP32 reference outputs, got {reference!r:.60}")
        size = len(outputs[0])
        diffs = []
        for output, fp32 in zip(outputs, reference, strict=False):
            if output.shape != fp32.shape or len(output) != size:
                raise DataError(f"mae: output shape {output.shape} does not match the reference {fp32.shape}")
            diffs.append(np.abs(output.astype(np.float64) - fp32).reshape(size, -1))
        self.errors.append(np.concatenate(diffs, axis=1).mean(axis=1))

    def score(self, indices: np.ndarray | None = None) -> float:
        """``1 / (1 + mean MAE)`` over every sample, or over the samples at ``indices``."""
        errors = np.concatenate(self.errors) if self.errors else np.empty(0)
        if indices is not None:
            errors = errors[indices]
        if not errors.size:
            raise DataError("mae: no samples to score")
        return float(1.0 / (1.0 + errors.mean()))


def make_objective() -> MeanAbsoluteError:
    """The function the config names: returns a fresh objective."""
    return MeanAbsoluteError()


if __name__ == "__main__":
    objective = make_objective()
    fp32 = [np.array([[1.0, 2.0], [0.0, 4.0]])]
    int8 = [np.array([[1.0, 2.5], [0.5, 4.5]])]  # per-sample MAE: 0.25 and 0.5
    objective.update(int8, None, fp32)
    objective.update(fp32, None, fp32)  # an exact batch: MAE 0 for both samples
    print(f"score = {objective.score():.4f}  (1 / (1 + 0.1875))")
    print(f"score of the resample [0, 1, 1] = {objective.score(np.array([0, 1, 1])):.4f}  (1 / (1 + 0.4167))")
