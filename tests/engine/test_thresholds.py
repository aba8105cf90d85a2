"""Threshold methods against independent reference computations on synthetic data."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from autoquant.config import QuantizationConfig
from autoquant.engine._methods import (
    coarse_histogram,
    jsd_scores,
    kl_scores,
    mse_scores,
    ratio_candidates,
    symkl_scores,
)
from autoquant.engine._statistics import HistogramCollector, Statistics
from autoquant.engine._thresholds import compute_thresholds, methods, tensor_range
from autoquant.errors import CalibrationError

SYM = {"activation_scheme": "symmetric"}


def _stats(values: np.ndarray, name: str = "t", bins: int = 8192):
    collector = HistogramCollector(name, bins=bins)
    collector.update(values.astype(np.float32))
    return collector.result()


def _trt_divergences(counts: np.ndarray, i: int, levels: int) -> tuple[float, float, float]:
    """TensorRT's entropy calibration written out literally for one candidate: KL, symKL, JSD."""
    counts = np.concatenate([counts, np.zeros(max(0, i - len(counts)))])
    p = counts[:i].astype(float).copy()
    p[i - 1] += counts[i:].sum()
    merged = i // levels
    q = np.zeros(i)
    for g in range(levels):
        start = g * merged
        stop = i if g == levels - 1 else start + merged
        mass = counts[start:stop].sum()
        nonzero = [j for j in range(start, stop) if p[j] > 0]
        for j in nonzero:
            q[j] = mass / len(nonzero)
    p, q = p / p.sum(), q / q.sum()

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        total = 0.0
        for x, y in zip(a, b, strict=True):
            if x > 0:
                if y == 0:
                    return float("inf")
                total += x * np.log(x / y)
        return total

    m = (p + q) / 2
    return kl(p, q), kl(p, q) + kl(q, p), 0.5 * kl(p, m) + 0.5 * kl(q, m)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).laplace(size=20000),
        np.random.default_rng(1).normal(size=3000),
        np.concatenate([np.random.default_rng(2).uniform(0, 1, 500), [40.0]]),  # one far outlier
        np.random.default_rng(3).exponential(size=200),  # sparse: many empty bins
    ],
    ids=["laplace", "normal", "outlier", "sparse"],
)
def test_divergences_match_literal_tensorrt_algorithm(values: np.ndarray) -> None:
    counts = np.histogram(np.abs(values), bins=512)[0].astype(float)
    candidates = np.arange(128, 600, 7)  # includes candidates beyond the histogram
    expected = np.array([_trt_divergences(counts, int(i), 128) for i in candidates])
    for column, score in enumerate((kl_scores, symkl_scores, jsd_scores)):
        got = score(counts, candidates, 128)
        finite = np.isfinite(expected[:, column])
        np.testing.assert_array_equal(np.isfinite(got), finite)
        np.testing.assert_allclose(got[finite], expected[finite, column], rtol=1e-9, atol=1e-12)


def _empirical_mse(x: np.ndarray, t: float, levels: int) -> float:
    step = t / (levels - 1)
    q = np.clip(np.round(x / step), -(levels - 1), levels - 1) * step
    return float(np.mean((x - q) ** 2))


@pytest.mark.parametrize("dist", ["uniform", "laplace", "normal"])
def test_mse_threshold_matches_brute_force_quantization(dist: str) -> None:
    rng = np.random.default_rng(11)
    x = {
        "uniform": rng.uniform(-1, 1, 400_000),
        "laplace": rng.laplace(size=400_000),
        "normal": rng.normal(size=400_000),
    }[dist]
    got = tensor_range(_stats(x), QuantizationConfig(method="mse", bins=2048)).threshold
    peak = np.abs(x).max()
    grid = np.linspace(0.3 * peak, peak, 300)
    errors = np.array([_empirical_mse(x, t, 128) for t in grid])
    best = grid[np.argmin(errors)]
    # The chosen threshold must be as good as the brute-force optimum, to within 3 %.
    assert _empirical_mse(x, got, 128) <= 1.03 * errors.min(), (got, best)
    if dist == "uniform":  # clipping a uniform distribution barely pays: the optimum is near the max
        assert got > 0.97 * peak


def test_max_and_percentile_thresholds() -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(-2.0, 1.0, 100_000).astype(np.float32)
    s = _stats(x)
    assert tensor_range(s, QuantizationConfig(method="max", **SYM)).threshold == pytest.approx(
        np.abs(x).max()
    )
    t = tensor_range(s, QuantizationConfig(method="percentile", max_percentile=0.9, **SYM)).threshold
    assert t == pytest.approx(np.quantile(np.abs(x), 0.9), abs=2 * s.range / s.bins)
    assert tensor_range(
        s, QuantizationConfig(method="percentile", max_percentile=1.0, **SYM)
    ).threshold == pytest.approx(np.abs(x).max(), abs=s.range / s.bins)


def test_kl_keeps_the_range_of_a_uniform_distribution_and_clips_a_heavy_tail() -> None:
    rng = np.random.default_rng(9)
    uniform = _stats(rng.uniform(-1, 1, 200_000))
    assert tensor_range(uniform, QuantizationConfig(method="kl")).threshold > 0.95
    heavy = _stats(rng.standard_cauchy(200_000).clip(-1000, 1000))
    assert tensor_range(heavy, QuantizationConfig(method="kl")).threshold < 0.2 * 1000


def test_asymmetric_ranges_per_side() -> None:
    rng = np.random.default_rng(4)
    relu = np.maximum(rng.normal(size=50_000), 0)
    r = tensor_range(_stats(relu), QuantizationConfig(method="max", activation_scheme="asymmetric"))
    assert r.lowest == 0.0 and r.highest == pytest.approx(relu.max())
    skewed = np.concatenate([rng.uniform(-1, 0, 1000), rng.uniform(0, 5, 1000)])
    r = tensor_range(_stats(skewed), QuantizationConfig(method="max", activation_scheme="asymmetric"))
    assert r.lowest == pytest.approx(skewed.min()) and r.highest == pytest.approx(skewed.max())
    r = tensor_range(_stats(skewed), QuantizationConfig(method="max", **SYM))
    assert r.lowest == -r.highest == pytest.approx(-skewed.max())


def test_ratio_search_stays_in_its_range_and_scales_apply_last() -> None:
    rng = np.random.default_rng(6)
    s = _stats(rng.laplace(size=100_000))
    peak = max(-s.minimum, s.maximum)
    for method in ("kl", "symkl", "jsd", "mse"):
        cfg = QuantizationConfig(
            method=method, ratio_search=True, start_ratio=0.3, end_ratio=0.5, max_percentile=1.0
        )
        t = tensor_range(s, cfg).threshold
        assert 0.3 * peak * 0.99 <= t <= 0.5 * peak * 1.01, method
    base = tensor_range(s, QuantizationConfig(method="kl"))
    scaled = tensor_range(s, QuantizationConfig(method="kl", layer_scales={"t": 0.5}))
    assert scaled.threshold == pytest.approx(0.5 * base.threshold)
    candidates = ratio_candidates(10.0, 0.1, 0.7, 1.3, 0.01)
    assert candidates[0] == 70 and candidates[-1] == 130 and len(candidates) == 61


def test_coarse_histogram_is_an_exact_merge_when_bins_divide() -> None:
    fine = np.zeros(8192)
    fine[:4096] = 1 + np.arange(4096) % 5
    coarse, width = coarse_histogram(fine, 1.0, 1024)
    np.testing.assert_array_equal(coarse, fine[:4096].reshape(1024, 4).sum(axis=1))
    assert width == 4.0
    # Not divisible: counts are split in proportion and their total is kept.
    fine[4096:4100] = 3
    coarse, width = coarse_histogram(fine, 1.0, 1024)
    assert coarse.sum() == pytest.approx(fine.sum()) and width == pytest.approx(4100 / 1024)


def test_degenerate_tensors_have_defined_ranges_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    zero = tensor_range(_stats(np.zeros(100), "zeros"), QuantizationConfig(**SYM))
    assert (zero.lowest, zero.highest) == (-1.0, 1.0)
    zero = tensor_range(_stats(np.zeros(100), "zeros"), QuantizationConfig(activation_scheme="asymmetric"))
    assert (zero.lowest, zero.highest) == (0.0, 1.0)
    const = tensor_range(_stats(np.full(100, 2.5), "const"), QuantizationConfig(method="kl", **SYM))
    assert (const.lowest, const.highest) == (-2.5, 2.5)
    const = tensor_range(
        _stats(np.full(100, 2.5), "const"), QuantizationConfig(activation_scheme="asymmetric")
    )
    assert (const.lowest, const.highest) == (0.0, 2.5)
    noisy = np.concatenate([np.linspace(-1, 1, 1000), [np.nan, np.inf, -np.inf]])
    r = tensor_range(_stats(noisy, "noisy"), QuantizationConfig(method="max", **SYM))
    assert r.threshold == pytest.approx(1.0)
    empty = tensor_range(_stats(np.array([np.nan]), "nan_only"), QuantizationConfig(**SYM))
    assert empty.highest == 1.0
    text = caplog.text
    for name in ("zeros", "const", "noisy", "nan_only"):
        assert repr(name) in text


def test_every_registered_method_gives_a_positive_finite_range() -> None:
    rng = np.random.default_rng(12)
    s = _stats(rng.normal(size=20_000))
    assert set(methods()) == {"max", "percentile", "kl", "symkl", "jsd", "mse"}
    for method in methods():
        for scheme in ("symmetric", "asymmetric"):
            r = tensor_range(s, QuantizationConfig(method=method, activation_scheme=scheme, bins=1024))
            assert np.isfinite([r.lowest, r.highest]).all() and r.lowest < 0 < r.highest, (method, scheme)
            assert r.threshold <= max(-s.minimum, s.maximum) * 1.001


def test_layer_scales_must_name_known_tensors() -> None:
    stats = Statistics(key="k", tensors={"t": _stats(np.ones(3))}, samples=3)
    with pytest.raises(CalibrationError, match="nope"):
        compute_thresholds(stats, QuantizationConfig(layer_scales={"nope": 1.1}))


def test_mse_scores_have_their_minimum_inside_for_a_tailed_histogram() -> None:
    counts = np.histogram(np.abs(np.random.default_rng(1).laplace(size=100_000)), bins=2048)[0].astype(float)
    scores = mse_scores(counts, np.arange(1, 2049), 128)
    assert 1 < np.argmin(scores) < 2047
