"""HistogramCollector.update: the package's against the implementation it replaced.

Times ``update`` of :class:`autoquant.engine._histogram.HistogramCollector` against ``OldCollector``
below, a reference copy of the implementation before the chunked one (one numpy pass per step
over the whole batch and a direct float to int64 cast), on float32 tensors of several sizes drawn
from a normal and a ReLU-like (``max(normal, 0)``) distribution. Each collector is warmed with
the tensor once (so that its range is set), then the two are timed on the same tensor in
alternation, ``--repeat`` times each (their order swapped every round), and the medians of the
wall time (and the ratio of the medians of the thread's CPU time, steadier on a busy machine) are
printed with the load average at the end of the row. The script fails if the two histograms (and
min, max, counts) differ.

Run:   python bench/histogram.py [--sizes 4096,65536,1048576,16777216] [--repeat 1.0]
Takes: about 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from autoquant.engine._histogram import HistogramCollector
from autoquant.hardware import host_isa


class OldCollector:
    """``HistogramCollector.update`` as it was before the chunked implementation (for comparison)."""

    def __init__(self, name: str, bins: int = 8192) -> None:
        self.name = name
        self.bins = bins
        self.histogram = np.zeros(2 * bins, dtype=np.int64)
        self.range = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.count = self.nan_count = self.inf_count = 0

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values).ravel()
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
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
        if self.range == 0.0:
            self.histogram[self.bins] += x.size
            return
        self.histogram += np.bincount(self._indices(x), minlength=2 * self.bins)

    def _indices(self, x: np.ndarray) -> np.ndarray:
        scale = self.bins / self.range
        dtype = x.dtype if scale < 2.0**100 else np.dtype(np.float64)
        scaled = x.astype(dtype, copy=False) * dtype.type(scale)
        np.floor(scaled, out=scaled)
        scaled += dtype.type(self.bins)
        return scaled.astype(np.intp)

    def _grow(self, peak: float) -> None:
        if peak == 0.0:
            return
        new_range = 2.0 ** (math.floor(math.log2(peak)) + 1)
        if new_range <= peak:
            new_range *= 2.0
        if self.range == 0.0:
            self.range = new_range
            return
        factor = min(round(new_range / self.range), self.bins)
        merged = self.histogram.reshape(-1, factor).sum(axis=1)
        self.histogram[:] = 0
        start = self.bins - self.bins // factor
        self.histogram[start : start + merged.size] = merged
        self.range = new_range


def tensor(size: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0.0, 1.7, size).astype(np.float32)
    return np.maximum(x, 0.0, out=x) if kind == "relu" else x


def cpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {host_isa().label}, {len(os.sched_getaffinity(0))} cores"


def compare(x: np.ndarray, repeat: int) -> dict[str, float]:
    """Median wall and thread CPU seconds of one update of the old and of the new collector."""
    old, new = OldCollector("t"), HistogramCollector("t")
    old.update(x)
    new.update(x)
    times: dict[str, list[float]] = {"old": [], "new": [], "old cpu": [], "new cpu": []}
    for round_ in range(repeat):
        for label, collector in (("old", old), ("new", new))[:: 1 if round_ % 2 else -1]:
            began, cpu = time.perf_counter(), time.thread_time()
            collector.update(x)
            times[label].append(time.perf_counter() - began)
            times[f"{label} cpu"].append(time.thread_time() - cpu)
    same = np.array_equal(old.histogram, new.histogram) and (
        old.range,
        old.minimum,
        old.maximum,
        old.count,
    ) == (new.range, new.minimum, new.maximum, new.count)
    if not same:
        raise SystemExit(f"the histograms of {x.size} values differ")
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4096,65536,262144,1048576,16777216")
    parser.add_argument("--repeat", type=float, default=1.0, help="scales the repeats per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"CPU: {cpu()}; numpy {np.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    print("| values | data | old ms | new ms | speed-up | speed-up in CPU time | ns/value new | load |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        # about 0.3 s of updates per row at the old speed, 5 rounds at least
        repeat = max(5, round(args.repeat * min(200, 2**26 // size)))
        for kind in ("normal", "relu"):
            t = compare(tensor(size, kind, rng), repeat)
            print(
                f"| {size:,} | {kind} | {t['old'] * 1e3:.3f} | {t['new'] * 1e3:.3f} | "
                f"{t['old'] / t['new']:.2f}x | {t['old cpu'] / t['new cpu']:.2f}x | "
                f"{t['new'] * 1e9 / size:.2f} | {os.getloadavg()[0]:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
