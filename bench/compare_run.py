"""One contender of bench/compare.py, run in its own fresh process: ``python bench/compare_run.py SPEC``.

SPEC is a JSON file written by compare.py: ``kind`` (ort, nncf, autoquant-quantize, autoquant-tune),
``params``, ``config`` (the study YAML: data, objective, budget, output and cache folders), ``model``
(the FP32 file), ``calib`` and ``test`` (the samples as ``.npz`` feeds, written by compare.py from
autoquant's data readers, so every contender sees the same ones) and ``out`` (this contender's
folder). The process writes ``out/model.int8.onnx`` and ``out/run.json``:

- ``seconds``: wall time of the tool's own work (onnxruntime's pre-processing and ``quantize_static``;
  NNCF's ``quantize`` or ``quantize_with_accuracy_control`` with its validation; autoquant's
  calibration, quantization and search), after imports and data loading;
- ``peak_rss_mb``: this process's VmHWM at the end (Linux resets it at exec, unlike ``ru_maxrss``,
  which carries the parent's peak into a child); ``rss_before_mb``: VmRSS before the work;
- ``trials``: models the tool evaluated (1 for one-shot tools), ``time_to_budget_s`` (autoquant
  tune's own), ``note``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def status_mb(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` of this process in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024.0


def load_feeds(path: Path) -> tuple[list[dict[str, np.ndarray]], list[int] | None]:
    """The samples of an ``.npz`` written by compare.py: batch-1 feeds, and labels when stored."""
    with np.load(path, allow_pickle=False) as data:
        names = [k for k in data.files if k.startswith("in:")]
        arrays = {k[3:]: data[k] for k in names}
        labels = [int(x) for x in data["labels"]] if "labels" in data.files else None
    count = len(next(iter(arrays.values())))
    return [{name: np.asarray(a[i]) for name, a in arrays.items()} for i in range(count)], labels


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


# --- onnxruntime quantize_static --------------------------------------------------------------------


def run_ort(spec: dict, out: Path) -> dict[str, Any]:
    """quant_pre_process (or the raw model when it fails), then quantize_static in QDQ with the
    calibration method and granularity of ``params``; every other option at onnxruntime's default."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib, _ = load_feeds(Path(spec["calib"]))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    params, note = spec["params"], ""
    began = time.perf_counter()
    source, pre = Path(spec["model"]), out / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(pre))
        model = pre
    except Exception as exc:  # e.g. symbolic shape inference on dynamic H/W
        model, note = source, f"quant_pre_process failed ({one_line(exc)}); raw model quantized"
    quantize_static(
        str(model),
        str(out / "model.int8.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=params["per_channel"],
        calibrate_method=getattr(CalibrationMethod, params["method"]),
    )
    seconds = time.perf_counter() - began
    pre.unlink(missing_ok=True)
    return {"seconds": seconds, "trials": 1, "note": note}


# --- NNCF -------------------------------------------------------------------------------------------


class Validation:
    """NNCF's ``validation_fn``: autoquant's objective of the study on the test samples, with the
    FP32 reference taken from the first runs of the original model (as a user's metric would)."""

    def __init__(self, spec: dict, original: Any, outputs: list[str]) -> None:
        from autoquant.config import load_config
        from autoquant.objectives import create_objective

        config = load_config(spec["config"])
        self.feeds, self.labels = load_feeds(Path(spec["test"]))
        self.objective = lambda: create_objective(
            config.test.objective, has_labels=self.labels is not None, decode=config.test.decode
        )
        self.original, self.outputs = original, outputs
        self.reference: dict[int, list[np.ndarray]] = {}
        self.trials = 0

    def _run(self, session: Any, index: int) -> list[np.ndarray]:
        return [np.asarray(v) for v in session.run(self.outputs, self.feeds[index])]

    def __call__(self, model: Any, items: Any) -> tuple[float, list[float]]:
        import onnxruntime as ort

        items = [int(i) for i in items]
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        is_fp32 = model is self.original
        if not is_fp32 and len(items) > 1:
            self.trials += 1
        fp32 = None
        objective = self.objective()
        for i in items:
            outputs = self._run(session, i)
            if is_fp32:
                self.reference[i] = outputs
            elif i not in self.reference:
                fp32 = fp32 or ort.InferenceSession(
                    self.original.SerializeToString(), providers=["CPUExecutionProvider"]
                )
                self.reference[i] = self._run(fp32, i)
            labels = [self.labels[i]] if self.labels is not None else None
            objective.update(outputs, labels, self.reference[i])
        per_item = [objective.score(np.array([k])) for k in range(len(items))]
        return objective.score(), per_item


def run_nncf(spec: dict, out: Path) -> dict[str, Any]:
    """nncf.quantize, or nncf.quantize_with_accuracy_control with max_drop = the study's budget
    (absolute), on the ONNX backend with NNCF's defaults otherwise; subset_size = every
    calibration sample."""
    import nncf
    import onnx

    from autoquant.config import load_config

    config = load_config(spec["config"])
    calib, _ = load_feeds(Path(spec["calib"]))
    model = onnx.load(spec["model"])
    outputs = list(config.model.outputs) or [o.name for o in model.graph.output]
    calibration = nncf.Dataset(calib)
    validation = Validation(spec, model, outputs) if spec["params"]["accuracy_control"] else None
    began = time.perf_counter()
    if validation is None:
        quantized = nncf.quantize(model, calibration, subset_size=len(calib))
    else:
        quantized = nncf.quantize_with_accuracy_control(
            model,
            calibration,
            nncf.Dataset(list(range(len(validation.feeds)))),
            validation,
            max_drop=config.search.accept_int8_decay,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(calib),
        )
    onnx.save(quantized, str(out / "model.int8.onnx"))
    seconds = time.perf_counter() - began
    trials = 1 if validation is None else validation.trials
    return {"seconds": seconds, "trials": trials, "note": ""}


# --- autoquant --------------------------------------------------------------------------------------


def run_autoquant_quantize(spec: dict, out: Path) -> dict[str, Any]:
    """What ``autoquant quantize CONFIG`` does: prepare, calibrate, quantize, write the outputs."""
    from autoquant.config import load_config
    from autoquant.engine import write_outputs
    from autoquant.search import pipeline

    began = time.perf_counter()
    config = load_config(spec["config"])
    graph = pipeline.load_graph(config)
    calibrated = pipeline.calibrate(config, graph=graph)
    write_outputs(pipeline.quantize(calibrated, config.quantization), config, config.output.directory)
    return {"seconds": time.perf_counter() - began, "trials": 1, "note": ""}


def run_autoquant_tune(spec: dict, out: Path) -> dict[str, Any]:
    """``autoquant.tune(config)``: the study of the config's search mode, from an empty cache."""
    import autoquant

    began = time.perf_counter()
    autoquant.tune(autoquant.load_config(spec["config"]))
    seconds = time.perf_counter() - began
    summary = json.loads((out / "study_summary.json").read_text())
    trials = summary["completed_trials"] + summary.get("failed_trials", 0)
    first = (summary.get("timings") or {}).get("to_first_trial_s")
    note = f"first trial after {first:.1f} s" if first is not None else ""
    return {
        "seconds": seconds,
        "trials": trials,
        "time_to_budget_s": summary["time_to_budget_s"],
        "note": note,
        "model": summary["model"],  # model.over-budget.int8.onnx when no trial is within the budget
    }


RUNNERS = {
    "ort": run_ort,
    "nncf": run_nncf,
    "autoquant-quantize": run_autoquant_quantize,
    "autoquant-tune": run_autoquant_tune,
}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from autoquant.logs import quiet_onnxruntime

    quiet_onnxruntime()
    result: dict[str, Any] = {"rss_before_mb": status_mb("VmRSS")}
    try:
        result.update(RUNNERS[spec["kind"]](spec, out))
    except Exception as exc:
        result["error"] = one_line(exc)
        logging.getLogger("compare").exception("the contender failed")
    result["peak_rss_mb"] = status_mb("VmHWM")
    (out / "run.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
