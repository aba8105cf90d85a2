"""Exact streaming histograms of one tensor's values.

The histogram has ``2 * bins`` bins over ``[-R, R)``, where ``R`` is the smallest power of two
strictly above the largest magnitude seen so far. When a batch brings a larger magnitude, ``R``
doubles and neighbouring bins merge pairwise. Because ``bins`` and ``R`` are powers of two, a
value's bin index after any number of merges equals the index it would have had if ``R`` had been
known from the start, so the result is exact and does not depend on the batch size or order.
"""

from __future__ import annotations

import math
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
        """Add a batch of values of any shape."""
        x = np.asarray(values).ravel()
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
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
        self.histogram += np.bincount(self._indices(x), minlength=2 * self.bins)

    def _indices(self, x: np.ndarray) -> np.ndarray:
        """Histogram positions ``bins + floor(x * bins / range)``, computed exactly.

        ``bins / range`` is a power of two, so the product is exact; its floor is an integer in
        ``[-bins, bins)`` and adding ``bins`` is exact too, in float32 as in float64.
        """
        scale = self.bins / self.range
        dtype = x.dtype if scale < 2.0**100 else np.dtype(np.float64)  # float32 cannot hold the scale
        scaled = x.astype(dtype, copy=False) * dtype.type(scale)
        np.floor(scaled, out=scaled)
        scaled += dtype.type(self.bins)
        return scaled.astype(np.intp)

    def _grow(self, peak: float) -> None:
        if peak == 0.0:
            return
        new_range = 2.0 ** (math.floor(math.log2(peak)) + 1)
        if new_range <= peak:  # guard against log2 rounding
            new_range *= 2.0
        if self.range == 0.0:
            self.range = new_range
            return
        factor = min(round(new_range / self.range), self.bins)
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
