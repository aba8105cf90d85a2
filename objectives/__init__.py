"""Objectives: how a quantized model is scored on the test data.

Use :func:`create_objective` with ``test.objective`` (and ``test.decode`` for ``map``) to get a
fresh :class:`Objective` per evaluation, feed it batches with ``update`` and read ``score()``.
Built-ins: ``top1``, ``top5``, ``agreement``, ``cosine`` and ``map``; register more with
:func:`register_objective`, or name your own as ``module:function`` (see
``autoquant/objectives/example_user_objective.py``).
"""

from autoquant.objectives._agreement import Agreement, Cosine
from autoquant.objectives._base import (
    Objective,
    create_objective,
    needs_labels,
    needs_reference,
    objective_name,
    register_objective,
    registered_objectives,
    supports_resampling,
)
from autoquant.objectives._classification import Top1, Top5, TopK
from autoquant.objectives._common import MeanObjective
from autoquant.objectives._detection import Detection, MeanAveragePrecision, average_precision

__all__ = [
    "Agreement",
    "Cosine",
    "Detection",
    "MeanAveragePrecision",
    "MeanObjective",
    "Objective",
    "Top1",
    "Top5",
    "TopK",
    "average_precision",
    "create_objective",
    "needs_labels",
    "needs_reference",
    "objective_name",
    "register_objective",
    "registered_objectives",
    "supports_resampling",
]
