"""The rule for "within budget" and the statistical resolution of the test set.

A trial is within budget when its decay is at most ``search.accept_int8_decay`` (the point
estimate; ``search.budget_confidence`` unset), or, with ``search.budget_confidence`` c, when the
upper bound of its decay's one-sided interval at level c (the 100 c-th percentile of the
bootstrap resamples of the test samples) is. A scorer that gives no interval (an objective that
cannot resample, the user's own scores) is judged by the point estimate.

Before the search, the smallest decay the test set can resolve is estimated from the FP32
per-sample scores (:mod:`autoquant.evaluation`'s ``estimate_resolution``); when it is larger than
the budget, one line says so with the test-set size that would resolve it.
"""

from __future__ import annotations

import logging

import optuna

from autoquant.config import SearchConfig, StudyConfig
from autoquant.evaluation import DEFAULT_LEVEL, Resolution
from autoquant.names import STUDY_RESOLUTION
from autoquant.storage import StudyStorage

logger = logging.getLogger(__name__)


def meets_budget(decay: float, bound: float | None, search: SearchConfig) -> bool:
    """Whether a decay (with its one-sided upper bound, if any) is within the budget."""
    if search.budget_confidence is not None and bound is not None:
        return bound <= search.accept_int8_decay
    return decay <= search.accept_int8_decay


def budget_rule(budget: float, confidence: float | None) -> str:
    """The rule for "within budget" (``search.accept_int8_decay``, ``search.budget_confidence``), in words."""
    if confidence is None:
        return f"the decay (point estimate) <= {budget:g}"
    return f"the upper bound of the decay's one-sided {confidence * 100:g} % interval <= {budget:g}"


def check_resolution(config: StudyConfig, scorer: object) -> Resolution | None:
    """The test set's resolution at ``search.budget_confidence`` (else 95 %), with one warning
    line when it cannot resolve the budget; None when the scorer cannot tell (no per-sample scores)."""
    estimate = getattr(scorer, "resolution", None)
    if estimate is None:
        return None
    resolution = estimate(config.search.budget_confidence or DEFAULT_LEVEL)
    if resolution is not None and not resolution.resolves_budget:
        logger.warning(resolution.line())
    return resolution


def store_resolution(storage: StudyStorage, study: optuna.Study, resolution: Resolution | None) -> None:
    """Keep the resolution in the study, for its summary."""
    value = resolution.to_dict() if resolution is not None else None
    if study.user_attrs.get(STUDY_RESOLUTION) != value:
        storage.call(study.set_user_attr, STUDY_RESOLUTION, value)
