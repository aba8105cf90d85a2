"""The study's result as stored: :class:`TuneResult`, read from the storage, and the study summary
written to ``study_summary.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoquant.config import StudyConfig
from autoquant.errors import ConfigError
from autoquant.evaluation import BUSY_TOLERANCE, SELECTION_THREADS, THREADS, is_busy
from autoquant.hardware import ReduceRange, host_isa, resolve_reduce_range, target_isa
from autoquant.names import (
    STUDY_COMPUTE_LAYERS,
    STUDY_FP32_LATENCIES,
    STUDY_FP32_LOAD,
    STUDY_FP32_SCORE,
    STUDY_LATENCY_TOLERANCE,
    STUDY_RESOLUTION,
    STUDY_TIME_TO_BUDGET,
    model_file,
)
from autoquant.search._naming import existing_study, storage_url, study_name
from autoquant.search._outcome import TrialEnd, TrialOutcome, ended, outcomes
from autoquant.search._resolution import budget_rule
from autoquant.search._selection import best_outcome, pareto_front
from autoquant.storage import display_url, workers

#: What a trial's ``fp32_compute_layers`` lists (``fp32_wrapped_layers``: those its choices kept).
FP32_COUNTED = (
    "compute layers onnxruntime runs in FP32 (optimised graph): those its choices kept in FP32 and "
    "the quantized ones without an INT8 kernel (trials without fp32_wrapped_layers, stored by an "
    "earlier version, list only the former)"
)


@dataclass(frozen=True)
class TuneResult:
    """The end of a study."""

    study_name: str
    storage: str
    fp32_score: float
    budget: float
    best: TrialOutcome | None
    trials: tuple[TrialOutcome, ...]
    failed: int
    output: Path
    latency_tolerance: float = 0.0
    time_to_budget_s: float | None = None  # from the study's start to its first trial within budget
    fp32_latency: dict[str, float] = field(default_factory=dict)  # threads label -> FP32 ms, batch 1
    pareto: tuple[TrialOutcome, ...] = ()  # the Pareto front of (decay, latency, FP32 compute layers)
    compute_layers: int | None = None  # the model's compute layers (Conv, ConvTranspose, Gemm, MatMul)
    timings: dict[str, float] = field(default_factory=dict)  # this process's stages, seconds (see Stages)
    ended: tuple[TrialEnd, ...] = ()  # the pruned and failed trials (see :func:`ended`)
    fp32_load_average: float | None = None  # the load average as the FP32 latency was measured
    budget_confidence: float | None = None  # search.budget_confidence (None: the point estimate)
    resolution: dict[str, Any] | None = None  # the test set's resolution (evaluation.Resolution.to_dict)

    @property
    def within_budget(self) -> bool:
        """Whether the best trial met the budget."""
        return bool(self.best and self.best.within_budget)


@dataclass(frozen=True)
class StudySummary:
    """The study summary: what ``study_summary.json``, the study's HTML report and the MLflow
    parent run show. :meth:`to_dict` is its one serialised form (the JSON file's keys, in order)."""

    study_name: str
    storage: str
    fp32_score: float
    accept_int8_decay: float
    budget_confidence: float | None  # search.budget_confidence; None: the point estimate decides
    budget_rule: str  # the rule for "within budget", in words
    resolution: dict[str, Any] | None  # the smallest decay the test set resolves, and the size needed
    cpu_isa: str
    cpu_isa_source: str
    within_budget: bool
    model: str  # the best trial's model file: model.int8.onnx, or model.over-budget.int8.onnx
    latency_tolerance: float
    time_to_budget_s: float | None
    compute_layers: int | None
    fp32_compute_layers: str  # what a trial's fp32_compute_layers counts (FP32_COUNTED)
    timings: dict[str, float]
    latency: dict[str, Any]  # how latency was measured, and the figures per thread count
    best: dict[str, Any] | None  # the best trial's row
    pareto_front: list[int]
    completed_trials: int
    failed_trials: int
    trials: list[dict[str, Any]]  # a row per completed trial: its stored attributes and more
    ended_trials: list[dict[str, Any]] = field(default_factory=list)  # the pruned and failed trials

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data, for the edges (the JSON file, MLflow, the HTML report)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def summary(result: TuneResult, reduce_range: ReduceRange = "auto") -> StudySummary:
    """The study summary of ``result`` (``reduce_range``: the config's value, for trials whose
    parameters do not set it)."""
    isa = target_isa()
    front = {o.number for o in result.pareto}

    def row(o: TrialOutcome) -> dict:
        resolved = resolve_reduce_range(o.params.get("reduce_range", reduce_range), isa)
        attrs = {**o.attrs(), "params": o.params, "reduce_range": resolved, "pareto": o.number in front}
        return {"number": o.number, "key": o.key, **attrs}

    return StudySummary(
        study_name=result.study_name,
        storage=result.storage,
        fp32_score=result.fp32_score,
        accept_int8_decay=result.budget,
        budget_confidence=result.budget_confidence,
        budget_rule=budget_rule(result.budget, result.budget_confidence),
        resolution=result.resolution,
        cpu_isa=isa.label,
        cpu_isa_source=isa.source,
        within_budget=result.within_budget,
        model=model_file(result.within_budget),
        latency_tolerance=result.latency_tolerance,
        time_to_budget_s=result.time_to_budget_s,
        compute_layers=result.compute_layers,
        fp32_compute_layers=FP32_COUNTED,
        timings=result.timings,
        latency=latency_summary(result),
        best=row(result.best) if result.best else None,
        pareto_front=[o.number for o in result.pareto],
        completed_trials=len(result.trials),
        failed_trials=result.failed,
        trials=[row(o) for o in result.trials],
        ended_trials=[asdict(end) for end in result.ended],
    )


def latency_summary(result: TuneResult) -> dict:
    """How latency was measured, on which CPU, and the FP32 and best INT8 figures per thread count."""
    cpu = host_isa()  # latency is always the local CPU's, whatever AUTOQUANT_TARGET_ISA says
    best = result.best
    threads = {}
    for label, count in THREADS.items():
        int8 = best.latencies.get(label) if best else None
        threads[label] = {
            "intra_op_num_threads": count,
            "fp32_ms": result.fp32_latency.get(label),
            "best_int8_ms": int8,
            "best_speedup": best.speedups.get(label) if best else None,
        }
    return {
        "batch": 1,
        "method": "per graph structure: the median over up to 3 new sessions of the INT8 model, each "
        "timed run for run in turn with the FP32 model (1 to 3 warm-up runs, then 3 to 50 runs, until "
        "the median is known to 2 % or a tenth of the trial's time is spent); speedup = FP32 ms / INT8 ms",
        "cpu_isa": cpu.label,
        "cpu_vnni": cpu.vnni,
        "selection_threads": SELECTION_THREADS,
        "threads": threads,
        "fp32_load_average": result.fp32_load_average,
        "best_load_average": best.load_average if best else None,
        "busy": is_busy(result.latency_tolerance),
        "busy_tolerance": BUSY_TOLERANCE,
    }


def study_result(config: StudyConfig, study: optuna.Study, fp32_score: float) -> TuneResult:
    """The result of the study as stored now."""
    done = outcomes(study)
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    tolerance = float(study.user_attrs.get(STUDY_LATENCY_TOLERANCE, 0.0))
    return TuneResult(
        study_name=study.study_name,
        storage=display_url(storage_url(config)),
        fp32_score=fp32_score,
        budget=config.search.accept_int8_decay,
        best=best_outcome(done, tolerance),
        trials=tuple(done),
        failed=failed,
        output=config.output.directory,
        latency_tolerance=tolerance,
        time_to_budget_s=study.user_attrs.get(STUDY_TIME_TO_BUDGET),
        fp32_latency=dict(study.user_attrs.get(STUDY_FP32_LATENCIES, {})),
        pareto=tuple(pareto_front(done)),
        compute_layers=study.user_attrs.get(STUDY_COMPUTE_LAYERS),
        ended=tuple(ended(study)),
        fp32_load_average=study.user_attrs.get(STUDY_FP32_LOAD),
        budget_confidence=config.search.budget_confidence,
        resolution=study.user_attrs.get(STUDY_RESOLUTION),
    )


def stored_status(config: StudyConfig) -> tuple[TuneResult, list[dict]]:
    """The stored study of ``config`` as it is now, and the processes that served it (most recently
    seen first: host, pid, command, started, seen, trial, key, state), without running anything.

    Raises:
        ConfigError: There is no such study in the storage.
    """
    storage, study = existing_study(config)
    if study is None or storage is None:
        raise ConfigError(
            f"no study {study_name(config)!r} in {display_url(storage_url(config))}; run `autoquant tune` first"
        )

    def read() -> tuple[TuneResult, list[dict]]:
        result = study_result(config, study, study.user_attrs.get(STUDY_FP32_SCORE, float("nan")))
        return result, workers(storage, study)

    return storage.call(read)


def stored_result(config: StudyConfig) -> TuneResult:
    """The stored study of ``config`` as it is now (see :func:`stored_status`).

    Raises:
        ConfigError: There is no such study in the storage.
    """
    return stored_status(config)[0]
