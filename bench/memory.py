"""Peak memory of a whole ``autoquant tune`` on a real model with large outputs.

The PP-OCR text recognizer (rapidocr, from the ``test`` extra) emits 40 x 18710 floats (3 MB) per
sample; with 100 calibration and 300 test samples its FP32 reference outputs alone are 900 MB.
The script runs one full-mode ``tune`` (``--trials`` sampled trials, ``search.timeout``
``--timeout``) in a fresh process with tracking off and a fresh cache, and prints the child's peak
RSS (``getrusage``), its wall time and the study's trial count.

Run:   python bench/memory.py [--trials 6] [--timeout 400]
Takes: about 7 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="sampled trials in full mode")
    parser.add_argument("--timeout", type=float, default=400, help="search.timeout, seconds")
    parser.add_argument("--calib", type=int, default=100)
    parser.add_argument("--test", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aq-bench-memory-") as tmp:
        folder = Path(tmp)
        calib, test = corpus.ocr_rec_data(folder / "data", calib=args.calib, test=args.test)
        config = {
            "model": {"path": str(corpus.ocr_rec_model()), "inputs": {"x": list(corpus.REC_SHAPE)}},
            "calibration": {
                "source": str(calib),
                "batch_size": 1,
                "calib_iterations": 0,
                "cache_dir": str(folder / "cache"),
            },
            "test": {"source": str(test), "batch_size": 1, "test_iterations": 0, "objective": "cosine"},
            "quantization": {"per_channel": True},
            "search": {
                "mode": "full",
                "accept_int8_decay": 0.05,
                "n_trials": args.trials,
                "timeout": args.timeout,
            },
            "tracking": {"enabled": False},
            "output": {"directory": str(folder / "out")},
        }
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        began = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "autoquant", "tune", str(path)], capture_output=True, text=True, cwd=folder
        )
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            raise SystemExit(f"autoquant tune exited {result.returncode}:\n{result.stderr[-2000:]}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads((folder / "out" / "study_summary.json").read_text())
    print(
        f"ocr_rec full tune, {args.calib} calibration / {args.test} test samples: peak RSS {peak_mb:.0f} MB, "
        f"{seconds:.0f} s, {summary['completed_trials']} trials, cpu {summary['cpu_isa']}"
    )


if __name__ == "__main__":
    main()
