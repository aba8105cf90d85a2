"""Search stage: an Optuna study over the quantization choices.

Every trial quantizes with one set of choices (thresholds come from the cached statistics; the
FP32 pass never runs again), evaluates the INT8 model and returns its decay. What the selection
needs is stored as trial user attributes, so a resumed study knows its past.

* **fast** mode runs the known-good strategies of ``search_spaces/fast.yaml`` in order and stops at
  the first whose decay is within ``accept_int8_decay``;
* **full** mode runs those strategies, then trials sampled by a seeded multivariate TPE, then a
  binary search for the smallest ``fp32_layers`` (the most sensitive layers kept in FP32) that
  meets the budget, then the per-layer threshold scale tuning, confirmed by one full trial.

The best trial is the one within budget with the fewest compute layers onnxruntime runs in FP32
(read from its optimized graph of the trial's model, once per graph structure), then the
lowest latency at one thread, then the smallest decay; latencies within the measured noise of the
timing count as equal (see :mod:`autoquant.search`). If none is within budget, the best is the
one with the smallest decay. The outputs of the best trial are written after every improving trial.
Latency is measured at one thread and at onnxruntime's default thread count.

This module holds a trial's body (:func:`run_choice`); the ranking is :mod:`autoquant.search`,
which trial runs next is decided by :mod:`autoquant.search` and the trials are driven by
:mod:`autoquant.search`, in one process or in many that share the study's storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

from autoquant.common import ProgressFn
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.engine import (
    QuantizedModel,
    Requantizer,
    compute_layers,
    layers_in_float,
    session_and_optimized,
)
from autoquant.engine.graph import session_for, session_options, session_threads
from autoquant.errors import (
    AutoquantError,
    EvaluationError,
    QuantizationError,
    SearchStopped,
    TrialReturned,
    one_line,
)
from autoquant.evaluation import (
    SELECTION_THREADS,
    Evaluation,
    LatencyTimer,
    ThreadLabel,
    load_average,
    trial_budget,
)
from autoquant.names import (
    FP32_NODES_FILE,
    SENSITIVITY_FILE,
    TABLE_FILE,
)
from autoquant.search._outcome import OutcomeAttr, TrialEnd, TrialOutcome, decay_text
from autoquant.search._resolution import meets_budget
from autoquant.search._space import SearchSpace, Value
from autoquant.search.pipeline import Calibrated, cache_dir, quantize
from autoquant.tracking import MlflowTracker, NullTracker

logger = logging.getLogger(__name__)

SCALE_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2)
DEFAULT_SAMPLED_TRIALS = 12


class Reporter(Protocol):
    """What a live display is told; every method is optional in effect (see :class:`NullReporter`)."""

    def phase(self, message: str) -> None: ...
    def trial_started(self, number: int, key: str, params: dict[str, Value]) -> None: ...
    def progress(self, samples: int) -> None: ...
    def step(self, done: int, total: int, unit: str) -> None: ...
    def trial_finished(
        self, outcome: TrialOutcome | None, failure: TrialEnd | None, best: TrialOutcome | None
    ) -> None: ...


class NullReporter:
    """A reporter that shows nothing."""

    def phase(self, message: str) -> None:
        """Ignore a phase change."""

    def trial_started(self, number: int, key: str, params: dict[str, Value]) -> None:
        """Ignore a trial start."""

    def progress(self, samples: int) -> None:
        """Ignore evaluation progress."""

    def step(self, done: int, total: int, unit: str) -> None:
        """Ignore a phase's progress."""

    def trial_finished(
        self, outcome: TrialOutcome | None, failure: TrialEnd | None, best: TrialOutcome | None
    ) -> None:
        """Ignore a finished trial."""


@dataclass(frozen=True)
class Candidate:
    """A model for a :class:`Scorer` to score: an Optuna trial's INT8 model with its session, or
    the FP32 model (``number`` -1, no session yet)."""

    number: int
    key: str
    params: dict[str, Value]
    model: onnx.ModelProto | Path
    session: ort.InferenceSession | None


class Scorer(Protocol):
    """Who scores the models of a study. The driver is the same whoever it is: the test set with
    autoquant's objective (:class:`~autoquant.evaluation.Evaluator`), or the user's own code
    (:class:`~autoquant.search.Tuner`)."""

    def reference_score(self, fp32: Candidate, stored: float | None, progress: ProgressFn) -> float:
        """The FP32 model's score; ``stored`` is the one a resumed study recorded, if any."""
        ...

    def score(self, candidate: Candidate, progress: ProgressFn, prune: bool = False) -> Evaluation:
        """Score an INT8 model against the FP32 score; with ``prune`` the scorer may stop early
        when the decay is certainly over budget (``Evaluation.pruned``).

        Raises:
            AutoquantError: The model cannot be scored; the trial fails with this reason.
        """
        ...


@dataclass(frozen=True)
class SearchInputs:
    """What the study searches with, built once per process before its first trial."""

    config: StudyConfig
    calibrated: Calibrated
    scorer: Scorer
    space: SearchSpace
    timers: dict[str, LatencyTimer]  # threads label (latency.THREADS) -> its timer
    analysis_feeds: list[dict[str, np.ndarray]]
    fp32_latency: dict[str, float] = field(default_factory=dict)  # the study's FP32 ms per threads label
    began: float = field(default_factory=time.time)  # when this process began the study (epoch s)

    @property
    def nodes(self) -> int:
        """Number of quantizable nodes."""
        return len(self.calibrated.graph.nodes)


@dataclass
class ProcessCaches:
    """What this process learns as its trials run, kept for the next ones."""

    requantizer: Requantizer | None = None  # rewrites scales of a structure built before
    latencies: dict[str, dict[str, float]] = field(default_factory=dict)  # structure -> label -> ms
    in_float: dict[str, tuple[str, ...]] = field(default_factory=dict)  # structure -> layers run in float
    rankings: dict[str, list[str]] = field(default_factory=dict)  # choices (no blacklist) -> ranking
    new_sensitivity: str | None = None  # JSON of a ranking computed since the last logged trial
    shown_tracebacks: set[str] = field(default_factory=set)
    stages: dict[str, float] = field(default_factory=dict)  # this process's set-up, seconds per stage

    def ranking(self, quantization: QuantizationConfig) -> list[str] | None:
        """The sensitivity ranking of these choices, if this process has it (see :func:`ranking_key`)."""
        return self.rankings.get(ranking_key(quantization))


def ranking_key(quantization: QuantizationConfig) -> str:
    """The choices a sensitivity ranking depends on: ranked without a blacklist, scales or bias
    correction."""
    base = quantization.model_copy(update={"fp32_layers": 0, "layer_scales": {}})
    return base.model_dump_json(exclude={"bias_correction"})


@dataclass(frozen=True)
class Observers:
    """Who is told of the search (the display, MLflow) and who may stop it."""

    reporter: Reporter = field(default_factory=NullReporter)
    tracker: NullTracker | MlflowTracker = field(default_factory=NullTracker)
    should_stop: Callable[[], bool] = lambda: False  # a deadline passed or the user asked to stop
    user_stopped: Callable[[], bool] = lambda: False  # the user asked to stop (Ctrl-C)


@dataclass(frozen=True)
class SearchContext:
    """Everything a trial needs: the study's inputs, this process's caches and its observers."""

    inputs: SearchInputs
    caches: ProcessCaches
    observers: Observers


@contextmanager
def stage(what: str, error: type[AutoquantError]) -> Iterator[None]:
    """Turn any non-autoquant exception raised while ``what`` into ``error``, keeping it as the cause."""
    try:
        yield
    except (AutoquantError, SearchStopped, TrialReturned):
        raise
    except Exception as exc:
        raise error(f"{what} failed ({one_line(exc)})") from exc


def structure_key(model: onnx.ModelProto) -> str:
    """A hash of what decides a QDQ model's speed: its nodes (op types, attributes, wiring) and the
    element types of its initializers, not their values. Trials whose choices changed only scales,
    zero points or thresholds have the same key and run the same kernels."""
    digest = hashlib.sha256()
    for node in model.graph.node:
        digest.update(f"{node.op_type}|{node.domain}|{list(node.input)}|{list(node.output)}|".encode())
        digest.update(b"".join(a.SerializeToString() for a in node.attribute))
    for tensor in model.graph.initializer:
        digest.update(f"{tensor.name}|{tensor.data_type}|{list(tensor.dims)}|".encode())
    return digest.hexdigest()[:16]


class Pruned(Exception):
    """A trial's evaluation stopped early, its decay certainly over the budget (not an error)."""

    def __init__(self, evaluation: Evaluation) -> None:
        decay = decay_text(evaluation.decay, evaluation.decay_ci)
        super().__init__(f"pruned after {evaluation.samples} samples: decay {decay}")
        self.evaluation = evaluation


def run_choice(
    ctx: SearchContext,
    quantization: QuantizationConfig,
    ranking: Sequence[str],
    number: int,
    key: str,
    params: dict[str, Value],
    prune: bool = False,
) -> tuple[TrialOutcome, QuantizedModel]:
    """Quantize with ``quantization`` (``ranking``: its sensitivity ranking when it keeps
    ``fp32_layers``), evaluate and measure; the body of every trial.

    Raises:
        AutoquantError: One stage failed; its message names the stage, the original is its cause.
        Pruned: With ``prune``, the evaluation stopped early, the decay certainly over budget.
    """
    timings: dict[str, float] = {}
    began_trial = time.perf_counter()
    with stage("onnxruntime's quantizer", QuantizationError):
        result = quantize(ctx.inputs.calibrated, quantization, ranking, timings, ctx.caches.requantizer)
    began = time.perf_counter()
    with stage("creating an onnxruntime session for the quantized model", QuantizationError):
        session, in_float = session_and_layers_in_float(ctx, result.model)
    timings["session"] = time.perf_counter() - began
    with stage("evaluating the quantized model", EvaluationError):
        candidate = Candidate(number, key, params, result.model, session)
        evaluation = ctx.inputs.scorer.score(candidate, ctx.observers.reporter.progress, prune)
    timings["inference"] = evaluation.seconds
    del candidate, session  # closed before the latency's own sessions open (a large model's is large)
    if evaluation.pruned:
        raise Pruned(evaluation)
    began = time.perf_counter()
    with stage("measuring the latency", EvaluationError):
        latencies = measure_structure(ctx, result.model, trial_budget(time.perf_counter() - began_trial))
    load = load_average()
    timings["latency"] = time.perf_counter() - began
    timings["trial"] = time.perf_counter() - began_trial
    outcome = TrialOutcome(
        number=number,
        key=key,
        params=params,
        score=evaluation.score,
        decay=evaluation.decay,
        decay_ci=evaluation.decay_ci,
        decay_bound=evaluation.decay_bound,
        fp32_nodes=result.fp32_nodes,
        latency_ms=latencies[SELECTION_THREADS],
        within_budget=meets_budget(evaluation.decay, evaluation.decay_bound, ctx.inputs.config.search),
        timings=timings,
        layer_scales=dict(quantization.layer_scales),
        fp32_compute=in_float,
        fp32_wrapped=compute_layers(ctx.inputs.calibrated.graph, result.fp32_nodes),
        float_nodes=result.float_nodes,
        latencies=latencies,
        speedups={k: ctx.inputs.fp32_latency[k] / max(v, 1e-9) for k, v in latencies.items()},
        load_average=load,
    )
    return outcome, result


def scoring_options(ctx: SearchContext) -> ort.SessionOptions | None:
    """How trials are scored: at batch 1, on one thread when the FP32 model ran faster on one than
    on onnxruntime's default (a small model's ops are too short to share between cores); else
    onnxruntime's default, or ``--threads``."""
    fp32 = ctx.inputs.fp32_latency
    one, default = fp32.get(ThreadLabel.ONE.value), fp32.get(ThreadLabel.DEFAULT.value)
    batch_one = ctx.inputs.config.test.batch_size == 1
    if session_threads() is None and batch_one and one is not None and default is not None and one < default:
        return session_options(1)
    return None


def session_and_layers_in_float(
    ctx: SearchContext, model: onnx.ModelProto
) -> tuple[ort.InferenceSession, tuple[str, ...]]:
    """An onnxruntime session for the INT8 ``model`` and the compute layers that onnxruntime's
    optimized graph of it runs in float (no integer kernel stands for them). The optimized graph
    is written once per graph structure (fusions do not depend on scales), as the session opens."""
    options = scoring_options(ctx)
    structure = structure_key(model)
    known = ctx.caches.in_float.get(structure)
    if known is not None:
        return session_for(model, options), known
    graph = ctx.inputs.calibrated.graph
    workdir = cache_dir(ctx.inputs.config)  # the optimized graph's files stay in the cache folder
    session, optimized = session_and_optimized(model, workdir, session_for, options)
    known = layers_in_float(model, optimized, compute_layers(graph, [n.name for n in graph.nodes]))
    ctx.caches.in_float[structure] = known
    return session, known


def measure_structure(ctx: SearchContext, model: onnx.ModelProto, budget_s: float) -> dict[str, float]:
    """The model's latency (ms) at each thread count, measured once per graph structure: a graph
    runs as fast whatever its scales. Each is the timer's INT8/FP32 ratio times the study's FP32
    latency at that thread count; the measurement takes about ``budget_s``, all counts together."""
    structure = structure_key(model)
    known = ctx.caches.latencies.get(structure)
    if not isinstance(known, dict) or set(known) != set(ctx.inputs.timers):  # e.g. stored by an older version
        share = budget_s / len(ctx.inputs.timers)
        known = {
            k: t.model_ratio(model, budget_s=share) * ctx.inputs.fp32_latency[k]
            for k, t in ctx.inputs.timers.items()
        }
        ctx.caches.latencies[structure] = known
    return dict(known)


def log_trial(ctx: SearchContext, outcome: TrialOutcome, result: QuantizedModel) -> None:
    """Send a completed trial to the tracker: metrics, tags and its tables."""
    from autoquant.engine import calibration_table

    low, high = outcome.decay_ci or (float("nan"), float("nan"))
    metrics = {
        "score": outcome.score,
        "decay": outcome.decay,
        "decay_ci_low": low,
        "decay_ci_high": high,
        **({"decay_bound": outcome.decay_bound} if outcome.decay_bound is not None else {}),
        "fp32_nodes": len(outcome.fp32_nodes),
        "fp32_compute_layers": len(outcome.fp32_compute),  # run in float (onnxruntime's optimized graph)
        "fp32_wrapped_layers": len(outcome.fp32_wrapped or ()),  # kept in FP32 by the choices
        "float_nodes": len(outcome.float_nodes),
        "latency_ms": outcome.latency_ms,
        **{f"latency_ms_{k}_threads": v for k, v in outcome.latencies.items()},
        **{f"speedup_{k}_threads": v for k, v in outcome.speedups.items()},
        "model_size_bytes": result.model.ByteSize(),
        **{f"time_{k}": v for k, v in outcome.timings.items()},
    }
    artifacts = {
        TABLE_FILE: json.dumps(calibration_table(result), indent=2),
        FP32_NODES_FILE: "".join(f"{n}\n" for n in outcome.fp32_nodes),
    }
    if ctx.caches.new_sensitivity is not None:
        artifacts[SENSITIVITY_FILE], ctx.caches.new_sensitivity = ctx.caches.new_sensitivity, None
    tags = {OutcomeAttr.key.value: outcome.key, OutcomeAttr.within_budget.value: outcome.within_budget}
    ctx.observers.tracker.log_trial(outcome.number, outcome.params, metrics, tags, artifacts)
