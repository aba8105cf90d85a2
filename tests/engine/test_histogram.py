"""HistogramCollector against a reference written here: every value's bin computed on its own, in
exact rational arithmetic (or, for large float32 inputs, in float64, where the product of a
float32 value and a power of two is exact), for adversarial inputs fed in many batch splits."""

from __future__ import annotations

import math
import threading
from fractions import Fraction

import numpy as np
import pytest

from autoquant.engine._histogram import STEP, HistogramCollector


def _reference(batches: list[np.ndarray], bins: int) -> dict:
    """What the collector must report after ``batches``, value by value, with no numpy arithmetic."""
    values = [float(v) for b in batches for v in np.asarray(b).ravel().tolist()]
    finite = [v for v in values if math.isfinite(v)]
    peak = max((abs(v) for v in finite), default=0.0)
    # The smallest power of two strictly above peak: peak = m * 2**e with 0.5 <= m < 1.
    r = 0.0 if peak == 0.0 else math.ldexp(1.0, math.frexp(peak)[1])
    histogram = np.zeros(2 * bins, dtype=np.int64)
    for v in finite:
        histogram[bins + (0 if r == 0.0 else math.floor(Fraction(v) * bins / Fraction(r)))] += 1
    return {
        "range": r,
        "histogram": histogram,
        "count": len(finite),
        "nan_count": sum(math.isnan(v) for v in values),
        "inf_count": sum(math.isinf(v) for v in values),
        "minimum": min(finite, default=0.0),
        "maximum": max(finite, default=0.0),
    }


def _collect(batches: list[np.ndarray], bins: int) -> HistogramCollector:
    collector = HistogramCollector("t", bins=bins)
    for batch in batches:
        collector.update(batch)
    return collector


def _assert_matches(collector: HistogramCollector, expected: dict) -> None:
    stats = collector.result()
    assert stats.range == expected["range"]
    np.testing.assert_array_equal(stats.histogram, expected["histogram"])
    assert (stats.count, stats.nan_count, stats.inf_count) == (
        expected["count"],
        expected["nan_count"],
        expected["inf_count"],
    )
    assert (stats.minimum, stats.maximum) == (expected["minimum"], expected["maximum"])


def _splits(x: np.ndarray, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """The same values as one batch, value by value, in small and random batches, reversed."""
    cuts = np.sort(rng.choice(np.arange(1, x.size), size=min(6, x.size - 1), replace=False))
    return [
        [x],
        [x[i : i + 1] for i in range(x.size)],
        [x[i : i + 7] for i in range(0, x.size, 7)],
        np.split(x, cuts),
        [x[::-1]],
        [x[i : i + 3] for i in range(0, x.size, 3)][::-1],
    ]


def _adversarial(dtype: type, bins: int) -> list[np.ndarray]:
    """Inputs each built to hit one edge of the computation, for a collector of ``bins`` bins."""
    info = np.finfo(dtype)
    tiny = float(info.smallest_subnormal)
    normal = float(info.smallest_normal)
    # the largest magnitude whose range (the next power of two) is still a float64
    huge = float(info.max) if dtype is np.float32 else 2.0**1022
    rng = np.random.default_rng(5)
    # values on the edges of the bins of range 4 and range 16, and their neighbours
    edges = np.array([k * 4.0 / bins for k in range(-bins, bins, max(1, bins // 64))], dtype=dtype)
    near = np.concatenate([np.nextafter(edges, dtype(-np.inf)), np.nextafter(edges, dtype(np.inf))])
    sets = [
        np.concatenate([edges, near, edges * 4, [dtype(3.999)]]),
        # signed zeros and the smallest magnitudes, alone and beside large values (where the
        # scale is below 1, so that a tiny product would round to zero)
        np.array([0.0, -0.0, tiny, -tiny, 2 * tiny, -3 * tiny, normal, -normal, -normal / 3], dtype=dtype),
        np.array([-0.0, -tiny, tiny, -normal, 12345.0, -7.0, -(2.0**-30)], dtype=dtype),
        np.array([-tiny, 2.0**20, -(2.0**-60), -normal * 5, 0.5], dtype=dtype),
        np.array([-tiny] * 5 + [huge / 2, -huge / 3, -1.0], dtype=dtype),
        # powers of two exactly (the range must be strictly above them)
        np.array([1.0, -2.0, 0.25, -(2.0**-20), 2.0**15], dtype=dtype),
        np.array([-(2.0**7)], dtype=dtype),
        # NaN and infinities among values, and alone
        np.array([np.nan, 1.5, -np.inf, -0.25, np.inf, np.nan, 0.0], dtype=dtype),
        np.array([np.nan, np.inf, -np.inf], dtype=dtype),
        # zeros only, then a value
        np.array([0.0, -0.0, 0.0, 0.0, 0.75], dtype=dtype),
        # small magnitudes only (the scale does not fit float32)
        np.array([1e-30, -3e-31, 2e-32, 0.0, -1e-35], dtype=dtype),
        # huge magnitudes
        np.array([huge, -huge, 1.0, -1.0, 1e30, -1e-3], dtype=dtype),
        # growing ranges: batches split anywhere in this still start small
        np.concatenate(
            [rng.normal(scale=s, size=40).astype(dtype) for s in (1e-3, 0.3, 5.0, 700.0, 1e5, 2.0)]
        ),
        # one value, and all values in one bin
        np.array([-3.5], dtype=dtype),
        np.full(9, 1.25, dtype=dtype),
    ]
    if dtype is np.float64:
        sets.append(np.array([1e-300, -1e-305, 3e-301, -(2.0**-1000)], dtype=dtype))
        sets.append(np.array([1e300, -1e-300, -tiny, 2.0**-1074, -5.0], dtype=dtype))
    return sets


@pytest.mark.parametrize("bins", [2, 16, 8192])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adversarial_values_in_every_batch_split_match_the_reference(dtype: type, bins: int) -> None:
    rng = np.random.default_rng(bins)
    for x in _adversarial(dtype, bins):
        expected = _reference([x], bins)
        for batches in _splits(x, rng):
            _assert_matches(_collect(batches, bins), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_inputs_in_one_stream_match_the_reference(dtype: type) -> None:
    """The adversarial sets one after the other: the range grows, bins merge, NaNs come and go."""
    batches = _adversarial(dtype, 1024)
    _assert_matches(_collect(batches, 1024), _reference(batches, 1024))
    _assert_matches(_collect(batches[::-1], 1024), _reference(batches, 1024))


@pytest.mark.parametrize("kind", ["normal", "relu", "negative", "outliers"])
def test_batches_longer_than_a_step_match_a_float64_reference(kind: str) -> None:
    """Batches of several steps of the chunked loop, with sizes off the step boundary; float32
    values times a power of two are exact in float64, so a whole-array float64 floor is exact."""
    rng = np.random.default_rng(len(kind))
    size = 2 * STEP + 12345
    x = rng.normal(scale=3.0, size=size).astype(np.float32)
    if kind == "relu":
        np.maximum(x, 0, out=x)
    elif kind == "negative":
        x = -np.abs(x) - 1.0
    elif kind == "outliers":
        x[rng.integers(0, size, 5)] = [3e4, -7e5, 1e-40, -1e-45, -2e6]
    bins = 8192
    peak = float(np.abs(x.astype(np.float64)).max())
    r = math.ldexp(1.0, math.frexp(peak)[1])
    index = bins + np.floor(x.astype(np.float64) * (bins / r)).astype(np.int64)
    expected = np.bincount(index, minlength=2 * bins)
    for batches in (
        [x],
        [x[: STEP - 1], x[STEP - 1 : 2 * STEP + 1], x[2 * STEP + 1 :]],
        np.array_split(x, 7),
    ):
        collector = _collect(list(batches), bins)
        assert collector.range == r
        np.testing.assert_array_equal(collector.histogram, expected)
        assert (collector.minimum, collector.maximum) == (float(x.min()), float(x.max()))


def test_other_dtypes_and_layouts_are_read_as_float32() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(6, 7)).astype(np.float32)
    inputs = [
        x.T,  # not contiguous
        x[:, ::2],  # strided
        x.astype(np.float16),
        (x * 100).astype(np.int32),
        x.astype(">f4"),  # not native byte order
        np.asfortranarray(x),
    ]
    for values in inputs:
        as_float32 = np.asarray(values).astype(np.float32)
        _assert_matches(_collect([values], 64), _reference([as_float32], 64))


def test_empty_batches_change_nothing() -> None:
    collector = _collect([np.zeros(0, np.float32), np.array([0.5], np.float32), np.zeros((3, 0))], 8)
    _assert_matches(collector, _reference([np.array([0.5], np.float32)], 8))


def test_threads_updating_their_own_collectors_do_not_interfere() -> None:
    """The work arrays are per thread: two threads in the chunked loop at once (numpy releases
    the GIL) give each collector what one thread alone gives."""
    rng = np.random.default_rng(11)
    data = [rng.normal(scale=s, size=3 * STEP).astype(np.float32) for s in (1.0, 50.0)]
    alone = [_collect([x] * 4, 8192).histogram for x in data]
    together: list[np.ndarray] = [np.empty(0), np.empty(0)]

    def run(i: int) -> None:
        together[i] = _collect([data[i]] * 4, 8192).histogram

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for mine, expected in zip(together, alone, strict=True):
        np.testing.assert_array_equal(mine, expected)


def test_float64_values_too_small_for_a_float64_scale() -> None:
    """Below about 2**-1011, bins / range overflows a float64; the bins are still exact."""
    x = np.array([5e-324, -1e-310, 0.0, -5e-324, 2.0**-1030])
    for bins in (2, 8192, 2**20):
        _assert_matches(_collect([x[:1], x[1:]], bins), _reference([x], bins))
