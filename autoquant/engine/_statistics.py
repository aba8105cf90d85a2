"""Statistics stage: one streaming FP32 pass that collects, per activation tensor, min, max and a
fine signed histogram (`autoquant.engine._histogram`), within a memory budget
(`autoquant.engine._memory_plan`), cached on disk.

Memory is ``tensors x bins``; no activation is kept after its run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnxruntime as ort
from onnx.external_data_helper import uses_external_data

from autoquant.common import ProgressFn, atomic_write, release_memory
from autoquant.engine._histogram import HistogramCollector, TensorStats
from autoquant.engine._memory_plan import PassPlan, bytes_per_sample, plan_pass
from autoquant.errors import CalibrationError

logger = logging.getLogger(__name__)

_CACHE_VERSION = "2"  # 2: names stored as a unicode array (no pickle)

#: Bytes of activations the statistics pass keeps alive at once, unless told otherwise.
DEFAULT_MEMORY_BUDGET = 512 * 2**20


@dataclass(frozen=True)
class Statistics:
    """Statistics of every activation tensor, as collected by `collect_statistics`."""

    key: str
    tensors: dict[str, TensorStats]
    samples: int
    from_cache: bool = False


def _augmented_session(
    model: onnx.ModelProto, tensors: Iterable[str], model_dir: Path | None = None
) -> ort.InferenceSession:
    """A session over ``model`` whose outputs are its own and ``tensors``; the outputs of ``model``
    are restored afterwards, so one model serves a session per group of tensors.

    A model whose weights stay in external data files in ``model_dir`` is given to onnxruntime as
    a file written there for the moment (its weights are then read from their own files, never
    copied into this process's memory first)."""
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
        if model_dir is None or not any(uses_external_data(t) for t in model.graph.initializer):
            return ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        # Beside the model, where its external data locations point.
        fd, staged = tempfile.mkstemp(dir=model_dir, prefix=".statistics-", suffix=".onnx")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model.SerializeToString())
            return ort.InferenceSession(staged, options, providers=["CPUExecutionProvider"])
        finally:
            os.unlink(staged)
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
    model_dir: Path | None = None,
) -> tuple[dict[str, TensorStats], int]:
    """Run the FP32 model over ``batches`` and collect statistics of ``tensors``.

    The activations alive at once stay within ``memory_budget`` bytes: large models run their
    batches in sub-batches, and models whose one sample exceeds the budget run one pass over the
    data per group of tensors (`autoquant.engine._memory_plan`). The statistics are the same
    whatever the plan.

    Args:
        model: The prepared FP32 model (its outputs are restored after each session is made).
        tensors: Names of the tensors to collect (graph inputs included), in topological order.
        batches: The calibration feeds (input name -> array, batch dimension first), or a
            function that returns them anew for each pass.
        bins: Fine histogram bins per sign (a power of two).
        progress: Called with the number of samples after each batch of the first pass.
        memory_budget: Bytes of activations alive at once.
        model_dir: The folder of the model's external data files, for a model loaded without
            its weights (sessions then read them from there).

    Returns:
        Statistics per tensor, and the number of samples seen.
    """
    if not callable(batches):
        fixed = batches if isinstance(batches, Sequence) else list(batches)
        batches = lambda: fixed  # noqa: E731 - the same feeds for every pass
    plan = _plan(model, tensors, batches, memory_budget)
    histograms = np.zeros((len(tensors), 2 * bins), dtype=np.int64)  # one matrix, saved as it is
    collectors = {t: HistogramCollector(t, bins, histograms[i]) for i, t in enumerate(tensors)}
    samples = 0
    for number, group in enumerate(plan.groups):
        session = _augmented_session(model, group, model_dir)
        outputs = {o.name for o in session.get_outputs()}
        wanted = [t for t in group if t in outputs]
        # Graph inputs are read from the feeds, once.
        from_feed = [collectors[t] for t in tensors if t not in outputs] if number == 0 else []
        counted = _Counting(progress if number == 0 else None)
        update = _updater([collectors[t] for t in wanted], from_feed, counted)
        _one_pass(session, wanted, _runs(batches(), plan.samples_per_run), update, plan.overlap)
        samples = samples or counted.samples
        del session
        release_memory()
    if samples == 0:
        raise CalibrationError("the calibration set yielded no samples")
    return {t: c.result(copy=False) for t, c in collectors.items()}, samples


def _plan(
    model: onnx.ModelProto, tensors: list[str], batches: Callable[[], Feeds], memory_budget: int
) -> PassPlan:
    """How the pass runs within ``memory_budget``, measured on the first batch; said in one line
    when it takes several passes or sub-batches.

    Raises:
        CalibrationError: The calibration set yields no samples.
    """
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
    return plan


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
    """Read statistics written by `save_statistics`.

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
    model_dir: Path | None = None,
) -> Statistics:
    """Return the statistics for ``key``, from the cache when present, else from one FP32 pass.

    Args:
        load_model: Returns the prepared FP32 model (called only on a cache miss).
        tensors: Tensor names to collect.
        batches: Called (only on a cache miss) to get the calibration feeds.
        key: Cache key, see `statistics_key`.
        cache_dir: Cache folder, or ``None`` to disable the cache.
        bins: Fine histogram bins per sign.
        progress: Progress callback, see `run_statistics_pass`.
        memory_budget: Bytes of activations alive at once, see `run_statistics_pass`.
        model_dir: See `run_statistics_pass`.
    """
    path = Path(cache_dir) / f"stats-{key}.npz" if cache_dir is not None else None
    stats = _read_cache(path, key) if path is not None and path.is_file() else None
    if stats is not None and set(tensors) <= set(stats.tensors):
        logger.info("statistics cache hit (%s): skipping the FP32 pass", path.name)
        return stats
    tensor_stats, samples = run_statistics_pass(
        load_model(), tensors, batches, bins, progress, memory_budget, model_dir
    )
    stats = Statistics(key=key, tensors=tensor_stats, samples=samples)
    if path is not None:
        save_statistics(stats, path)
    return stats


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "HistogramCollector",
    "Statistics",
    "TensorStats",
    "collect_statistics",
    "load_statistics",
    "run_statistics_pass",
    "save_statistics",
    "statistics_key",
]
