"""What remote evaluation costs: the digits test set through ``autoquant serve``'s ``/fp32/run``
with ``autoquant.serve.client``, against the same batches through an onnxruntime session in-process.

    python bench/remote.py [--repeats 20]

Prints the seconds per pass over the 500 test images at batch 100 and batch 1, the ratio
remote / in-process, and the overhead per request, with the CPU's instruction set.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoquant.hardware import host_isa  # noqa: E402
from autoquant.serve.client import RemoteTuner  # noqa: E402
from tests.helpers import DIGITS, digits_study  # noqa: E402


def passes(run, images: np.ndarray, batch: int, repeats: int) -> float:
    """Median seconds of one pass over the images."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        for start in range(0, len(images), batch):
            run(images[start : start + batch])
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    images = np.load(DIGITS / "data" / "test.npy")
    session = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as folder:
        config = digits_study(Path(folder), search={"fp32_score": 0.994})
        server = subprocess.Popen(
            [sys.executable, "-m", "autoquant", "serve", str(config), "--port", "0"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            url = None
            for line in server.stderr:  # type: ignore[union-attr]
                found = re.search(r"serving the study at (http://\S+)", line)
                if found:
                    url = found.group(1)
                    break
            assert url, "the server did not start"
            tuner = RemoteTuner(url)
            for _ in range(600):  # /fp32/run answers once the study is prepared
                try:
                    tuner.run_fp32(images[:1])
                    break
                except Exception:
                    time.sleep(0.1)
            print(
                f"CPU: {host_isa().label}; digits test set, {len(images)} images, median of {args.repeats} passes"
            )
            for batch in (100, 1):
                local = passes(lambda b: session.run(None, {"input": b}), images, batch, args.repeats)
                remote = passes(tuner.run_fp32, images, batch, args.repeats)
                requests = -(-len(images) // batch)
                overhead_ms = (remote - local) / requests * 1e3
                print(
                    f"batch {batch:>3}: in-process {local:.4f} s, remote {remote:.4f} s, "
                    f"ratio {remote / local:.1f}x, overhead {overhead_ms:.2f} ms per request"
                )
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
