"""Search stage: an Optuna study over the quantization choices.

Every trial quantizes with one set of choices (thresholds come from the cached statistics; the
FP32 pass never runs again), evaluates the INT8 model and returns its decay. What the selection
needs is stored as trial user attributes, so a resumed study knows its past.

* **fast** mode runs the known-good strategies of ``search_spaces/fast.yaml`` in order and stops at
  the first whose decay is within ``accept_int8_decay``;
* **full** mode runs those strategies, then trials sampled by a seeded multivariate TPE, then a
  binary search for the smallest ``fp32_layers`` (the most sensitive layers kept in FP32) that
  meets the budget, then the per-layer threshold scale tuning, confirmed by one full trial.

The best trial is the one within budget with the fewest FP32 nodes, then the lowest latency, then
the smallest decay; latencies within the measured noise of the timing count as equal (see
:func:`ranked`). If none is within budget, the best is the one with the smallest decay. The outputs of the
best trial are written after every improving trial.

This module holds a trial's body (:func:`run_choice`) and the selection; which trial runs next is
decided by :mod:`autoquant.phases` and the trials are driven by :mod:`autoquant.driver`, in one
process or in many that share the study's storage.
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
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoquant.analyze import Sensitivity
from autoquant.common import ProgressFn
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.errors import (
    AutoquantError,
    EvaluationError,
    QuantizationError,
    one_line,
)
from autoquant.evaluate import Evaluation, LatencyTimer
from autoquant.graph import session_for
from autoquant.names import (
    FP32_NODES_FILE,
    SENSITIVITY_FILE,
    STUDY_LATENCY_TOLERANCE,
    TABLE_FILE,
    TRIAL_KEY,
)
from autoquant.pipeline import Calibrated, quantize
from autoquant.quantize import QuantizedModel
from autoquant.rescale import Requantizer
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

    def attrs(self) -> dict[str, Any]:
        """User attributes for Optuna storage (JSON-serialisable)."""
        return {
            TRIAL_KEY: self.key,
            "score": self.score,
            "decay": self.decay,
            "decay_ci": list(self.decay_ci) if self.decay_ci else None,
            "fp32_nodes": list(self.fp32_nodes),
            "latency_ms": self.latency_ms,
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
        )


def ranked(outcomes: Sequence[TrialOutcome], latency_tolerance: float = 0.0) -> list[TrialOutcome]:
    """Outcomes best first, by the selection rule.

    Within budget: fewer FP32 nodes first; among as many FP32 nodes, the trials sorted by latency
    form tiers, each a run of latencies within ``latency_tolerance`` (relative) of the one before:
    a tier's latencies are ties, which the smaller decay and then the lower trial number break. Over budget: smaller
    decay, fewer FP32 nodes, lower latency, lower number.
    """
    within = sorted((o for o in outcomes if o.within_budget), key=lambda o: (len(o.fp32_nodes), o.latency_ms))
    order: list[TrialOutcome] = []
    tier: list[TrialOutcome] = []
    for o in within:  # tiers: runs of latencies each within the tolerance of the one before
        if tier and (
            len(o.fp32_nodes) != len(tier[-1].fp32_nodes)
            or o.latency_ms > tier[-1].latency_ms * (1.0 + latency_tolerance)
        ):
            order += sorted(tier, key=lambda t: (t.decay, t.number))
            tier = []
        tier.append(o)
    order += sorted(tier, key=lambda t: (t.decay, t.number))
    over = [o for o in outcomes if not o.within_budget]
    return order + sorted(over, key=lambda o: (o.decay, len(o.fp32_nodes), o.latency_ms, o.number))


def best_outcome(outcomes: Sequence[TrialOutcome], latency_tolerance: float = 0.0) -> TrialOutcome | None:
    """The best outcome by :func:`ranked`."""
    order = ranked(outcomes, latency_tolerance)
    return order[0] if order else None


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
    timer: LatencyTimer
    analysis_feeds: list[dict[str, np.ndarray]]
    ranking_fn: Callable[[QuantizationConfig], Sensitivity]
    on_best: Callable[[TrialOutcome, QuantizedModel, QuantizationConfig], None]
    reporter: Reporter = field(default_factory=NullReporter)
    tracker: NullTracker | MlflowTracker = field(default_factory=NullTracker)
    _rankings: dict[str, list[str]] = field(default_factory=dict)
    new_sensitivity: str | None = None  # JSON of a ranking computed since the last logged trial
    should_stop: Callable[[], bool] = lambda: False  # a deadline passed or the user asked to stop
    user_stopped: Callable[[], bool] = lambda: False  # the user asked to stop (Ctrl-C)
    fp32_latency_ms: float = 0.0  # the study's FP32 latency: trial latencies are ratios to it
    latencies: dict[str, float] = field(default_factory=dict)  # structure key -> latency (ms)
    requantizer: Requantizer | None = None  # rewrites scales of a structure built before
    shown_tracebacks: set[str] = field(default_factory=set)

    @property
    def nodes(self) -> int:
        """Number of quantizable nodes."""
        return len(self.calibrated.graph.nodes)

    def ranking(self, quantization: QuantizationConfig) -> list[str]:
        """Sensitivity ranking for these choices (computed once per distinct choice set)."""
        base = quantization.model_copy(update={"fp32_layers": 0, "layer_scales": {}})
        key = base.model_dump_json()
        if key not in self._rankings:  # ranked without a blacklist, whichever trial asks first
            sensitivity = self.ranking_fn(base)
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
        structure = structure_key(result.model)
        if structure not in ctx.latencies:  # the same graph runs as fast whatever its scales
            ctx.latencies[structure] = ctx.timer.model_ratio(result.model) * ctx.fp32_latency_ms
        latency = ctx.latencies[structure]
    outcome = TrialOutcome(
        number=number,
        key=key,
        params=params,
        score=evaluation.score,
        decay=evaluation.decay,
        decay_ci=evaluation.decay_ci,
        fp32_nodes=result.fp32_nodes,
        latency_ms=latency,
        within_budget=evaluation.decay <= ctx.config.search.accept_int8_decay,
        timings=timings,
        layer_scales=dict(quantization.layer_scales),
    )
    return outcome, result


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
        "latency_ms": outcome.latency_ms,
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
