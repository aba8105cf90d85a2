"""Exact streaming histograms of one tensor's values.

The histogram has ``2 * bins`` bins over ``[-R, R)``, where ``R`` is the smallest power of two
strictly above the largest magnitude seen so far. When a batch brings a larger magnitude, ``R``
doubles and neighbouring bins merge pairwise. Because ``bins`` and ``R`` are powers of two, a
value's bin index after any number of merges equals the index it would have had if ``R`` had been
known from the start, so the result is exact and does not depend on the batch size or order.

How :meth:`HistogramCollector.update` spends its time (the statistics pass spends most of its
own there, one call per tensor and batch): two reductions over the whole batch for its minimum and
maximum (which also reveal NaN and infinities, and give the range), then steps of :data:`STEP`
values whose work arrays, allocated once per thread, stay in the CPU cache. Each step scales
(and floors, if any value is negative) in the input's float type, casts to int32 and widens to
the platform integer (two casts that vectorize, where numpy's float to int64 cast does not), and
counts with ``bincount`` over the bins between the batch's lowest and highest index only (with
``np.add.at`` when the step has fewer values than those bins). ``bincount``, about a nanosecond a
value, is most of the time left; ``bench/histogram.py`` times it against the implementation this
one replaced, which made a full-size temporary array at every step.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from autoquant.errors import CalibrationError


@dataclass(frozen=True)
class TensorStats:
    """What the FP32 pass learned about one tensor.

    Attributes:
        name: Tensor name.
        minimum: Smallest finite value (0.0 if none).
        maximum: Largest finite value (0.0 if none).
        range: ``R``; the histogram covers ``[-R, R)``.
        histogram: ``2 * bins`` counts; index ``bins + floor(x * bins / R)``.
        count: Finite values counted.
        nan_count: NaN values seen (not in the histogram).
        inf_count: Infinite values seen (not in the histogram).
    """

    name: str
    minimum: float
    maximum: float
    range: float
    histogram: np.ndarray = field(repr=False)
    count: int
    nan_count: int = 0
    inf_count: int = 0

    @property
    def bins(self) -> int:
        """Fine bins per sign."""
        return self.histogram.size // 2

    @property
    def positive(self) -> np.ndarray:
        """Counts of values in ``[k R/bins, (k+1) R/bins)``, ``k = 0..bins-1`` (zeros included)."""
        return self.histogram[self.bins :]

    @property
    def negative(self) -> np.ndarray:
        """Counts of magnitudes of negative values, bin ``k`` covering ``(k R/bins, (k+1) R/bins]``."""
        return self.histogram[: self.bins][::-1]

    @property
    def magnitude(self) -> np.ndarray:
        """Histogram of ``|x|`` over ``[0, R)`` with ``bins`` bins."""
        return self.positive + self.negative


#: Values per step of :meth:`HistogramCollector.update`: its work arrays (about 1.5 MB) stay in
#: the CPU's cache.
STEP = 1 << 16


class _Work(threading.local):
    """Work arrays of :data:`STEP` values, one set per thread (made on its first use)."""

    def __init__(self) -> None:
        self.f32 = np.empty(STEP, dtype=np.float32)
        self.f64 = np.empty(STEP, dtype=np.float64)
        self.i32 = np.empty(STEP, dtype=np.int32)
        self.intp = np.empty(STEP, dtype=np.intp)


_WORK = _Work()


class HistogramCollector:
    """Streaming, exact collector for one tensor (see the module docstring)."""

    def __init__(self, name: str, bins: int = 8192, out: np.ndarray | None = None) -> None:
        """``out``: a zeroed int64 array of ``2 * bins`` counts to fill in place (a row of the
        pass's one histogram matrix), or None for a new one."""
        if bins < 2 or bins & (bins - 1):
            raise CalibrationError(f"histogram bins must be a power of two, got {bins}")
        self.name = name
        self.bins = bins
        self.histogram = np.zeros(2 * bins, dtype=np.int64) if out is None else out
        self.range = 0.0  # 0 until a non-zero value is seen
        self.minimum = math.inf
        self.maximum = -math.inf
        self.count = self.nan_count = self.inf_count = 0

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values of any shape (not float32 or float64: as float32)."""
        x = np.asarray(values)
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        x = x.reshape(-1)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())  # NaN and inf show up here, so the usual case
        if not (math.isfinite(lo) and math.isfinite(hi)):  # needs no separate isfinite pass
            finite = np.isfinite(x)
            nan = int(np.isnan(x).sum())
            self.nan_count += nan
            self.inf_count += int(x.size - finite.sum()) - nan
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        self.count += x.size
        peak = max(-lo, hi)
        if peak >= self.range:
            self._grow(peak)
        if self.range == 0.0:  # every value so far is zero
            self.histogram[self.bins] += x.size
            return
        self._count(x, lo, hi)

    def _count(self, x: np.ndarray, lo: float, hi: float) -> None:
        """Add the finite values ``x`` (whose extremes ``lo`` and ``hi`` are within the range) to
        the histogram, at positions ``bins + floor(x * bins / range)``, computed exactly.

        ``bins / range`` is a power of two, ``2**shift``, so ``x * 2**shift`` is exact unless it
        is too small for the float type: a negative value would then round to ``-0.0`` and land
        in bin ``bins`` instead of ``bins - 1``. That can only happen when ``shift < 0``, and
        there ``floor(floor(x) * 2**shift)`` is the same integer with no tiny product
        (``floor(x)`` is 0 or at least 1 in magnitude). A scale too large for a float64 (values
        all below about ``2**-1011``) is applied in two exact multiplications. The floor of a
        product is an integer in ``[-bins, bins)``; minus the lowest such index of the batch it
        is a small count index, exact in float32 as in float64. The lowest and highest indices
        are those of ``lo`` and ``hi`` (the mapping is monotonic), computed here in Python.
        """
        bins = self.bins
        shift = (bins.bit_length() - 1) - (math.frexp(self.range)[1] - 1)
        prefloor = shift < 0 and lo < 0.0  # only negative values can round to -0.0
        if prefloor:
            first, last = (math.floor(math.ldexp(math.floor(v), shift)) for v in (lo, hi))
        else:
            first, last = (math.floor(math.ldexp(v, shift)) for v in (lo, hi))
        if first == last:  # one bin holds the whole batch
            self.histogram[bins + first] += x.size
            return
        # float32 cannot hold a scale of 2**128 and more; float32 values are exact in float64
        wide = x.dtype == np.float64 or shift >= 100
        dtype = np.dtype(np.float64) if wide else x.dtype
        factors = [dtype.type(2.0 ** min(shift, 1000))]
        if shift > 1000:
            factors.append(dtype.type(2.0 ** (shift - 1000)))
        offset = dtype.type(first)
        target = self.histogram[bins + first : bins + last + 1]
        work = _WORK
        for start in range(0, x.size, STEP):
            part = x[start : start + STEP]
            n = part.size
            scaled = (work.f64 if wide else work.f32)[:n]
            if prefloor:
                np.floor(part, out=scaled)
                part = scaled
            for factor in factors:
                np.multiply(part, factor, out=scaled)
                part = scaled
            if lo < 0.0:  # the cast below truncates, which is the floor of values >= 0
                np.floor(scaled, out=scaled)
            if first:
                np.subtract(scaled, offset, out=scaled)
            narrow, index = work.i32[:n], work.intp[:n]
            np.copyto(narrow, scaled, casting="unsafe")
            np.copyto(index, narrow)
            if n < target.size:  # fewer values than bins: no table to zero and add
                np.add.at(target, index, 1)
            else:
                target += np.bincount(index, minlength=target.size)

    def _grow(self, peak: float) -> None:
        if peak == 0.0:
            return
        new_range = 2.0 ** (math.floor(math.log2(peak)) + 1)
        if new_range <= peak:  # guard against log2 rounding
            new_range *= 2.0
        if self.range == 0.0:
            self.range = new_range
            return
        # 2**doublings = new_range / range, which can overflow a float (a tiny float64 range)
        doublings = math.frexp(new_range)[1] - math.frexp(self.range)[1]
        factor = 1 << min(doublings, self.bins.bit_length() - 1)
        # Position p holds index i = p - bins; after merging, i' = floor(i / factor).
        merged = self.histogram.reshape(-1, factor).sum(axis=1)
        self.histogram[:] = 0  # in place: the array may be a row of a larger one
        start = self.bins - self.bins // factor
        self.histogram[start : start + merged.size] = merged
        self.range = new_range

    def result(self, copy: bool = True) -> TensorStats:
        """The statistics collected so far (``copy=False``: sharing the collector's counts, for a
        collector that is done)."""
        empty = self.count == 0
        return TensorStats(
            name=self.name,
            minimum=0.0 if empty else self.minimum,
            maximum=0.0 if empty else self.maximum,
            range=self.range,
            histogram=self.histogram.copy() if copy else self.histogram,
            count=self.count,
            nan_count=self.nan_count,
            inf_count=self.inf_count,
        )
