"""Search stage: an Optuna study over the quantization choices.

Every trial quantizes with one set of choices (thresholds come from the cached statistics; the
FP32 pass never runs again), evaluates the INT8 model and returns its decay. What the selection
needs is stored as trial user attributes, so a resumed study knows its past.

* **fast** mode runs the known-good strategies of ``search_spaces/fast.yaml`` in order and stops at
  the first whose decay is within ``accept_int8_decay``;
* **full** mode runs those strategies, then trials sampled by a seeded multivariate TPE, then a
  binary search for the smallest ``fp32_layers`` (the most sensitive layers kept in FP32) that
  meets the budget, then the per-layer threshold scale tuning, confirmed by one full trial.

The best trial is the one within budget with the fewest compute layers left in FP32, then the
lowest latency at one thread, then the smallest decay; latencies within the measured noise of the
timing count as equal (see :mod:`autoquant.selection`). If none is within budget, the best is the
one with the smallest decay. The outputs of the best trial are written after every improving trial.
Latency is measured at one thread and at onnxruntime's default thread count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoquant.analyze import Sensitivity, difference, run_outputs
from autoquant.common import ProgressFn
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.errors import (
    AutoquantError,
    EvaluationError,
    QuantizationError,
    one_line,
)
from autoquant.evaluate import SELECTION_THREADS, Evaluation, LatencyTimer
from autoquant.graph import session_for
from autoquant.names import (
    FP32_NODES_FILE,
    SENSITIVITY_FILE,
    STUDY_LATENCIES,
    STUDY_LATENCY_TOLERANCE,
    STUDY_SCALES_PROGRESS,
    STUDY_STARTED,
    STUDY_TIME_TO_BUDGET,
    TABLE_FILE,
    TRIAL_FAIL_REASON,
    TRIAL_KEY,
    TRIAL_SCALES,
    TrialKey,
)
from autoquant.pipeline import Calibrated, quantize
from autoquant.quantize import QuantizedModel, compute_layers, fp32_nodes
from autoquant.rescale import Requantizer
from autoquant.selection import best_outcome, ranked  # noqa: F401  (ranked: re-exported)
from autoquant.space import SearchSpace, Value
from autoquant.tracking import MlflowTracker, NullTracker

logger = logging.getLogger(__name__)

SCALE_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2)
DEFAULT_SAMPLED_TRIALS = 12


@dataclass(frozen=True)
class TrialOutcome:
    """What one finished trial measured (also stored as the trial's user attributes)."""

    number: int
    key: str
    params: dict[str, Value]
    score: float
    decay: float
    decay_ci: tuple[float, float] | None
    fp32_nodes: tuple[str, ...]
    latency_ms: float
    within_budget: bool
    timings: dict[str, float] = field(default_factory=dict)
    layer_scales: dict[str, float] = field(default_factory=dict)
    fp32_compute: tuple[str, ...] = ()  # the compute layers among fp32_nodes (what the selection counts)
    float_nodes: tuple[str, ...] = ()  # left in float for speed (float_ops): not FP32 layers
    latencies: dict[str, float] = field(default_factory=dict)  # threads label -> ms (latency_ms: "1")
    speedups: dict[str, float] = field(default_factory=dict)  # threads label -> FP32 ms / INT8 ms

    def attrs(self) -> dict[str, Any]:
        """User attributes for Optuna storage (JSON-serialisable)."""
        return {
            TRIAL_KEY: self.key,
            "score": self.score,
            "decay": self.decay,
            "decay_ci": list(self.decay_ci) if self.decay_ci else None,
            "fp32_nodes": list(self.fp32_nodes),
            "fp32_compute_layers": list(self.fp32_compute),
            "float_nodes": list(self.float_nodes),
            "latency_ms": self.latency_ms,
            "latency_by_threads": self.latencies,
            "speedup_by_threads": self.speedups,
            "within_budget": self.within_budget,
            "timings": self.timings,
            "layer_scales": self.layer_scales,
        }

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialOutcome | None:
        """Rebuild the outcome of a completed trial, or None for one that did not complete."""
        a = trial.user_attrs
        if trial.state != TrialState.COMPLETE or "decay" not in a:
            return None
        ci = a.get("decay_ci")
        return cls(
            number=trial.number,
            key=a.get(TRIAL_KEY, ""),
            params=dict(trial.params),
            score=a["score"],
            decay=a["decay"],
            decay_ci=tuple(ci) if ci else None,
            fp32_nodes=tuple(a["fp32_nodes"]),
            latency_ms=a["latency_ms"],
            within_budget=a["within_budget"],
            timings=a.get("timings", {}),
            layer_scales=a.get("layer_scales", {}),
            # a trial stored by an older version counts all its FP32 nodes (the safe side)
            fp32_compute=tuple(a.get("fp32_compute_layers", a["fp32_nodes"])),
            float_nodes=tuple(a.get("float_nodes", ())),
            latencies=dict(a.get("latency_by_threads", {SELECTION_THREADS: a["latency_ms"]})),
            speedups=dict(a.get("speedup_by_threads", {})),
        )


class Reporter(Protocol):
    """What a live display is told; every method is optional in effect (see :class:`NullReporter`)."""

    def phase(self, message: str) -> None: ...
    def trial_started(self, number: int, key: str, params: dict[str, Value]) -> None: ...
    def progress(self, samples: int) -> None: ...
    def step(self, done: int, total: int, unit: str) -> None: ...
    def trial_finished(
        self, outcome: TrialOutcome | None, failure: str | None, best: TrialOutcome | None
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
        self, outcome: TrialOutcome | None, failure: str | None, best: TrialOutcome | None
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
    autoquant's objective (:class:`~autoquant.evaluate.Evaluator`), or the user's own code
    (:class:`~autoquant.ask_tell.Tuner`)."""

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


@dataclass
class SearchContext:
    """Everything a trial needs, built once per study."""

    config: StudyConfig
    calibrated: Calibrated
    scorer: Scorer
    space: SearchSpace
    timers: dict[str, LatencyTimer]  # threads label (evaluate.THREADS) -> its timer
    analysis_feeds: list[dict[str, np.ndarray]]
    ranking_fn: Callable[[QuantizationConfig], Sensitivity]
    on_best: Callable[[TrialOutcome, QuantizedModel, QuantizationConfig], None]
    reporter: Reporter = field(default_factory=NullReporter)
    tracker: NullTracker | MlflowTracker = field(default_factory=NullTracker)
    _rankings: dict[str, list[str]] = field(default_factory=dict)
    new_sensitivity: str | None = None  # JSON of a ranking computed since the last logged trial
    should_stop: Callable[[], bool] = lambda: False  # a deadline passed or the user asked to stop
    user_stopped: Callable[[], bool] = lambda: False  # the user asked to stop (Ctrl-C)
    fp32_latency: dict[str, float] = field(default_factory=dict)  # the study's FP32 ms per threads label
    latencies: dict[str, dict[str, float]] = field(default_factory=dict)  # structure -> label -> ms
    requantizer: Requantizer | None = None  # rewrites scales of a structure built before
    shown_tracebacks: set[str] = field(default_factory=set)

    @property
    def nodes(self) -> int:
        """Number of quantizable nodes."""
        return len(self.calibrated.graph.nodes)

    def ranking(self, quantization: QuantizationConfig) -> list[str]:
        """Sensitivity ranking for these choices (computed once per distinct choice set)."""
        key = quantization.model_copy(update={"fp32_layers": 0, "layer_scales": {}}).model_dump_json()
        if key not in self._rankings:
            sensitivity = self.ranking_fn(quantization)
            self._rankings[key] = sensitivity.ranking()
            self.new_sensitivity = sensitivity.to_json()
        return self._rankings[key]


@contextmanager
def stage(what: str, error: type[AutoquantError]) -> Iterator[None]:
    """Turn any non-autoquant exception raised while ``what`` into ``error``, keeping it as the cause."""
    try:
        yield
    except AutoquantError:
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
        super().__init__(f"pruned after {evaluation.samples} samples: decay {evaluation.decay:+.4f}")
        self.evaluation = evaluation


def run_choice(
    ctx: SearchContext,
    quantization: QuantizationConfig,
    number: int,
    key: str,
    params: dict[str, Value],
    prune: bool = False,
) -> tuple[TrialOutcome, QuantizedModel]:
    """Quantize with ``quantization``, evaluate and measure; the body of every trial.

    Raises:
        AutoquantError: One stage failed; its message names the stage, the original is its cause.
        Pruned: With ``prune``, the evaluation stopped early, the decay certainly over budget.
    """
    timings: dict[str, float] = {}
    with stage("the sensitivity analysis for fp32_layers", EvaluationError):
        ranking = ctx.ranking(quantization) if quantization.fp32_layers else ()
    with stage("onnxruntime's quantizer", QuantizationError):
        result = quantize(ctx.calibrated, quantization, ranking, timings, ctx.requantizer)
    began = time.perf_counter()
    with stage("creating an onnxruntime session for the quantized model", QuantizationError):
        session = session_for(result.model)
    timings["session"] = time.perf_counter() - began
    with stage("evaluating the quantized model", EvaluationError):
        candidate = Candidate(number, key, params, result.model, session)
        evaluation = ctx.scorer.score(candidate, ctx.reporter.progress, prune)
    timings["inference"] = evaluation.seconds
    if evaluation.pruned:
        raise Pruned(evaluation)
    with stage("measuring the latency", EvaluationError):
        latencies = measure_structure(ctx, result.model)
    outcome = TrialOutcome(
        number=number,
        key=key,
        params=params,
        score=evaluation.score,
        decay=evaluation.decay,
        decay_ci=evaluation.decay_ci,
        fp32_nodes=result.fp32_nodes,
        latency_ms=latencies[SELECTION_THREADS],
        within_budget=evaluation.decay <= ctx.config.search.accept_int8_decay,
        timings=timings,
        layer_scales=dict(quantization.layer_scales),
        fp32_compute=compute_layers(ctx.calibrated.graph, result.fp32_nodes),
        float_nodes=result.float_nodes,
        latencies=latencies,
        speedups={k: ctx.fp32_latency[k] / max(v, 1e-9) for k, v in latencies.items()},
    )
    return outcome, result


def measure_structure(ctx: SearchContext, model: onnx.ModelProto) -> dict[str, float]:
    """The model's latency (ms) at each thread count, measured once per graph structure: a graph
    runs as fast whatever its scales. Each is the timer's INT8/FP32 ratio times the study's FP32
    latency at that thread count."""
    structure = structure_key(model)
    known = ctx.latencies.get(structure)
    if not isinstance(known, dict) or set(known) != set(ctx.timers):  # e.g. stored by an older version
        known = {k: t.model_ratio(model) * ctx.fp32_latency[k] for k, t in ctx.timers.items()}
        ctx.latencies[structure] = known
    return dict(known)


def make_objective(ctx: SearchContext, study: optuna.Study) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: suggest, quantize, evaluate; record attributes; write a new best."""
    base = ctx.config.quantization

    def objective(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get(TRIAL_KEY) or TrialKey.sampled(trial.number)
        trial.set_user_attr(TRIAL_KEY, key)
        params = ctx.space.suggest(trial, base, ctx.nodes, bisect=key.startswith(TrialKey.BISECT))
        quantization = ctx.space.apply(params, base)
        scales = trial.user_attrs.get(TRIAL_SCALES)
        if scales:
            quantization = quantization.model_copy(update={"layer_scales": scales})
        ctx.reporter.trial_started(trial.number, key, params)
        # Stop evaluations certainly over budget once a completed trial guards against ending empty.
        prune = bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        try:
            outcome, result = run_choice(ctx, quantization, trial.number, key, params, prune)
        except Pruned as pruned:
            e = pruned.evaluation
            for name, value in {"score": e.score, "decay": e.decay, "samples": e.samples}.items():
                trial.set_user_attr(name, value)
            trial.report(e.decay, step=e.samples)
            ctx.reporter.trial_finished(None, str(pruned), current_best(study))
            raise optuna.TrialPruned(str(pruned)) from None
        except AutoquantError as exc:
            details = getattr(exc, "details", "")
            if details and details not in ctx.shown_tracebacks:  # user code: its traceback, once
                ctx.shown_tracebacks.add(details)
                logger.error("trial %d failed in user code:\n%s", trial.number, details.rstrip())
            logger.debug("trial %d failed", trial.number, exc_info=exc)  # the cause chain, with --verbose
            trial.set_user_attr(TRIAL_FAIL_REASON, str(exc))
            ctx.tracker.log_failure(trial.number, params, str(exc))
            ctx.reporter.trial_finished(None, str(exc), current_best(study))
            raise
        for name, value in outcome.attrs().items():
            trial.set_user_attr(name, value)
        study.set_user_attr(STUDY_LATENCIES, ctx.latencies)
        if outcome.within_budget and STUDY_TIME_TO_BUDGET not in study.user_attrs:
            started = float(study.user_attrs.get(STUDY_STARTED, time.time()))
            study.set_user_attr(STUDY_TIME_TO_BUDGET, time.time() - started)
        log_trial(ctx, outcome, result)
        best = best_outcome([*outcomes(study), outcome], latency_tolerance(study))
        if best is outcome:
            ctx.on_best(outcome, result, quantization)
        ctx.reporter.trial_finished(outcome, None, best)
        return outcome.decay

    return objective


def log_trial(ctx: SearchContext, outcome: TrialOutcome, result: QuantizedModel) -> None:
    """Send a completed trial to the tracker: metrics, tags and its tables."""
    from autoquant.outputs import calibration_table

    low, high = outcome.decay_ci or (float("nan"), float("nan"))
    metrics = {
        "score": outcome.score,
        "decay": outcome.decay,
        "decay_ci_low": low,
        "decay_ci_high": high,
        "fp32_nodes": len(outcome.fp32_nodes),
        "fp32_compute_layers": len(outcome.fp32_compute),
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
    if ctx.new_sensitivity is not None:
        artifacts[SENSITIVITY_FILE], ctx.new_sensitivity = ctx.new_sensitivity, None
    tags = {TRIAL_KEY: outcome.key, "within_budget": outcome.within_budget}
    ctx.tracker.log_trial(outcome.number, outcome.params, metrics, tags, artifacts)


def outcomes(study: optuna.Study) -> list[TrialOutcome]:
    """Outcomes of every completed trial."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [o for o in map(TrialOutcome.from_trial, done) if o is not None]


def latency_tolerance(study: optuna.Study) -> float:
    """The study's latency tolerance (relative; 0 before it is measured)."""
    return float(study.user_attrs.get(STUDY_LATENCY_TOLERANCE, 0.0))


def current_best(study: optuna.Study) -> TrialOutcome | None:
    """The best completed trial so far."""
    return best_outcome(outcomes(study), latency_tolerance(study))


def _finished(study: optuna.Study, key: str) -> FrozenTrial | None:
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return next(
        (t for t in study.get_trials(deepcopy=False, states=states) if t.user_attrs.get(TRIAL_KEY) == key),
        None,
    )


class SearchStopped(Exception):
    """Raised between trials when the search must stop (timeout or Ctrl-C); not an error."""


def _check_stop(ctx: SearchContext) -> None:
    if ctx.should_stop():
        raise SearchStopped


def run_keyed(
    ctx: SearchContext,
    study: optuna.Study,
    objective: Callable,
    key: str,
    params: dict[str, Value] | None,
    force: bool = False,
    **attrs: Any,
) -> FrozenTrial:
    """Run the trial named ``key`` once: a finished one is reused, a waiting one is not enqueued twice.

    Raises:
        SearchStopped: The search must stop before this trial (unless ``force``: a trial that
            confirms work done before the deadline).
    """
    done = _finished(study, key)
    if done is not None:
        return done
    if not force:
        _check_stop(ctx)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if params is not None and not any(t.user_attrs.get(TRIAL_KEY) == key for t in waiting):
        study.enqueue_trial(params, user_attrs={TRIAL_KEY: key, **attrs})
    study.optimize(objective, n_trials=1, catch=(AutoquantError,))
    return _finished(study, key) or study.trials[-1]


def within_budget(trial: FrozenTrial) -> bool:
    """Whether a finished trial met the budget."""
    return bool(trial.state == TrialState.COMPLETE and trial.user_attrs.get("within_budget"))


def run_fast(ctx: SearchContext, study: optuna.Study, objective: Callable, stop_at_first: bool) -> None:
    """The known-good strategies, in order; stop at the first within budget when ``stop_at_first``."""
    base = ctx.config.quantization
    strategies = ctx.space.strategies
    ctx.reporter.phase(f"{len(strategies)} known-good strategies")
    try:
        for index, strategy in enumerate(strategies):
            ctx.reporter.step(index, len(strategies), "strategies")
            name = str(strategy.get("name", len(strategies)))
            partial = {k: v for k, v in strategy.items() if k != "name"}
            key = TrialKey.strategy(name)
            trial = run_keyed(ctx, study, objective, key, ctx.space.complete(partial, base))
            if stop_at_first and within_budget(trial):
                return
    finally:
        ctx.reporter.step(len(strategies), len(strategies), "strategies")


def run_sampled(ctx: SearchContext, study: optuna.Study, objective: Callable, count: int) -> None:
    """``count`` trials sampled by the study's sampler (counting those a resumed study already ran)."""
    ctx.reporter.phase(f"{count} sampled trials")
    done = sum(
        1
        for t in study.trials
        if t.user_attrs.get(TRIAL_KEY, "").startswith(TrialKey.SAMPLED) and t.state.is_finished()
    )
    try:
        for index in range(done, count):
            ctx.reporter.step(index, count, "sampled trials")
            _check_stop(ctx)
            study.optimize(objective, n_trials=1, catch=(AutoquantError,))
    finally:
        ctx.reporter.step(count, count, "sampled trials")


def bisect_fp32_layers(ctx: SearchContext, study: optuna.Study, objective: Callable) -> None:
    """Binary-search the smallest k such that keeping the k most sensitive nodes in FP32 meets the budget.

    The choices are those of the best trial by decay. k = 0 is taken as failing (else there is
    nothing to search) and k = all nodes as passing; about log2(nodes) trials run. Only the ks
    that could beat the best trial within budget are searched: the selection counts the compute
    layers left in FP32, and a blacklist of the k most sensitive nodes keeps those among them and
    those its choices keep anyway; when the best within budget keeps no compute layer in FP32, or
    no k >= 1 can keep fewer, the phase is skipped.
    """
    base_outcome = min(outcomes(study), key=lambda o: o.decay, default=None)
    if base_outcome is None or (base_outcome.within_budget and not base_outcome.fp32_compute):
        return
    params = {k: v for k, v in base_outcome.params.items() if k != "fp32_layers"}
    quantization = ctx.space.apply(params, ctx.config.quantization)
    best = current_best(study)
    high = ctx.nodes
    if best is not None and best.within_budget:
        high = _beatable_ks(ctx, quantization, len(best.fp32_compute))
        if high <= 1:
            logger.info(
                "FP32 blacklist bisection skipped: no k >= 1 can beat trial %d's %d FP32 compute layers",
                best.number,
                len(best.fp32_compute),
            )
            return
    ctx.reporter.phase("binary search over the FP32 blacklist")
    ctx.ranking(quantization)  # compute the ranking before the trials
    low, steps = 0, math.ceil(math.log2(high))
    try:
        for index in range(steps):
            if high - low <= 1:
                break
            ctx.reporter.step(index, steps, "bisection steps")
            k = (low + high) // 2
            trial = run_keyed(ctx, study, objective, TrialKey.bisect(k), {**params, "fp32_layers": k})
            low, high = (low, k) if within_budget(trial) else (k, high)
    finally:
        ctx.reporter.step(steps, steps, "bisection steps")


def _beatable_ks(ctx: SearchContext, quantization: QuantizationConfig, best_compute: int) -> int:
    """The smallest k whose blacklist keeps at least ``best_compute`` compute layers in FP32 (so
    only the ks below it can win), at most the number of nodes."""
    graph = ctx.calibrated.graph
    fixed = fp32_nodes(graph, quantization.model_copy(update={"fp32_layers": 0}))
    if len(compute_layers(graph, fixed)) >= best_compute:
        return 0
    ranking = ctx.ranking(quantization)
    for k in range(1, len(ranking) + 1):
        if len(compute_layers(graph, list(dict.fromkeys([*fixed, *ranking[:k]])))) >= best_compute:
            return k
    return ctx.nodes


def tune_scales(ctx: SearchContext, study: optuna.Study, objective: Callable) -> None:
    """Greedy per-tensor threshold scales on ``data_limit`` samples, then one confirming trial.

    For each quantized tensor in topological order (tensors of ``ignore_layer_list`` nodes are
    skipped), every scale in :data:`SCALE_CANDIDATES` is tried and kept if it lowers the squared
    distance between the INT8 and FP32 model outputs. The progress is stored in the study after
    every tensor, so a resumed study goes on from there. When the deadline passes inside the
    phase, the scales found so far are confirmed by the trial; on a stop request they stay stored,
    unconfirmed, for the next run.
    """
    if _finished(study, TrialKey.SCALES) is not None:
        return
    base_outcome = min(outcomes(study), key=lambda o: (o.decay, len(o.fp32_compute)), default=None)
    if base_outcome is None:
        return
    _check_stop(ctx)
    ctx.reporter.phase("per-layer threshold scales")
    params = dict(base_outcome.params)
    quantization = ctx.space.apply(params, ctx.config.quantization)
    saved = study.user_attrs.get(STUDY_SCALES_PROGRESS)
    progress = (
        saved if saved and saved.get("params") == params else {"params": params, "next": 0, "scales": {}}
    )

    def save(state: dict) -> None:
        study.set_user_attr(STUDY_SCALES_PROGRESS, state)

    scales, finished = greedy_scales(ctx, quantization, progress, save)
    if not finished:
        if ctx.user_stopped():
            logger.info(
                "per-layer scales: stopped after %d tensors; a resumed study goes on", progress["next"]
            )
            raise SearchStopped
        logger.info(
            "per-layer scales: the deadline passed; confirming the %d scales found so far", len(scales)
        )
    run_keyed(ctx, study, objective, TrialKey.SCALES, params, force=True, **{TRIAL_SCALES: scales})


def greedy_scales(
    ctx: SearchContext,
    quantization: QuantizationConfig,
    progress: dict[str, Any],
    save: Callable[[dict], None],
) -> tuple[dict[str, float], bool]:
    """The seed auto-tuning tool's loop: one tensor at a time, keep the scale that lowers the L2.

    Args:
        ctx: The search context; ``ctx.should_stop`` is polled between evaluations.
        quantization: The choices the scales refine.
        progress: ``{"next": tensor index, "scales": {...}}`` to start from (a resumed phase).
        save: Called with the progress after each tensor.

    Returns:
        The scales found and whether every tensor was tried.
    """
    graph = ctx.calibrated.graph
    names = list(ctx.config.model.outputs) or list(graph.outputs)
    reference = run_outputs(str(graph.prepared_path), ctx.analysis_feeds, names)
    ignored = set(ctx.config.search.ignore_layer_list)
    skip = {t for n in graph.nodes if n.name in ignored for t in (*n.inputs, *n.outputs)}
    ranking = ctx.ranking(quantization) if quantization.fp32_layers else ()
    tensors = [t for t in graph.activations if t not in skip]
    scales: dict[str, float] = dict(progress.get("scales", {}))

    def error(candidate: dict[str, float]) -> float:
        choices = quantization.model_copy(update={"layer_scales": candidate})
        model = quantize(ctx.calibrated, choices, ranking, requantizer=ctx.requantizer).model
        return difference(reference, run_outputs(model, ctx.analysis_feeds, names)).l2

    best = error(scales)
    for index in range(int(progress.get("next", 0)), len(tensors)):
        tensor = tensors[index]
        ctx.reporter.step(index, len(tensors), "tensors")
        for scale in SCALE_CANDIDATES:
            if ctx.should_stop():
                return scales, False
            value = error({**scales, tensor: scale})
            if value < best:
                best, scales = value, {**scales, tensor: scale}
        save({**progress, "next": index + 1, "scales": scales})
    ctx.reporter.step(len(tensors), len(tensors), "tensors")
    return scales, True
