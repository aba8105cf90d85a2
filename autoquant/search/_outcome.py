"""A finished trial's outcome, as the selection, the outputs and the tracker read it, and as it is
stored in the trial's user attributes (names and JSON shapes kept as earlier versions wrote them,
so that a stored study resumes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoquant.evaluation import SELECTION_THREADS
from autoquant.names import STUDY_LATENCY_TOLERANCE, TRIAL_FAIL_REASON, TRIAL_KEY
from autoquant.search._selection import best_outcome
from autoquant.search._space import Value


class OutcomeAttr(StrEnum):
    """The user-attribute names a trial's outcome is stored under: written by earlier versions
    too, so a stored study resumes only while they stay as they are."""

    key = TRIAL_KEY
    score = "score"
    decay = "decay"
    decay_ci = "decay_ci"
    decay_bound = "decay_bound"  # with search.budget_confidence: the one-sided upper bound
    fp32_nodes = "fp32_nodes"
    fp32_compute_layers = "fp32_compute_layers"  # run in float by onnxruntime (before: kept in FP32)
    fp32_wrapped_layers = "fp32_wrapped_layers"  # kept in FP32 by the choices (absent: an older version)
    float_nodes = "float_nodes"
    latency_ms = "latency_ms"
    latency_by_threads = "latency_by_threads"
    speedup_by_threads = "speedup_by_threads"
    within_budget = "within_budget"
    timings = "timings"
    layer_scales = "layer_scales"
    samples = "samples"
    load_average = "load_average"  # the 1-minute load average as the latency was measured


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
    # the compute layers onnxruntime's optimized graph runs in float (what the selection counts)
    fp32_compute: tuple[str, ...] = ()
    # the compute layers among fp32_nodes (kept in FP32 by the choices); None: an older version's
    # trial, whose fp32_compute is this count (the QDQ wrapping), not what runs
    fp32_wrapped: tuple[str, ...] | None = None
    float_nodes: tuple[str, ...] = ()  # left in float for speed (float_ops): not FP32 layers
    latencies: dict[str, float] = field(default_factory=dict)  # threads label -> ms (latency_ms: "1")
    speedups: dict[str, float] = field(default_factory=dict)  # threads label -> FP32 ms / INT8 ms
    load_average: float | None = None  # the 1-minute load average as its latency was measured
    decay_bound: float | None = None  # with search.budget_confidence: the decay's one-sided upper bound

    @property
    def kept_fp32(self) -> tuple[str, ...]:
        """The compute layers its choices kept in FP32 (an older version's trial: its count)."""
        return self.fp32_compute if self.fp32_wrapped is None else self.fp32_wrapped

    def attrs(self) -> dict[str, Any]:
        """User attributes for Optuna storage (JSON-serialisable, plain string keys)."""
        attrs = {
            OutcomeAttr.key: self.key,
            OutcomeAttr.score: self.score,
            OutcomeAttr.decay: self.decay,
            OutcomeAttr.decay_ci: list(self.decay_ci) if self.decay_ci else None,
            OutcomeAttr.fp32_nodes: list(self.fp32_nodes),
            OutcomeAttr.fp32_compute_layers: list(self.fp32_compute),
            OutcomeAttr.fp32_wrapped_layers: None if self.fp32_wrapped is None else list(self.fp32_wrapped),
            OutcomeAttr.float_nodes: list(self.float_nodes),
            OutcomeAttr.latency_ms: self.latency_ms,
            OutcomeAttr.latency_by_threads: self.latencies,
            OutcomeAttr.speedup_by_threads: self.speedups,
            OutcomeAttr.within_budget: self.within_budget,
            OutcomeAttr.timings: self.timings,
            OutcomeAttr.layer_scales: self.layer_scales,
            OutcomeAttr.load_average: self.load_average,
            OutcomeAttr.decay_bound: self.decay_bound,
        }
        return {name.value: value for name, value in attrs.items()}

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialOutcome | None:
        """Rebuild the outcome of a completed trial, or None for one that did not complete."""
        a = trial.user_attrs
        if trial.state != TrialState.COMPLETE or OutcomeAttr.decay not in a:
            return None
        ci = a.get(OutcomeAttr.decay_ci)
        return cls(
            number=trial.number,
            key=a.get(OutcomeAttr.key, ""),
            params=dict(trial.params),
            score=a[OutcomeAttr.score],
            decay=a[OutcomeAttr.decay],
            decay_ci=tuple(ci) if ci else None,
            fp32_nodes=tuple(a[OutcomeAttr.fp32_nodes]),
            latency_ms=a[OutcomeAttr.latency_ms],
            within_budget=a[OutcomeAttr.within_budget],
            timings=a.get(OutcomeAttr.timings, {}),
            layer_scales=a.get(OutcomeAttr.layer_scales, {}),
            # a trial stored by an older version counts all its FP32 nodes (the safe side)
            fp32_compute=tuple(a.get(OutcomeAttr.fp32_compute_layers, a[OutcomeAttr.fp32_nodes])),
            fp32_wrapped=_names(a.get(OutcomeAttr.fp32_wrapped_layers)),
            float_nodes=tuple(a.get(OutcomeAttr.float_nodes, ())),
            latencies=dict(
                a.get(OutcomeAttr.latency_by_threads, {SELECTION_THREADS: a[OutcomeAttr.latency_ms]})
            ),
            speedups=dict(a.get(OutcomeAttr.speedup_by_threads, {})),
            load_average=a.get(OutcomeAttr.load_average),  # None: stored by an older version
            decay_bound=a.get(OutcomeAttr.decay_bound),
        )


def _names(stored: list[str] | None) -> tuple[str, ...] | None:
    return None if stored is None else tuple(stored)


def decay_text(decay: float, ci: tuple[float, float] | None, bound: float | None = None) -> str:
    """``+0.0012 [-0.0031, +0.0055]`` (the decay and its 95 % interval), with ``bound +0.0048``
    when the one-sided upper bound decides the budget."""
    text = f"{decay:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else " [no interval]")
    return text + (f" bound {bound:+.4f}" if bound is not None else "")


class EndState(StrEnum):
    """How a trial without an outcome ended."""

    pruned = "pruned"  # its evaluation stopped early, the decay certainly over the budget
    failed = "failed"  # it could not be built or scored
    returned = "returned"  # handed back unfinished (a client gave it up): it runs again


@dataclass(frozen=True)
class TrialEnd:
    """A trial that ended without an outcome: which one, how and why (its ``str`` is the reason)."""

    number: int
    key: str
    state: EndState
    reason: str
    decay: float | None = None  # a pruned trial's decay when it stopped
    samples: int | None = None  # the samples scored before it stopped
    decay_ci: tuple[float, float] | None = None  # a pruned trial's 95 % interval on those samples

    def __str__(self) -> str:
        return self.reason


def ended(study: optuna.Study) -> list[TrialEnd]:
    """The pruned and failed trials, in order; a failed trial queued again under its key (its
    process died, it was interrupted) is left out, as its key ran again."""
    trials = study.get_trials(deepcopy=False)
    later_keys = {}
    for t in trials:
        later_keys[t.user_attrs.get(TRIAL_KEY)] = t.number
    ends = []
    for t in trials:
        a, key = t.user_attrs, t.user_attrs.get(TRIAL_KEY, "")
        if t.state == TrialState.PRUNED:
            ends.append(
                TrialEnd(
                    t.number,
                    key,
                    EndState.pruned,
                    "pruned",
                    a.get(OutcomeAttr.decay),
                    a.get(OutcomeAttr.samples),
                    tuple(a[OutcomeAttr.decay_ci]) if a.get(OutcomeAttr.decay_ci) else None,
                )
            )
        elif t.state == TrialState.FAIL and later_keys.get(key, t.number) == t.number:
            ends.append(TrialEnd(t.number, key, EndState.failed, a.get(TRIAL_FAIL_REASON, "")))
    return ends


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
