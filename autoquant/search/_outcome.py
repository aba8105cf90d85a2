"""A finished trial's outcome, as the selection, the outputs and the tracker read it, and as it is
stored in the trial's user attributes (names and JSON shapes kept as earlier versions wrote them,
so that a stored study resumes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoquant.evaluation import SELECTION_THREADS
from autoquant.names import STUDY_LATENCY_TOLERANCE, TRIAL_KEY
from autoquant.search._selection import best_outcome
from autoquant.search._space import Value


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
