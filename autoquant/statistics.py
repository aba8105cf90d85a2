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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnxruntime as ort

from autoquant.common import ProgressFn, atomic_write
from autoquant.errors import CalibrationError
from autoquant.memory_plan import bytes_per_sample, plan_pass

logger = logging.getLogger(__name__)

_CACHE_VERSION = "2"  # 2: names stored as a unicode array (no pickle)

#: Bytes of activations the statistics pass keeps alive at once, unless told otherwise.
DEFAULT_MEMORY_BUDGET = 512 * 2**20


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


@dataclass(frozen=True)
class Statistics:
    """Statistics of every activation tensor, as collected by :func:`collect_statistics`."""

    key: str
    tensors: dict[str, TensorStats]
    samples: int
    from_cache: bool = False


def _augmented_session(model: onnx.ModelProto, tensors: Iterable[str]) -> ort.InferenceSession:
    """A session over ``model`` whose outputs are its own and ``tensors``; the outputs of ``model``
    are restored afterwards, so one model serves a session per group of tensors."""
    original = list(model.graph.output)
    existing = {o.name for o in original} | {i.name for i in model.graph.input}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors if name not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The outputs are handed over to numpy and freed with their batch; an arena would keep the
    # largest batch's worth of them for the whole pass.
    options.enable_cpu_mem_arena = False
    # Each tensor is computed as the graph writes it, whichever others are outputs of the session:
    # a fusion where no output interrupts it (a LayerNorm, Conv with BatchNorm) would round
    # otherwise, and the statistics would depend on how the tensors were grouped.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # One core stays free for the histograms, which run alongside the next batch.
    options.intra_op_num_threads = max(1, (os.cpu_count() or 2) - 1)
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    finally:
        del model.graph.output[:]
        model.graph.output.extend(original)


Feeds = Iterable[dict[str, np.ndarray]]


def _runs(feeds: Feeds, samples_per_run: int) -> Iterator[dict[str, np.ndarray]]:
    """The feeds, each cut into runs of at most ``samples_per_run`` samples (0: whole)."""
    for feed in feeds:
        size = len(next(iter(feed.values())))
        step = samples_per_run or size
        for start in range(0, size, step):
            yield feed if step >= size else {k: v[start : start + step] for k, v in feed.items()}


def _one_pass(
    session: ort.InferenceSession,
    wanted: list[str],
    runs: Iterator[dict[str, np.ndarray]],
    update: Callable[[dict[str, np.ndarray], list[np.ndarray]], None],
    overlap: bool,
) -> None:
    """Run ``session`` over ``runs`` and hand each run's outputs to ``update``.

    With ``overlap``, onnxruntime (which releases the GIL) runs the next feed on a worker thread
    while this thread builds the histograms of the last one: two runs' activations are alive.
    """
    if not overlap:
        for feed in runs:
            results = session.run(wanted, feed)
            update(feed, results)
            del results
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoquant-fp32") as pool:
        feed = next(runs, None)
        running = pool.submit(session.run, wanted, feed) if feed is not None else None
        while feed is not None:
            results = running.result()
            following = next(runs, None)
            running = pool.submit(session.run, wanted, following) if following is not None else None
            update(feed, results)
            del results
            feed = following


def run_statistics_pass(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Callable[[], Feeds] | Sequence[dict[str, np.ndarray]],
    bins: int = 8192,
    progress: ProgressFn | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[dict[str, TensorStats], int]:
    """Run the FP32 model over ``batches`` and collect statistics of ``tensors``.

    The activations alive at once stay within ``memory_budget`` bytes: large models run their
    batches in sub-batches, and models whose one sample exceeds the budget run one pass over the
    data per group of tensors (:mod:`autoquant.memory_plan`). The statistics are the same
    whatever the plan.

    Args:
        model: The prepared FP32 model (its outputs are restored after each session is made).
        tensors: Names of the tensors to collect (graph inputs included), in topological order.
        batches: The calibration feeds (input name -> array, batch dimension first), or a
            function that returns them anew for each pass.
        bins: Fine histogram bins per sign (a power of two).
        progress: Called with the number of samples after each batch of the first pass.
        memory_budget: Bytes of activations alive at once.

    Returns:
        Statistics per tensor, and the number of samples seen.
    """
    if not callable(batches):
        fixed = batches if isinstance(batches, Sequence) else list(batches)
        batches = lambda: fixed  # noqa: E731 - the same feeds for every pass
    first = next(iter(batches()), None)
    if first is None:
        raise CalibrationError("the calibration set yielded no samples")
    inputs = {i.name for i in model.graph.input}
    produced = [t for t in tensors if t not in inputs]
    splittable = all(_dynamic_batch(model, name) for name in first)
    plan = plan_pass(
        bytes_per_sample(model, produced, first), memory_budget, len(next(iter(first.values()))), splittable
    )
    del first
    if plan.passes > 1 or plan.samples_per_run:
        logger.info(
            "statistics pass: %.0f MB of activations per sample against a budget of %.0f MB: %d pass(es) "
            "over the data, %s samples per run",
            plan.bytes_per_sample / 2**20,
            memory_budget / 2**20,
            plan.passes,
            plan.samples_per_run or "all",
        )
    histograms = np.zeros((len(tensors), 2 * bins), dtype=np.int64)  # one matrix, saved as it is
    collectors = {t: HistogramCollector(t, bins, histograms[i]) for i, t in enumerate(tensors)}
    samples = 0
    for number, group in enumerate(plan.groups):
        session = _augmented_session(model, group)
        outputs = {o.name for o in session.get_outputs()}
        wanted = [t for t in group if t in outputs]
        # Graph inputs are read from the feeds, once.
        from_feed = [collectors[t] for t in tensors if t not in outputs] if number == 0 else []
        counted = _Counting(progress if number == 0 else None)
        update = _updater([collectors[t] for t in wanted], from_feed, counted)
        _one_pass(session, wanted, _runs(batches(), plan.samples_per_run), update, plan.overlap)
        samples = samples or counted.samples
        del session
    if samples == 0:
        raise CalibrationError("the calibration set yielded no samples")
    return {t: c.result(copy=False) for t, c in collectors.items()}, samples


@dataclass
class _Counting:
    """Counts the samples of a pass and reports them to ``progress``."""

    progress: ProgressFn | None
    samples: int = 0

    def __call__(self, n: int) -> None:
        self.samples += n
        if self.progress is not None:
            self.progress(n)


def _updater(
    outputs: list[HistogramCollector], inputs: list[HistogramCollector], counted: _Counting
) -> Callable[[dict[str, np.ndarray], list[np.ndarray]], None]:
    """What a pass does with each run: the outputs and graph inputs into their collectors."""

    def update(feed: dict[str, np.ndarray], results: list[np.ndarray]) -> None:
        for collector, value in zip(outputs, results, strict=True):
            collector.update(value)
        for collector in inputs:
            if collector.name in feed:
                collector.update(feed[collector.name])
        counted(len(next(iter(feed.values()))))

    return update


def _dynamic_batch(model: onnx.ModelProto, name: str) -> bool:
    """Whether the graph input ``name`` takes any batch size (its first dimension is not fixed)."""
    value = next((i for i in model.graph.input if i.name == name), None)
    dims = value.type.tensor_type.shape.dim if value is not None else ()
    return not dims or not dims[0].HasField("dim_value")


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
            histogram=_stacked([v.histogram for v in values]),
            samples=np.array(stats.samples),
        )

    atomic_write(path, write)


def _stacked(histograms: list[np.ndarray]) -> np.ndarray:
    """The histograms as one matrix: the matrix they are the rows of, in order, when they are
    (as the statistics pass and the cache make them), so that saving copies nothing."""
    if not histograms:
        return np.zeros((0, 2), dtype=np.int64)
    base = histograms[0].base
    if (
        isinstance(base, np.ndarray)
        and base.ndim == 2
        and base.flags.c_contiguous
        and base.shape == (len(histograms), histograms[0].size)
        and all(h.base is base and h.ctypes.data == base[i].ctypes.data for i, h in enumerate(histograms))
    ):
        return base
    return np.stack(histograms)


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
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
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
        memory_budget: Bytes of activations alive at once, see :func:`run_statistics_pass`.
    """
    path = Path(cache_dir) / f"stats-{key}.npz" if cache_dir is not None else None
    stats = _read_cache(path, key) if path is not None and path.is_file() else None
    if stats is not None and set(tensors) <= set(stats.tensors):
        logger.info("statistics cache hit (%s): skipping the FP32 pass", path.name)
        return stats
    tensor_stats, samples = run_statistics_pass(load_model(), tensors, batches, bins, progress, memory_budget)
    stats = Statistics(key=key, tensors=tensor_stats, samples=samples)
    if path is not None:
        save_statistics(stats, path)
    return stats
