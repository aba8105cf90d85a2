"""Calibration benchmark: time and peak memory of autoquant's statistics pass vs onnxruntime's calibrators.

What it measures, per model (the digits example with its real calib.npy, and the onnx wheel's
light_resnet50 fed seeded uniform random images, batch 1), every contender in its OWN fresh
subprocess so that peak RSS (ru_maxrss, read in the child right after the timed work) is its own:
  fp32                  plain ORT session on the prepared model + one pass, model outputs only (the floor)
  autoquant stats       run_statistics_pass(graph.load(), activations, feeds, bins=8192)
  autoquant thresholds  compute_thresholds on those statistics: kl/2048 bins (default), then every method
  autoquant quantize    quantize_model(graph, kl ranges, QuantizationConfig())  (in memory, not saved)
  ort-entropy/-percentile  quantize_static(QDQ, CalibrationMethod.X) as a whole, and separately
                        create_calibrator + collect_data + compute_data alone (the fair match for "stats")
Everything is timed with perf_counter inside the child around the work only; prepare_model runs in
the parent first (warm cache), each child gets the cached prepared model. "x fp32" is relative to the
fp32 row of the same model and batch size. Writes the table to bench/RESULTS.md (own section).

Run:   source /tmp/venv/bin/activate && python bench/calibration.py [--samples 32] [--repeat 1]
Takes: about 1-2 minutes on 2 cores with the defaults (ORT's entropy keeps every activation in RAM).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples/digits/model.onnx"
METHODS = ("kl", "max", "percentile", "symkl", "mse", "jsd")


def resnet_path() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def make_feeds(spec: dict) -> list[dict[str, np.ndarray]]:
    if spec["model"] == "digits":
        name, x = "input", np.load(ROOT / "examples/digits/data/calib.npy")[: spec["samples"]].astype(np.float32)
    else:
        rng = np.random.default_rng(spec["seed"])
        name, x = "gpu_0/data_0", rng.uniform(0.0, 1.0, (spec["samples"], 3, 224, 224)).astype(np.float32)
    b = spec["batch"]
    return [{name: x[i : i + b]} for i in range(0, len(x), b)]


def child(spec: dict) -> list[dict]:
    """Run one contender; return result rows (seconds, note)."""
    feeds, kind, rows = make_feeds(spec), spec["kind"], []
    base = rss_mb()
    if kind == "fp32":
        import onnxruntime as ort

        t0 = time.perf_counter()
        session = ort.InferenceSession(spec["prepared"], providers=["CPUExecutionProvider"])
        t1 = time.perf_counter()
        for feed in feeds:
            session.run(None, feed)
        t2 = time.perf_counter()
        rows.append({"seconds": t2 - t0, "note": f"session {t1 - t0:.2f} s + run {t2 - t1:.2f} s"})
    elif kind == "autoquant":
        from autoquant.graph import prepare_model
        from autoquant.statistics import Statistics, run_statistics_pass, save_statistics

        graph = prepare_model(spec["source"], spec["cache"])
        t0 = time.perf_counter()
        stats, n = run_statistics_pass(graph.load(), list(graph.activations), feeds, bins=8192)
        seconds = time.perf_counter() - t0
        bad = sum(s.nan_count + s.inf_count for s in stats.values())
        rows.append({"seconds": seconds, "note": f"{len(stats)} tensors, 8192 bins" + (f", {bad} nan/inf" if bad else "")})
        rows[0]["peak"] = peak_mb()  # before saving the statistics for the next child
        if spec.get("save"):
            save_statistics(Statistics("bench", stats, n), Path(spec["save"]))
    elif kind == "autoquant-post":
        from autoquant.config import QuantizationConfig
        from autoquant.graph import prepare_model
        from autoquant.quantize import quantize_model
        from autoquant.statistics import load_statistics
        from autoquant.thresholds import compute_thresholds

        graph = prepare_model(spec["source"], spec["cache"])
        stats = load_statistics(Path(spec["save"]), "bench")
        times, ranges = {}, {}
        for method in METHODS:
            t0 = time.perf_counter()
            ranges[method] = compute_thresholds(stats, QuantizationConfig(method=method))
            times[method] = time.perf_counter() - t0
        rows.append({"contender": "autoquant thresholds kl", "seconds": times["kl"], "note": "2048 bins (default config)"})
        rows.append({"contender": "autoquant thresholds, all 6 methods", "seconds": sum(times.values()),
                     "note": ", ".join(f"{m} {t:.2f}" for m, t in times.items())})
        t0 = time.perf_counter()
        quantize_model(graph, ranges["kl"], QuantizationConfig())
        rows.append({"contender": "autoquant quantize_model", "seconds": time.perf_counter() - t0, "note": "kl ranges"})
    else:  # ort-entropy / ort-percentile, "whole" (quantize_static) or calibration only
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
        from onnxruntime.quantization.calibrate import create_calibrator
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(feeds)

            def get_next(self):  # noqa: ANN202
                return next(self.it, None)

        method = CalibrationMethod.Entropy if kind == "ort-entropy" else CalibrationMethod.Percentile
        with tempfile.TemporaryDirectory(prefix="aqbench-") as tmp:
            t0 = time.perf_counter()
            if spec["whole"]:
                quantize_static(model_input=spec["prepared"], model_output=f"{tmp}/q.onnx", calibration_data_reader=Reader(),
                                quant_format=QuantFormat.QDQ, calibrate_method=method)
                note = "calibrate + quantize + save"
            else:  # the op types quantize_static calibrates by default
                ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
                cal = create_calibrator(Path(spec["prepared"]), ops, augmented_model_path=f"{tmp}/aug.onnx",
                                        calibrate_method=method)
                cal.collect_data(Reader())
                ranges = cal.compute_data()
                note = f"{len(ranges.data)} tensors, {cal.num_bins} bins"
            rows.append({"seconds": time.perf_counter() - t0, "note": note})
    for row in rows:
        row.setdefault("peak", peak_mb())
        row["base"] = base
    return rows


def run_child(spec: dict, repeat: int) -> list[dict]:
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            return [{"seconds": float("nan"), "peak": float("nan"), "base": float("nan"), "note": f"FAILED: {tail[0][:120]}"}]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = runs[0]
    for k, row in enumerate(rows):  # median time, max peak over repeats
        row["seconds"] = statistics.median(r[k]["seconds"] for r in runs)
        row["peak"] = max(r[k]["peak"] for r in runs)
    return rows


def machine_line() -> str:
    import onnx
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"Machine: nproc={len(os.sched_getaffinity(0))}, CPU {cpu}; Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def write_section(name: str, text: str) -> None:
    """Replace this script's section of bench/RESULTS.md (or append it)."""
    path, start, end = ROOT / "bench/RESULTS.md", f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32, help="random images for light_resnet50 (default 32)")
    parser.add_argument("--digits-samples", type=int, default=200, help="samples of digits calib.npy (default 200)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; median time, max RSS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="digits,resnet50", help="comma list of digits,resnet50")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from autoquant.graph import prepare_model

    started, table = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="aqbench-") as cache:
        for model in args.models.split(","):
            source = DIGITS if model == "digits" else resnet_path()
            graph = prepare_model(source, cache)  # warm the cache: children only load it
            n = args.digits_samples if model == "digits" else args.samples
            common = {"model": model, "samples": n, "seed": args.seed, "source": str(source), "cache": cache,
                      "prepared": str(graph.prepared_path), "save": f"{cache}/stats-{model}.npz", "batch": 1}
            plan = [("fp32", {"kind": "fp32"}), ("autoquant stats", {"kind": "autoquant"}),
                    (None, {"kind": "autoquant-post"})]
            plan += [(f"{k} {'quantize_static' if w else 'calibrate only'}", {"kind": k, "whole": w})
                     for k in ("ort-entropy", "ort-percentile") for w in (True, False)]
            if model == "digits":
                plan += [("fp32 (batch 50)", {"kind": "fp32", "batch": 50}),
                         ("autoquant stats (batch 50)", {"kind": "autoquant", "batch": 50, "save": None})]
            for label, extra in plan:
                spec = {**common, **extra}
                for row in run_child(spec, args.repeat):
                    row.setdefault("contender", label)
                    table.append({"model": model, "samples": n, "batch": spec["batch"], **row})
                    print(f"  {model:9s} {row['contender']:38s} {row['seconds']:7.2f} s {row['peak']:7.0f} MB",
                          file=sys.stderr)
            by = {r["contender"]: r for r in table if r["model"] == model}
            parts = [by.get(c) for c in ("autoquant stats", "autoquant thresholds kl", "autoquant quantize_model")]
            if all(parts):
                table.append({"model": model, "samples": n, "batch": 1, "contender": "autoquant stats+kl+quantize",
                              "seconds": sum(p["seconds"] for p in parts), "peak": max(p["peak"] for p in parts),
                              "base": parts[0]["base"], "note": "sum of the three rows above (compare quantize_static)"})
    lines = ["| model | samples | contender | seconds | x fp32 | peak RSS MB | x fp32 RSS | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in table:
        floor = next(f for f in table if f["model"] == r["model"] and f["contender"].startswith("fp32")
                     and f["batch"] == r["batch"])
        lines.append(f"| {r['model']} | {r['samples']} x b{r['batch']} | {r['contender']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] / floor['seconds']:.2f} | {r['peak']:.0f} | {r['peak'] / floor['peak']:.2f} | "
                     f"{r['note']} (RSS before work {r['base']:.0f}) |")
    text = "\n".join(["## Calibration: autoquant statistics vs onnxruntime calibrators", "",
                      f"`python bench/calibration.py --samples {args.samples} --repeat {args.repeat}`; "
                      + machine_line(), "", *lines, "",
                      f"Script wall time: {time.perf_counter() - started:.0f} s."])
    print(text)
    if not args.no_write:
        write_section("calibration", text)


if __name__ == "__main__":
    main()
