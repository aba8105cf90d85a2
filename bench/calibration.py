"""Calibration benchmark: time and peak memory of autoquant's statistics pass vs onnxruntime's calibrators.

Models: the digits example (its real calib.npy, 200 samples) and the onnx wheel's light_resnet50 (seeded
uniform random images, --samples, default 32), batch 1 (digits also at batch 50). Every contender runs
in its OWN fresh subprocess, timed with perf_counter around the work only (prepare_model is cached first):
  fp32                     ORT session on the prepared model + one pass, outputs only (the floor)
  autoquant stats          run_statistics_pass(graph.load(), graph.activations, feeds, bins=8192)
  autoquant thresholds     compute_thresholds on those statistics: default config (kl); every method
  autoquant quantize_model QDQ model from the kl ranges (in memory, not saved)
  ort-entropy/-percentile  quantize_static(QDQ, CalibrationMethod.X) whole, and create_calibrator +
                           collect_data + compute_data alone (the fair match for "autoquant stats")
Peak RSS = the child's VmHWM right after the work; every child imports the same modules and loads the
same data first ("RSS before"). "x fp32" = vs the fp32 row of the same model and batch. Contenders run
round-robin --repeat times, each run after waiting (<= --wait-idle s) for idle CPUs; "seconds" is the
best run (all runs in the notes: on a shared machine other people's jobs slow some runs down).
Writes its section of bench/RESULTS.md. --profile: only cProfile autoquant's statistics pass.

Run:   source /tmp/venv/bin/activate && python bench/calibration.py [--samples 32] [--repeat 3]
Takes: ~80 s per repeat on 2 idle cores, up to ~10 min on a busy machine (idle waits). ORT's
       calibrators keep every activation of every sample in RAM (~4 GB for 32 resnet50 samples).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("kl", "max", "percentile", "symkl", "mse", "jsd")
SUM_OF = ("autoquant stats", "autoquant thresholds kl", "autoquant quantize_model")


def source_model(name: str) -> Path:
    import onnx

    light = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    return ROOT / "examples/digits/model.onnx" if name == "digits" else light


def status_mb(key: str) -> float:
    """VmHWM (peak) or VmRSS of this process in MB. Not ru_maxrss: Linux carries the parent's peak
    RSS across fork+exec into a child's ru_maxrss, so every child would report >= the parent."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024.0


def make_feeds(spec: dict) -> list[dict[str, np.ndarray]]:
    n, b = spec["samples"], spec["batch"]
    if spec["model"] == "digits":
        name, x = "input", np.load(ROOT / "examples/digits/data/calib.npy")[:n].astype(np.float32)
    else:
        rng = np.random.default_rng(spec["seed"])
        name, x = "gpu_0/data_0", rng.uniform(0.0, 1.0, (n, 3, 224, 224)).astype(np.float32)
    return [{name: x[i : i + b]} for i in range(0, len(x), b)]


def child(spec: dict) -> list[dict]:
    """Run one contender in this (fresh) process; return its rows."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from autoquant.config import QuantizationConfig
    from autoquant.engine import compute_thresholds, quantize_model
    from autoquant.engine._statistics import Statistics, load_statistics, run_statistics_pass, save_statistics
    from autoquant.engine.graph import prepare_model

    feeds, kind, rows, clock = make_feeds(spec), spec["kind"], [], time.perf_counter
    graph = prepare_model(spec["source"], spec["cache"])  # cache hit: loads the prepared model
    base = status_mb("VmRSS")
    if kind == "fp32":
        t0 = clock()
        session = ort.InferenceSession(str(graph.prepared_path), providers=["CPUExecutionProvider"])
        t1 = clock()
        for feed in feeds:
            session.run(None, feed)
        t2 = clock()
        rows.append({"seconds": t2 - t0, "note": f"session {t1 - t0:.2f} s + run {t2 - t1:.2f} s"})
    elif kind == "autoquant" and spec.get("profile"):
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            run_statistics_pass(graph.load(), list(graph.activations), feeds, bins=8192)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(12)
    elif kind == "autoquant":
        t0 = clock()
        stats, n = run_statistics_pass(graph.load(), list(graph.activations), feeds, bins=8192)
        seconds, peak = clock() - t0, status_mb("VmHWM")
        bad = sum(s.nan_count + s.inf_count for s in stats.values())
        note = f"{len(stats)} tensors, 8192 bins" + (f", {bad} nan/inf" if bad else "")
        rows.append({"seconds": seconds, "peak": peak, "note": note})
        if spec["save"]:  # for the thresholds/quantize child, after the peak was read
            save_statistics(Statistics("bench", stats, n), Path(spec["save"]))
    elif kind == "autoquant-post":
        stats, times, ranges = load_statistics(Path(spec["save"]), "bench"), {}, {}
        for method in METHODS:
            t0 = clock()
            ranges[method] = compute_thresholds(stats, QuantizationConfig(method=method))
            times[method] = clock() - t0
        scheme = QuantizationConfig().activation_scheme
        rows.append(
            {"contender": SUM_OF[1], "seconds": times["kl"], "note": f"default config: 2048 bins, {scheme}"}
        )
        rows.append(
            {
                "contender": "autoquant thresholds, all 6 methods",
                "seconds": sum(times.values()),
                "note": ", ".join(f"{m} {t:.2f}" for m, t in times.items()),
            }
        )
        t0 = clock()
        quantize_model(graph, ranges["kl"], QuantizationConfig())
        rows.append({"contender": SUM_OF[2], "seconds": clock() - t0, "note": "kl ranges, not saved"})
    else:  # ort-entropy / ort-percentile: quantize_static as a whole, or the calibrator alone
        it = iter(feeds)
        reader = type("Reader", (CalibrationDataReader,), {"get_next": lambda self: next(it, None)})()
        method = CalibrationMethod.Entropy if kind == "ort-entropy" else CalibrationMethod.Percentile
        with tempfile.TemporaryDirectory(prefix="aqbench-") as tmp:
            t0 = clock()
            if spec["whole"]:
                quantize_static(
                    str(graph.prepared_path),
                    f"{tmp}/q.onnx",
                    reader,
                    quant_format=QuantFormat.QDQ,
                    calibrate_method=method,
                )
                note = "calibrate + quantize + save, ORT defaults"
            else:  # the op types quantize_static calibrates by default
                ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
                cal = create_calibrator(graph.prepared_path, ops, f"{tmp}/aug.onnx", calibrate_method=method)
                cal.collect_data(reader)
                note = f"{len(cal.compute_data().data)} tensors, {cal.num_bins} bins"
            rows.append({"seconds": clock() - t0, "note": note})
    for row in rows:
        row.setdefault("peak", status_mb("VmHWM"))
        row["base"] = base
    return rows


def wait_idle(limit: float) -> None:
    """Wait (up to ``limit`` s) until the CPUs are >= 90 % idle over 0.5 s."""
    deadline = time.monotonic() + limit
    while True:
        a = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        time.sleep(0.5)
        b = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        if (b[3] + b[4] - a[3] - a[4]) >= 0.9 * (sum(b) - sum(a)) or time.monotonic() > deadline:
            return


def run_child(spec: dict, wait: float = 0.0) -> list[dict]:
    wait_idle(wait)  # the machine may be shared: do not start a timed run in someone else's busy spell
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or spec.get("profile"):
        print(proc.stderr, file=sys.stderr)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1][:100]
        nan = float("nan")
        return [{"seconds": nan, "peak": nan, "base": nan, "note": f"FAILED: {err}"}]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[list[dict]]) -> list[dict]:
    """Per row: the fastest run (with its note), the largest peak RSS, and every time in the note."""
    if any(len(r) != len(runs[0]) or "FAILED" in r[0]["note"] for r in runs):
        return next(r for r in runs if "FAILED" in r[0]["note"])
    rows = []
    for k in range(len(runs[0])):
        times = [r[k]["seconds"] for r in runs]
        row = dict(runs[times.index(min(times))][k], peak=max(r[k]["peak"] for r in runs))
        row["note"] += "; runs " + "/".join(f"{t:.2f}" for t in times) if len(runs) > 1 else ""
        rows.append(row)
    return rows


def machine_line() -> str:
    import onnx
    import onnxruntime

    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        platform.processor(),
    )
    code = ", ".join(
        f"{f} {hashlib.sha256((ROOT / 'autoquant' / f).read_bytes()).hexdigest()[:8]}"
        for f in (
            "engine/_statistics.py",
            "engine/_methods.py",
            "engine/_thresholds.py",
            "engine/_quantize.py",
            "config/_sections.py",
        )
    )
    from autoquant.hardware import host_isa

    return (
        f"Machine: nproc={len(os.sched_getaffinity(0))}, CPU {cpu} ({host_isa().label}); Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; "
        f"autoquant {code}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC."
    )


def write_section(name: str, text: str) -> None:
    """Replace this script's section of bench/RESULTS.md, or append it."""
    path, start, end = ROOT / "bench/RESULTS.md", f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        path.write_text(old[: old.index(start)] + block + old[old.index(end) + len(end) :])
    else:
        path.write_text(old.rstrip() + "\n\n" + block + "\n")


def plan_for(model: str, args: argparse.Namespace, cache: str) -> list[tuple[str | None, dict]]:
    source, n = source_model(model), args.digits_samples if model == "digits" else args.samples
    common = {
        "model": model,
        "samples": n,
        "seed": args.seed,
        "source": str(source),
        "cache": cache,
        "batch": 1,
        "save": f"{cache}/stats-{model}.npz",
    }
    steps = [
        ("fp32", {"kind": "fp32"}),
        ("autoquant stats", {"kind": "autoquant"}),
        (None, {"kind": "autoquant-post"}),
    ]  # thresholds + quantize, on the saved statistics
    steps += [
        (f"{k} {'quantize_static' if w else 'calibrate only'}", {"kind": k, "whole": w})
        for k in ("ort-entropy", "ort-percentile")
        for w in (True, False)
    ]
    if model == "digits":
        steps += [
            ("fp32 (batch 50)", {"kind": "fp32", "batch": 50}),
            ("autoquant stats (batch 50)", {"kind": "autoquant", "batch": 50, "save": None}),
        ]
    return [(label, {**common, **extra}) for label, extra in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32, help="light_resnet50 random images (default 32)")
    parser.add_argument("--digits-samples", type=int, default=200, help="digits calib.npy samples")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (best time, max RSS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="digits,resnet50", help="comma list of digits,resnet50")
    parser.add_argument("--profile", action="store_true", help="only cProfile autoquant's statistics pass")
    parser.add_argument("--wait-idle", type=float, default=10.0, help="max s to wait for idle CPUs per run")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from autoquant.engine.graph import prepare_model

    started, table, plan = time.perf_counter(), [], []
    with tempfile.TemporaryDirectory(prefix="aqbench-") as cache:
        for model in args.models.split(","):
            prepare_model(source_model(model), cache)  # warm the cache: the children only load it
            plan += plan_for(model, args, cache)
        if args.profile:
            for _, spec in plan:
                if spec["kind"] == "autoquant" and spec["batch"] == 1:
                    run_child({**spec, "profile": True})
            return
        runs: list[list[list[dict]]] = [[] for _ in plan]
        for rep in range(args.repeat):  # round-robin, so that a busy spell hits every contender alike
            for (label, spec), spec_runs in zip(plan, runs, strict=True):
                spec_runs.append(run_child(spec, args.wait_idle))
                for row in spec_runs[-1]:
                    print(
                        f"  run {rep + 1} {spec['model']:9s} {row.get('contender', label):36s} "
                        f"{row['seconds']:7.2f} s {row['peak']:6.0f} MB",
                        file=sys.stderr,
                    )
    for (label, spec), spec_runs in zip(plan, runs, strict=True):
        keys = {k: spec[k] for k in ("model", "samples", "batch")} | {"contender": label}
        table += [{**keys, **row} for row in summarize(spec_runs)]
        parts = [
            next((r for r in table if r["model"] == spec["model"] and r["contender"] == c), None)
            for c in SUM_OF
        ]
        if spec["kind"] == "autoquant-post" and all(parts):
            table.append(
                {
                    **parts[0],
                    "contender": "autoquant stats+kl+quantize",
                    "seconds": sum(p["seconds"] for p in parts),
                    "peak": max(p["peak"] for p in parts),
                    "note": "sum of the 3 steps above (compare quantize_static)",
                }
            )
    lines = [
        "| model | samples x batch | contender | seconds | x fp32 | peak RSS MB | x fp32 RSS "
        "| RSS before MB | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in table:
        floor = next(
            f
            for f in table
            if f["model"] == r["model"] and f["contender"].startswith("fp32") and f["batch"] == r["batch"]
        )
        t, m = r["seconds"], r["peak"]
        lines.append(
            f"| {r['model']} | {r['samples']} x {r['batch']} | {r['contender']} | {t:.3f} "
            f"| {t / floor['seconds']:.2f} | {m:.0f} | {m / floor['peak']:.2f} "
            f"| {r['base']:.0f} | {r['note']} |"
        )
    text = "\n".join(
        [
            "## Calibration: autoquant statistics vs onnxruntime calibrators",
            "",
            f"`python bench/calibration.py --samples {args.samples} --repeat {args.repeat}` "
            f"(best of {args.repeat} interleaved runs). " + machine_line(),
            "",
            *lines,
            "",
            f"Script wall time: {time.perf_counter() - started:.0f} s.",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("calibration", text)


if __name__ == "__main__":
    main()
