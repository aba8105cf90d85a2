"""Statistics stage: one streaming FP32 pass that collects, per activation tensor, min, max and a
fine signed histogram.

The histogram has ``2 * bins`` bins over ``[-R, R)``, where ``R`` is the smallest power of two
strictly above the largest magnitude seen so far. When a batch brings a larger magnitude, ``R``
doubles and neighbouring bins merge pairwise. Because ``bins`` and ``R`` are powers of two, a
value's bin index after any number of merges equals the index it would have had if ``R`` had been
known from the start, so the result is exact and does not depend on the batch size or order.
Memory is ``tensors x bins``; no activation is kept after its batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnxruntime as ort

from autoquant.common import ProgressFn, atomic_write
from autoquant.errors import CalibrationError

logger = logging.getLogger(__name__)

_CACHE_VERSION = "2"  # 2: names stored as a unicode array (no pickle)


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

    def __init__(self, name: str, bins: int = 8192) -> None:
        if bins < 2 or bins & (bins - 1):
            raise CalibrationError(f"histogram bins must be a power of two, got {bins}")
        self.name = name
        self.bins = bins
        self.histogram = np.zeros(2 * bins, dtype=np.int64)
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
        self.histogram = np.zeros_like(self.histogram)
        start = self.bins - self.bins // factor
        self.histogram[start : start + merged.size] = merged
        self.range = new_range

    def result(self) -> TensorStats:
        """The statistics collected so far."""
        empty = self.count == 0
        return TensorStats(
            name=self.name,
            minimum=0.0 if empty else self.minimum,
            maximum=0.0 if empty else self.maximum,
            range=self.range,
            histogram=self.histogram.copy(),
            count=self.count,
            nan_count=self.nan_count,
            inf_count=self.inf_count,
        )


@dataclass(frozen=True)
class Statistics:
    """Statistics of every activation tensor, as collected by :func:`collect_statistics`."""

    key: str
    tensors: dict[str, TensorStats]
    samples: int
    from_cache: bool = False


def _augmented_session(model: onnx.ModelProto, tensors: Iterable[str]) -> ort.InferenceSession:
    """A session over ``model`` that also returns ``tensors`` as outputs (``model`` gains them too)."""
    existing = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # One core stays free for the histograms, which run alongside the next batch.
    options.intra_op_num_threads = max(1, (os.cpu_count() or 2) - 1)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_statistics_pass(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Iterable[dict[str, np.ndarray]],
    bins: int = 8192,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, TensorStats], int]:
    """Run the FP32 model once over ``batches`` and collect statistics of ``tensors``.

    Args:
        model: The prepared FP32 model; the tensors are added to its outputs.
        tensors: Names of the tensors to collect (graph inputs included).
        batches: Feeds, input name -> array with the batch dim first.
        bins: Fine histogram bins per sign (a power of two).
        progress: Called with the number of samples after each batch.

    Returns:
        Statistics per tensor, and the number of samples seen.
    """
    session = _augmented_session(model, tensors)
    output_names = {o.name for o in session.get_outputs()}
    wanted = [t for t in tensors if t in output_names]
    from_feed = [t for t in tensors if t not in output_names]
    collectors = {t: HistogramCollector(t, bins) for t in tensors}
    samples = 0
    # onnxruntime releases the GIL: it runs batch k + 1 on a worker thread while this thread
    # builds the histograms of batch k. At most two batches of activations are alive.
    feeds = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoquant-fp32") as pool:
        feed = next(feeds, None)
        running = pool.submit(session.run, wanted, feed) if feed is not None else None
        while feed is not None:
            results = running.result()
            following = next(feeds, None)
            running = pool.submit(session.run, wanted, following) if following is not None else None
            for name, value in zip(wanted, results, strict=True):
                collectors[name].update(value)
            for name in from_feed:
                if name in feed:
                    collectors[name].update(feed[name])
            del results
            n = len(next(iter(feed.values())))
            samples += n
            if progress is not None:
                progress(n)
            feed = following
    if samples == 0:
        raise CalibrationError("the calibration set yielded no samples")
    return {t: c.result() for t, c in collectors.items()}, samples


def statistics_key(model_hash: str, data_fingerprint: str, bins: int, limit: int) -> str:
    """Cache key of a statistics pass."""
    text = f"v{_CACHE_VERSION}|{model_hash}|{data_fingerprint}|bins={bins}|limit={limit}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save_statistics(stats: Statistics, path: Path) -> None:
    """Write statistics atomically as an ``.npz`` file."""
    names = list(stats.tensors)
    values = [stats.tensors[n] for n in names]

    def write(f: BinaryIO) -> None:
        np.savez(
            f,
            names=np.array(names, dtype=np.str_),
            minimum=np.array([v.minimum for v in values], dtype=np.float64),
            maximum=np.array([v.maximum for v in values], dtype=np.float64),
            range=np.array([v.range for v in values], dtype=np.float64),
            counts=np.array([[v.count, v.nan_count, v.inf_count] for v in values], dtype=np.int64),
            histogram=np.stack([v.histogram for v in values]) if values else np.zeros((0, 2)),
            samples=np.array(stats.samples),
        )

    atomic_write(path, write)


def load_statistics(path: Path, key: str) -> Statistics:
    """Read statistics written by :func:`save_statistics`.

    Every array is read from the archive once: indexing the lazy ``NpzFile`` inside the loop would
    decompress and CRC-check the whole array again for every tensor.
    """
    with np.load(path, allow_pickle=False) as data:
        names, counts, histograms = data["names"], data["counts"], data["histogram"]
        minimum, maximum, ranges = data["minimum"], data["maximum"], data["range"]
        samples = int(data["samples"])
    tensors = {}
    for i, name in enumerate(names.tolist()):
        count, nan, inf = counts[i].tolist()
        tensors[name] = TensorStats(
            name=name,
            minimum=float(minimum[i]),
            maximum=float(maximum[i]),
            range=float(ranges[i]),
            histogram=histograms[i],
            count=count,
            nan_count=nan,
            inf_count=inf,
        )
    return Statistics(key=key, tensors=tensors, samples=samples, from_cache=True)


def _read_cache(path: Path, key: str) -> Statistics | None:
    """The cached statistics at ``path``, or None (with a warning) when the file is unreadable."""
    try:
        return load_statistics(path, key)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring the unreadable statistics cache %s (%s); collecting again", path, exc)
        return None


def collect_statistics(
    load_model: Callable[[], onnx.ModelProto],
    tensors: list[str],
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    key: str,
    cache_dir: Path | None,
    bins: int = 8192,
    progress: ProgressFn | None = None,
) -> Statistics:
    """Return the statistics for ``key``, from the cache when present, else from one FP32 pass.

    Args:
        load_model: Returns the prepared FP32 model (called only on a cache miss).
        tensors: Tensor names to collect.
        batches: Called (only on a cache miss) to get the calibration feeds.
        key: Cache key, see :func:`statistics_key`.
        cache_dir: Cache folder, or ``None`` to disable the cache.
        bins: Fine histogram bins per sign.
        progress: Progress callback, see :func:`run_statistics_pass`.
    """
    path = Path(cache_dir) / f"stats-{key}.npz" if cache_dir is not None else None
    stats = _read_cache(path, key) if path is not None and path.is_file() else None
    if stats is not None and set(tensors) <= set(stats.tensors):
        logger.info("statistics cache hit (%s): skipping the FP32 pass", path.name)
        return stats
    tensor_stats, samples = run_statistics_pass(load_model(), tensors, batches(), bins, progress)
    stats = Statistics(key=key, tensors=tensor_stats, samples=samples)
    if path is not None:
        save_statistics(stats, path)
    return stats
