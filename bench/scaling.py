"""Workers benchmark: trials per minute of one digits study served by 1 and by 2 ``autoquant worker``
processes on this machine, against a real PostgreSQL server started in a temporary folder (as the
tests do, tests/postgres.py).

Each run is a fresh study in a fresh database with the same budget: full mode, ``--trials``
sampled trials after the six strategies, the whole digits test set (500 images), tracking off,
the statistics and FP32 reference from a warm shared cache. The per-layer scale search is limited
to the tensors around the classifier (the Conv nodes are in ``ignore_layer_list``), so that the
study is made of trials; the bisection, a serial phase, runs only if a trial keeps FP32 nodes.

* **trials/min** counts the study's finished trials over the time from the first trial's start to
  the last trial's end (Optuna's own timestamps): what the workers do once they are running;
* **wall** is from starting the processes to the last one's exit (imports, the FP32 reference and
  the latency calibration of each process included).

Writes (replaces) its section of bench/RESULTS.md and prints the table.

Run:   python bench/scaling.py [--trials 24] [--repeats 2]
Takes: about 7 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import optuna
import yaml
from calibration import machine_line, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postgres import PostgresServer, binaries  # noqa: E402

DIGITS = ROOT / "examples" / "digits"


def study_config(folder: Path, url: str, trials: int) -> Path:
    convs = [n.name for n in onnx.load(DIGITS / "model.onnx").graph.node if n.op_type == "Conv"]
    config = {
        "model": {"path": str(DIGITS / "model.onnx")},
        "calibration": {
            "source": str(DIGITS / "data" / "calib.npy"),
            "calib_iterations": 200,
            "batch_size": 50,
            "cache_dir": str(folder.parent / "cache"),
        },
        "test": {
            "source": str(DIGITS / "data" / "test.npy"),
            "labels": str(DIGITS / "data" / "test_labels.txt"),
            "test_iterations": 500,
            "batch_size": 100,
        },
        "search": {
            "mode": "full",
            "n_trials": trials,
            "accept_int8_decay": 0.005,
            "study_name": "scaling",
            "ignore_layer_list": convs,
        },
        "storage": {"url": url},
        "tracking": {"enabled": False},
        "output": {"directory": str(folder / "out")},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(
    server: PostgresServer, workers: int, trials: int, root: Path, index: int, threads: int | None = None
) -> dict:
    folder = root / f"w{workers}-t{threads}-{index}"
    folder.mkdir()
    url = server.database()
    config = study_config(folder, url, trials)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "autoquant", "-q", "worker", str(config)]
            + ([f"--threads={threads}"] if threads else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for p in processes:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed ({p.returncode}):\n{err[-2000:]}")
    wall = time.perf_counter() - began
    study = optuna.load_study(study_name="scaling", storage=url)
    finished = [t for t in study.trials if t.state.is_finished()]
    span = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds()
    return {"trials": len(finished), "span": span, "per_min": 60 * len(finished) / span, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="sampled trials after the six strategies")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    found = binaries()
    if found is None:
        raise SystemExit("no PostgreSQL binaries (initdb): install Debian's postgresql")
    server = PostgresServer(found)
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="autoquant-scaling-") as tmp:
            root = Path(tmp)
            run(server, 1, 1, root, 99)  # warm the statistics and FP32 caches
            setups = [(1, None), (2, None), (2, 1)]  # (workers, --threads)
            results: dict[tuple, list[dict]] = {setup: [] for setup in setups}
            for i in range(
                args.repeats
            ):  # interleaved, so that a change of the machine's load hits all alike
                for setup in setups:
                    results[setup].append(run(server, setup[0], args.trials, root, i, setup[1]))
    finally:
        server.remove()
    rows = {
        setup: (
            statistics.median(r["trials"] for r in runs),
            statistics.median(r["per_min"] for r in runs),
            statistics.median(r["wall"] for r in runs),
        )
        for setup, runs in results.items()
    }
    one = rows[(1, None)][1]
    load = os.getloadavg()[0]
    text = "\n".join(
        [
            "## Workers: trials per minute with 1 and 2 workers",
            "",
            machine_line() + f" Load average at the end: {load:.1f}.",
            "",
            f"`python bench/scaling.py --trials {args.trials} --repeats {args.repeats}` (medians): one digits "
            "study in full mode on a local PostgreSQL, the whole test set (500 images), tracking off. "
            "Threads: onnxruntime's default (one per core) or `autoquant worker --threads`.",
            "",
            "| workers | threads per session | finished trials | trials/min | x 1 worker | wall s |",
            "|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {w} | {t or 'default'} | {n:.0f} | {per:.1f} | {per / one:.2f} | {wall:.1f} |"
                for (w, t), (n, per, wall) in rows.items()
            ),
        ]
    )
    write_section("scaling", text)
    print(text)


if __name__ == "__main__":
    main()
