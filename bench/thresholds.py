"""Threshold benchmark: time of autoquant.engine.compute_thresholds per method on synthetic statistics.

Builds a seeded 50-tensor Statistics set with autoquant.engine.HistogramCollector (Laplace,
normal, ReLU-like = max(normal, 0) and normal-with-a-few-outliers data, a few thousand values per
tensor), then times compute_thresholds(stats, QuantizationConfig(method=m, bins=2048)) for every
registered method with symmetric and with asymmetric activations (the config default is marked),
plus kl with ratio search. Reports
the median of --repeat timed calls (after one untimed warm-up call) for each fine-histogram size in
--fine-bins (8192 is what the pipeline collects; 2048 = one fine bin per coarse bin). Target: kl
for 50 tensors well under 1 s. Writes (replaces) its section of bench/RESULTS.md.

Run:   source /tmp/venv/bin/activate && python bench/thresholds.py [--tensors 50] [--repeat 5]
Takes: ~10-30 s on 2 cores (jsd, the one quadratic method, dominates).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from calibration import machine_line, write_section  # bench/ is on sys.path when run as a script

from autoquant.config import QuantizationConfig
from autoquant.engine import compute_thresholds, methods
from autoquant.engine._statistics import HistogramCollector, Statistics

KINDS = ("laplace", "normal", "relu", "outliers")


def synthetic_statistics(tensors: int, values: int, fine_bins: int, seed: int) -> Statistics:
    """``tensors`` collectors fed in 4 batches each, with scales spread over three decades."""
    rng = np.random.default_rng(seed)
    collectors = {}
    for k in range(tensors):
        kind, scale = KINDS[k % len(KINDS)], float(10 ** rng.uniform(-2, 1))
        collector = HistogramCollector(f"t{k:02d}_{kind}", fine_bins)
        for _ in range(4):  # streaming, like the real pass
            n = values // 4
            if kind == "laplace":
                x = rng.laplace(0.0, scale, n)
            elif kind == "normal":
                x = rng.normal(0.0, scale, n)
            elif kind == "relu":
                x = np.maximum(rng.normal(0.2 * scale, scale, n), 0.0)
            else:
                x = rng.normal(0.0, scale, n)
                x[rng.integers(0, n, 3)] *= 20.0
            collector.update(x.astype(np.float32))
        collectors[collector.name] = collector.result()
    return Statistics("synthetic", collectors, values)


def time_call(stats: Statistics, config: QuantizationConfig, repeat: int) -> tuple[float, float]:
    compute_thresholds(stats, config)  # warm-up (imports, caches)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        compute_thresholds(stats, config)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument("--values", type=int, default=4096, help="values per tensor (default 4096)")
    parser.add_argument("--bins", type=int, default=2048, help="QuantizationConfig.bins (default 2048)")
    parser.add_argument("--fine-bins", default="8192,2048", help="HistogramCollector bins, comma list")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()

    started = time.perf_counter()
    default = QuantizationConfig().activation_scheme
    configs = [
        (
            f"{m} {scheme}" + (" (default)" if scheme == default else ""),
            {"method": m, "activation_scheme": scheme},
        )
        for scheme in ("symmetric", "asymmetric")
        for m in methods()
    ]
    configs.append((f"kl ratio_search {default}", {"method": "kl", "ratio_search": True}))
    lines = [
        "| method | fine bins | tensors | median s | min s | ms / tensor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    verdict = []
    for fine in (int(b) for b in args.fine_bins.split(",")):
        stats = synthetic_statistics(args.tensors, args.values, fine, args.seed)
        for label, options in configs:
            median, best = time_call(stats, QuantizationConfig(bins=args.bins, **options), args.repeat)
            lines.append(
                f"| {label} | {fine} | {args.tensors} | {median:.3f} | {best:.3f} | "
                f"{1e3 * median / args.tensors:.2f} |"
            )
            print(f"  {label:30s} fine={fine:5d} {median:.3f} s", flush=True)
            if label.startswith("kl ") and label.endswith("(default)"):
                verdict.append(
                    f"kl ({default}, the default) with {fine} fine bins: {median:.3f} s "
                    f"({'PASS' if median < 1.0 else 'FAIL'}: target well under 1 s for 50 tensors)"
                )
    text = "\n".join(
        [
            "## Thresholds: compute_thresholds per method",
            "",
            f"`python bench/thresholds.py --tensors {args.tensors} --values {args.values} "
            f"--repeat {args.repeat}`: "
            f"synthetic statistics ({'/'.join(KINDS)} data, seeded), QuantizationConfig bins={args.bins}, "
            f"median of {args.repeat} calls. " + machine_line(),
            "",
            *lines,
            "",
            *(f"- {v}" for v in verdict),
            "",
            f"Script wall time: {time.perf_counter() - started:.0f} s.",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("thresholds", text)


if __name__ == "__main__":
    main()
