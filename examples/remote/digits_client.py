"""Evaluate the trials of a served digits study with your own top-1 code.

This script stands for the user's training environment: it needs only numpy and
``autoquant/client.py`` (pip install autoquant, or copy that one file). Start the server first::

    autoquant serve configs/digits.yaml -o runs/remote
    python examples/remote/digits_client.py --url http://127.0.0.1:8765

Each trial arrives with its model on the server; the batches go there and the logits come back,
the accuracy is computed here and reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoquant.serve.client import RemoteTuner

DATA = Path(__file__).resolve().parents[1] / "digits" / "data"


def top1(trial, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """The user's own metric: the share of images whose highest logit is their label."""
    correct = 0
    for start in range(0, len(images), batch_size):
        (logits,) = trial.run(images[start : start + batch_size])
        correct += int((logits.argmax(axis=1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8765", help="the autoquant serve address")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--record", type=Path, help="write what was reported to this JSON file")
    args = parser.parse_args()

    images = np.load(DATA / "test.npy")  # pre-processed as the model takes them: (N, 1, 8, 8) float32
    labels = np.loadtxt(DATA / "test_labels.txt", dtype=np.int64)
    tuner = RemoteTuner(args.url)  # the token, if the server has one, from AUTOQUANT_TOKEN
    reported = []
    for trial in tuner:
        score = top1(trial, images, labels, args.batch_size)
        answer = trial.report(score)
        name = "FP32 model" if trial.fp32 else f"trial {trial.number}"
        verdict = "within" if answer["within_budget"] else "over"
        print(f"{name}: top-1 {score:.4f}, decay {answer['decay']:+.4f} ({verdict} the budget)", flush=True)
        reported.append({"number": trial.number, "fp32": trial.fp32, "score": score, "params": trial.params})
    status = tuner.status() if tuner.state == "finished" else {}
    best = status.get("best")
    if best:
        print(f"study {tuner.state}: best trial {best['number']} ({best['key']}), decay {best['decay']:+.4f}")
    else:
        print(f"study {tuner.state}: {tuner.reason}")
    if args.record:
        args.record.write_text(json.dumps(reported, indent=2))


if __name__ == "__main__":
    main()
