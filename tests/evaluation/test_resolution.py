"""The test set's resolution (evaluation.estimate_resolution) against the bootstrap it predicts:
a paired bootstrap of the decay, computed here with numpy, agrees with the estimate."""

from __future__ import annotations

import math

import numpy as np

from autoquant.evaluation import estimate_resolution

RESAMPLES = 4000


def _lower_bound(differences: np.ndarray, level: float = 0.95) -> float:
    """The one-sided lower bound of the mean paired difference (FP32 - INT8), bootstrapped."""
    rng = np.random.default_rng(1)
    n = len(differences)
    means = differences[rng.integers(0, n, (RESAMPLES, n))].mean(axis=1)
    return float(np.percentile(means, 100 * (1 - level)))


def test_scores_of_0_or_1_resolve_a_decay_from_its_samples_lost() -> None:
    n = 200
    fp32 = np.ones(n)
    fp32[:6] = 0.0  # 97 % correct
    resolution = estimate_resolution(fp32, n, 0.95, 0.005, fp32.mean(), relative=False, binary=True)
    assert resolution is not None and resolution.binary
    assert not resolution.resolves_budget
    assert math.ceil(resolution.needed_samples * 0.005) == 3  # three samples lost at the budget
    smallest = resolution.resolvable_decay * n
    for lost in (math.floor(smallest) - 1, math.ceil(smallest) + 1):  # 2 and 4 samples lost, none gained
        differences = np.zeros(n)
        differences[:lost] = 1.0
        told = _lower_bound(differences) > 0
        assert told == (lost > smallest), (lost, smallest)


def test_continuous_scores_resolve_z_sd_over_sqrt_n() -> None:
    """An INT8 model whose per-sample differences spread like the FP32 scores: its decay's
    bootstrap half-width (one-sided 95 %) is the estimate, to sampling error."""
    rng = np.random.default_rng(0)
    n = 400
    fp32 = np.clip(rng.normal(0.7, 0.15, n), 0, 1)
    resolution = estimate_resolution(fp32, n, 0.95, 0.005, fp32.mean(), relative=False)
    assert resolution is not None and not resolution.binary
    differences = rng.normal(0.0, fp32.std(ddof=1), n)
    half_width = differences.mean() - _lower_bound(differences)
    assert abs(half_width - resolution.resolvable_decay) < 0.15 * resolution.resolvable_decay
    # the size it names resolves the budget: the same estimate at that size is the budget
    bigger = estimate_resolution(fp32, resolution.needed_samples, 0.95, 0.005, fp32.mean(), relative=False)
    assert bigger is not None and bigger.resolves_budget
    assert bigger.resolvable_decay > 0.005 * 0.99


def test_scores_that_do_not_vary_give_no_estimate_unless_they_are_hits() -> None:
    same = np.ones(50)
    assert estimate_resolution(same, 50, 0.95, 0.005, 1.0, relative=False) is None  # cosine vs itself
    hits = estimate_resolution(same, 50, 0.95, 0.005, 1.0, relative=False, binary=True)  # top-1 at 100 %
    assert hits is not None and hits.resolvable_decay > 0.005
    relative = estimate_resolution(same, 50, 0.95, 0.005, 0.5, relative=True, binary=True)
    assert relative is not None and relative.resolvable_decay == hits.resolvable_decay / 0.5
