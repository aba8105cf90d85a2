"""How small a decay the test set can resolve, estimated before the search from the FP32 model's
per-sample scores (each sample scored alone: ``objective.score([i])``).

A decay ``d`` is resolved at level ``c`` (one-sided, e.g. 0.95) when a trial whose true decay is
0 gets an upper bound below ``d``, or, alike, a trial that loses ``d`` gets a lower bound above 0.

* **Scores of 0 or 1 per sample** (top-1, top-5, agreement: objectives with ``binary_scores``,
  or any whose per-sample scores are all 0 or 1 with both present): a decay ``d`` is ``d x n`` samples
  lost net. With ``k`` samples lost and none gained, a test set of ``n`` samples tells the loss
  from none at level ``c`` only when ``k >= -ln(1 - c)`` (the "rule of three" at 95 %: with no
  loss seen in ``n`` samples, the loss rate's upper bound is ``3 / n``). So the smallest decay
  resolved is ``-ln(1 - c) / n`` and a budget ``b`` needs ``-ln(1 - c) / b`` samples. This is
  the best case: samples that INT8 gets right and FP32 wrong only widen the interval.
* **Continuous scores** (IoU, cosine against labels, a user's mean score): the smallest decay
  resolved is ``z x sd / sqrt(n)``, ``z`` the normal quantile of ``c`` and ``sd`` the standard
  deviation of the FP32 per-sample scores across the test set, taken as that of the paired
  per-sample difference FP32 - INT8: the spread of an INT8 model that moves each sample's score
  as much as the scores vary from sample to sample. A budget ``b`` needs ``(z x sd / b)^2``.
  A close INT8 model gets a narrower interval, a poor one a wider: each trial's own interval is
  what decides (``search.budget_confidence``).

A relative decay divides both by the FP32 score. Continuous FP32 per-sample scores that do not
vary (``cosine``, which compares the model with FP32 itself) give no estimate. Above :data:`MAX_SAMPLES` samples, the spread is estimated on a seeded subset of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

#: The level of "resolved" when ``search.budget_confidence`` is not set (one-sided).
DEFAULT_LEVEL = 0.95
#: At most this many samples are scored one by one for the spread (a seeded subset beyond).
MAX_SAMPLES = 5000


@dataclass(frozen=True)
class Resolution:
    """The smallest decay a test set resolves, and the test-set size that would resolve the budget.

    Attributes:
        samples: Test samples.
        level: One-sided confidence level.
        spread: Standard deviation of the FP32 per-sample scores.
        binary: Whether every per-sample score is 0 or 1 (the rule of flips applies).
        resolvable_decay: The smallest decay the test set tells from none at ``level``.
        budget: ``search.accept_int8_decay``.
        needed_samples: Test samples that would resolve the budget at ``level``.
    """

    samples: int
    level: float
    spread: float
    binary: bool
    resolvable_decay: float
    budget: float
    needed_samples: int

    @property
    def resolves_budget(self) -> bool:
        """Whether the test set resolves the budget."""
        return self.resolvable_decay <= self.budget

    def method(self) -> str:
        """How the estimate was made, in a few words."""
        if self.binary:
            flips = -math.log(1.0 - self.level)
            return f"scores of 0 or 1 per sample: a decay under {flips:.1f}/n is fewer than {flips:.1f} samples lost"
        z = NormalDist().inv_cdf(self.level)
        return f"{z:.2f} x the FP32 per-sample score spread {self.spread:.3g} / sqrt(n)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the method and whether the budget is resolved."""
        return {**asdict(self), "resolves_budget": self.resolves_budget, "method": self.method()}

    def line(self) -> str:
        """One line saying that the test set cannot resolve the budget, and the size that would."""
        if self.needed_samples < 0:
            return (
                f"the test set ({self.samples} samples) resolves decays of {self.resolvable_decay:.4f} "
                f"and more at {percent(self.level)}; no test set resolves the budget {self.budget:g}"
            )
        return (
            f"the test set ({self.samples} samples) resolves decays of {self.resolvable_decay:.4f} and "
            f"more at {percent(self.level)}, not the budget {self.budget:g}: about {self.needed_samples} test "
            f"samples would ({self.method()})"
        )


def percent(level: float) -> str:
    """``95 %`` for 0.95."""
    return f"{level * 100:g} %"


def estimate_resolution(
    per_sample: np.ndarray,
    samples: int,
    level: float,
    budget: float,
    fp32_score: float,
    relative: bool,
    binary: bool | None = None,
) -> Resolution | None:
    """The resolution of a test set of ``samples`` samples whose FP32 per-sample scores (all of
    them or a subset) are ``per_sample``. ``binary``: the objective's ``binary_scores`` (every
    per-sample score is 0 or 1), or None to tell from the scores (0 and 1 both present). None
    when the scores are continuous and do not vary."""
    scores = np.asarray(per_sample, np.float64)
    if scores.size < 2 or not np.all(np.isfinite(scores)):
        return None
    spread = float(scores.std(ddof=1))
    if binary is None:
        binary = bool(np.all((scores == 0.0) | (scores == 1.0))) and spread > 0.0
    if spread == 0.0 and not binary:
        return None
    scale = abs(fp32_score) if relative and fp32_score else 1.0
    if binary:
        flips = -math.log(1.0 - level)
        resolvable = flips / samples / scale
        needed = flips / (budget * scale) if budget > 0 else math.inf
    else:
        z = NormalDist().inv_cdf(level)
        resolvable = z * spread / math.sqrt(samples) / scale
        needed = (z * spread / (budget * scale)) ** 2 if budget > 0 else math.inf
    needed_samples = math.ceil(needed) if math.isfinite(needed) else -1
    return Resolution(samples, level, spread, binary, resolvable, budget, needed_samples)


def per_sample_scores(score: Any, samples: int, seed: int) -> np.ndarray:
    """``score([i])`` for each sample ``i`` (at most :data:`MAX_SAMPLES`, a seeded subset beyond)."""
    indices = np.arange(samples)
    if samples > MAX_SAMPLES:
        indices = np.sort(np.random.default_rng(seed).choice(samples, MAX_SAMPLES, replace=False))
    return np.asarray([float(score(np.asarray([i]))) for i in indices], np.float64)
