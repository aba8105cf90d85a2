"""The study behind ``autoquant tune``: run a whole study and keep its best model on disk.

The study lives in an Optuna storage (default: SQLite ``study.db`` in the output folder), so the
same command resumes it; ``fresh=True`` deletes it first. ``tune`` owns its study: trials a killed
run left RUNNING are marked failed when it starts again. The best trial's outputs are rewritten
after every improving trial, with ``best_config.yaml`` (``autoquant quantize best_config.yaml``
reproduces the model) and ``study_summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoquant import pipeline
from autoquant.analyze import Sensitivity
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.errors import ConfigError, SearchError
from autoquant.evaluate import SELECTION_THREADS, THREADS, latency_timers
from autoquant.hardware import ReduceRange, host_isa, resolve_reduce_range, target_isa
from autoquant.locking import output_lock
from autoquant.names import (
    BEST_CONFIG_FILE,
    MODEL_FILE,
    REPORT_FILE,
    SENSITIVITY_FILE,
    STUDY_COMPUTE_LAYERS,
    STUDY_DB_FILE,
    STUDY_FP32_LATENCIES,
    STUDY_FP32_LATENCY,
    STUDY_FP32_SCORE,
    STUDY_LATENCIES,
    STUDY_LATENCY_TOLERANCE,
    STUDY_STARTED,
    STUDY_TIME_TO_BUDGET,
    SUMMARY_FILE,
    TRIAL_FAIL_REASON,
)
from autoquant.outputs import write_files, write_outputs
from autoquant.quantize import QuantizedModel, compute_layers
from autoquant.report import render_report, render_study_report
from autoquant.rescale import Requantizer
from autoquant.search import (
    DEFAULT_SAMPLED_TRIALS,
    Candidate,
    NullReporter,
    Reporter,
    Scorer,
    SearchContext,
    SearchStopped,
    TrialOutcome,
    best_outcome,
    bisect_fp32_layers,
    make_objective,
    outcomes,
    run_fast,
    run_sampled,
    tune_scales,
)
from autoquant.selection import pareto_front
from autoquant.space import load_space
from autoquant.tracking import MlflowTracker, NullTracker, make_tracker

logger = logging.getLogger(__name__)


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

    @property
    def within_budget(self) -> bool:
        """Whether the best trial met the budget."""
        return bool(self.best and self.best.within_budget)


def storage_url(config: StudyConfig) -> str:
    """The Optuna storage: ``storage.url`` or SQLite ``study.db`` in the output folder."""
    return config.storage.url or f"sqlite:///{config.output.directory / STUDY_DB_FILE}"


def study_name(config: StudyConfig) -> str:
    """``search.study_name`` or the output folder's name."""
    return config.search.study_name or config.output.directory.name


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for database URLs, a journal file for ``*.log``/``*.journal`` paths."""
    if url.endswith((".log", ".journal")) and "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        raise ConfigError(
            f"storage.url {url!r}: cannot open the Optuna storage ({type(exc).__name__}: {exc})"
        ) from None


class ResumableTPESampler(optuna.samplers.TPESampler):
    """Seeded TPE whose random state before each trial depends only on the seed and the number of
    trials completed so far, not on what this process sampled before: a resumed study samples
    the same sequence as one that was never interrupted (a killed trial, failed, takes no part)."""

    def __init__(self, seed: int, **options: object) -> None:
        super().__init__(seed=seed, **options)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        seed = (self._base_seed * 1_000_003 + completed) % 2**32
        self._rng.rng.seed(seed)  # optuna's LazyRandomState of TPE and of its start-up sampler
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def open_study(config: StudyConfig, fresh: bool = False) -> optuna.Study:
    """Create or load the study; a fresh start deletes a stored study of the same name."""
    storage = open_storage(storage_url(config))
    name = study_name(config)
    if fresh and name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        optuna.delete_study(study_name=name, storage=storage)
        logger.info("deleted the stored study %r (--fresh)", name)
    with warnings.catch_warnings():  # multivariate and group are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = ResumableTPESampler(config.search.seed, multivariate=True, group=True, n_startup_trials=5)
    study = optuna.create_study(
        storage=storage, study_name=name, direction="minimize", sampler=sampler, load_if_exists=True
    )
    _fail_interrupted(study)
    return study


def _fail_interrupted(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed run of this single-owner study are failed, to be redone."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        logger.info("trial %d was interrupted by a previous run; it will run again", trial.number)


def _existing_study(config: StudyConfig) -> optuna.Study | None:
    """The stored study of ``config``, or None; creates no storage file."""
    url, name = storage_url(config), study_name(config)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    storage = open_storage(url)
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _stored_attr(config: StudyConfig, name: str) -> object:
    study = _existing_study(config)
    return None if study is None else study.user_attrs.get(name)


def stored_result(config: StudyConfig) -> TuneResult:
    """The stored study of ``config`` as it is now, without running anything.

    Raises:
        ConfigError: There is no such study in the storage.
    """
    study = _existing_study(config)
    if study is None:
        raise ConfigError(
            f"no study {study_name(config)!r} in {storage_url(config)}; run `autoquant tune` first"
        )
    return study_result(config, study, study.user_attrs.get(STUDY_FP32_SCORE, float("nan")))


def best_config(
    config: StudyConfig, quantization: QuantizationConfig, fp32_nodes: tuple[str, ...]
) -> StudyConfig:
    """A config that ``autoquant quantize`` turns into the same model: the FP32 nodes are listed by name."""
    fixed = quantization.model_copy(
        update={
            "nodes_to_exclude": list(fp32_nodes),
            "first_layer_fp32": False,
            "norm_layers_fp32": False,
            "fp32_layers": 0,
        }
    )
    return config.replace(quantization=fixed)


def best_writer(config: StudyConfig) -> Callable[[TrialOutcome, QuantizedModel, QuantizationConfig], None]:
    """A callback that writes a new best trial's model, tables and ``best_config.yaml``."""
    out = config.output.directory

    def on_best(outcome: TrialOutcome, result: QuantizedModel, quantization: QuantizationConfig) -> None:
        built = quantization.model_copy(update={"reduce_range": result.reduce_range})  # not auto
        chosen = best_config(config, built, result.fp32_nodes)
        write_outputs(result, chosen, out)
        write_files(out, {BEST_CONFIG_FILE: chosen.to_yaml().encode()})
        logger.debug("trial %d is the new best; outputs written to %s", outcome.number, out)

    return on_best


def summary(result: TuneResult, reduce_range: ReduceRange = "auto") -> dict:
    """The study summary written to ``study_summary.json`` (``reduce_range``: the config's value,
    for trials whose parameters do not set it)."""
    isa = target_isa()

    front = {o.number for o in result.pareto}

    def row(o: TrialOutcome) -> dict:
        resolved = resolve_reduce_range(o.params.get("reduce_range", reduce_range), isa)
        attrs = {**o.attrs(), "params": o.params, "reduce_range": resolved, "pareto": o.number in front}
        return {"number": o.number, "key": o.key, **attrs}

    return {
        "study_name": result.study_name,
        "storage": result.storage,
        "fp32_score": result.fp32_score,
        "accept_int8_decay": result.budget,
        "cpu_isa": isa.label,
        "cpu_isa_source": isa.source,
        "within_budget": result.within_budget,
        "latency_tolerance": result.latency_tolerance,
        "time_to_budget_s": result.time_to_budget_s,
        "compute_layers": result.compute_layers,
        "latency": latency_summary(result),
        "best": row(result.best) if result.best else None,
        "pareto_front": [o.number for o in result.pareto],
        "completed_trials": len(result.trials),
        "failed_trials": result.failed,
        "trials": [row(o) for o in result.trials],
    }


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
        "method": "per graph structure: the median over 3 new sessions of the INT8 model, each timed "
        "run for run in turn with the FP32 model (3 warm-up runs, then the median of 10 to 50 runs); "
        "speedup = FP32 ms / INT8 ms",
        "cpu_isa": cpu.label,
        "cpu_vnni": cpu.vnni,
        "selection_threads": SELECTION_THREADS,
        "threads": threads,
    }


def study_result(config: StudyConfig, study: optuna.Study, fp32_score: float) -> TuneResult:
    """The result of the study as stored now."""
    done = outcomes(study)
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    tolerance = float(study.user_attrs.get(STUDY_LATENCY_TOLERANCE, 0.0))
    return TuneResult(
        study_name=study.study_name,
        storage=storage_url(config),
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
    )


def _ranking_writer(
    config: StudyConfig, calibrated: pipeline.Calibrated, name: str
) -> Callable[[QuantizationConfig], Sensitivity]:
    """Sensitivity analysis for the bisection; each ranking is also written as JSON and HTML."""

    def ranking(quantization: QuantizationConfig) -> Sensitivity:
        sensitivity = pipeline.analyze_layers(config.replace(quantization=quantization), calibrated)
        report = render_report(
            sensitivity, f"autoquant sensitivity: {name}", {"model": str(config.model.path)}
        )
        files = {SENSITIVITY_FILE: sensitivity.to_json().encode(), REPORT_FILE: report.encode()}
        write_files(config.output.directory, files)
        return sensitivity

    return ranking


def _run_phases(ctx: SearchContext, study: optuna.Study, objective: Callable) -> None:
    """Fast mode: the strategies up to the first pass. Full mode: every phase in turn."""
    if ctx.config.search.mode == "fast":
        run_fast(ctx, study, objective, stop_at_first=True)
        return
    run_fast(ctx, study, objective, stop_at_first=False)
    run_sampled(ctx, study, objective, ctx.config.search.n_trials or DEFAULT_SAMPLED_TRIALS)
    bisect_fp32_layers(ctx, study, objective)
    tune_scales(ctx, study, objective)


def _finish(config: StudyConfig, result: TuneResult, tracker: NullTracker | MlflowTracker) -> None:
    """Write the study summary and its report (the Pareto front, and the sensitivity ranking the
    folder holds), and close the MLflow parent run."""
    out = config.output.directory
    summarised = summary(result, config.quantization.reduce_range)
    details = {
        "model": str(config.model.path),
        "budget": str(result.budget),
        "CPU": summarised["latency"]["cpu_isa"],
    }
    report = render_study_report(
        summarised, f"autoquant study: {result.study_name}", details, _sensitivity(out)
    )
    write_files(out, {SUMMARY_FILE: json.dumps(summarised, indent=2).encode(), REPORT_FILE: report.encode()})
    tracker.finish(summarised, out / MODEL_FILE, out / REPORT_FILE)
    if config.tracking.enabled:
        logger.info(
            "MLflow: the study waited %.2f s; logging took %.2f s in the background",
            tracker.seconds,
            tracker.busy_seconds,
        )


def _sensitivity(out: Path) -> Sensitivity | None:
    """The sensitivity ranking in the output folder, if there is one that reads."""
    try:
        return Sensitivity.from_json((out / SENSITIVITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tune(
    config: StudyConfig,
    reporter: Reporter | None = None,
    fresh: bool = False,
    stop: Callable[[], bool] | None = None,
    scorer: Scorer | None = None,
) -> TuneResult:
    """Run (or resume) the study described by ``config``.

    Args:
        config: The study config.
        reporter: Receives phase, trial and progress events (e.g. a live display).
        fresh: Delete a stored study of the same name and start over.
        stop: Polled between trials; when it returns True the study ends after the current trial
            (the CLI sets it on Ctrl-C). ``search.timeout`` ends the study the same way.
        scorer: Who scores the models (:class:`~autoquant.search.Scorer`); default: the test set
            with ``test.objective``. The ask-and-tell :class:`~autoquant.ask_tell.Tuner` passes
            the user's code.

    Returns:
        The best trial and every completed one.

    Raises:
        AutoquantError: Bad config, model or data (before any trial).
        SearchError: No trial could complete, or another process is tuning into the same
            output folder.
    """
    with output_lock(config.output.directory, f"study {study_name(config)!r}"):
        return _tune(config, reporter or NullReporter(), fresh, stop, scorer)


def _tune(
    config: StudyConfig,
    reporter: Reporter,
    fresh: bool,
    stop: Callable[[], bool] | None,
    scorer: Scorer | None,
) -> TuneResult:
    began = time.time()
    deadline = time.monotonic() + config.search.timeout if config.search.timeout else math.inf
    space = load_space(config.search.space or config.search.mode, config.search.overrides)
    tracker = make_tracker(config)  # fails in seconds, before any calibration work
    calibrated = pipeline.calibrate(config)
    graph = calibrated.graph
    scorer = scorer or pipeline.evaluator(config, graph)
    reporter.phase("FP32 reference")
    fp32 = Candidate(-1, "fp32", {}, graph.prepared_path, None)
    stored = None if fresh else _stored_attr(config, STUDY_FP32_SCORE)
    fp32_score = scorer.reference_score(fp32, stored, reporter.progress)
    study = open_study(config, fresh)  # only now: a failure before leaves no study behind
    study.set_user_attr(STUDY_FP32_SCORE, fp32_score)
    if STUDY_STARTED not in study.user_attrs:
        study.set_user_attr(STUDY_STARTED, began)
    study.set_user_attr(STUDY_COMPUTE_LAYERS, len(compute_layers(graph, [n.name for n in graph.nodes])))
    timers = latency_timers(graph.prepared_path, pipeline.sample_feeds(config, graph, 1)[0])
    if STUDY_LATENCY_TOLERANCE not in study.user_attrs:  # measured once: a resumed study ranks alike
        study.set_user_attr(STUDY_LATENCY_TOLERANCE, timers[SELECTION_THREADS].tolerance())
    if STUDY_FP32_LATENCIES not in study.user_attrs:
        study.set_user_attr(STUDY_FP32_LATENCIES, {k: t.fp32_ms for k, t in timers.items()})
        study.set_user_attr(STUDY_FP32_LATENCY, timers[SELECTION_THREADS].fp32_ms)
    tracker.attach(study, calibrated.stats.key, fp32_score)

    ranking = _ranking_writer(config, calibrated, study.study_name)
    requested = stop or (lambda: False)

    def should_stop() -> bool:  # the timeout never ends a study before its first completed trial
        late = time.monotonic() > deadline and bool(study.get_trials(states=(TrialState.COMPLETE,)))
        return requested() or late

    ctx = SearchContext(
        config=config,
        calibrated=calibrated,
        scorer=scorer,
        space=space,
        timers=timers,
        fp32_latency=dict(study.user_attrs[STUDY_FP32_LATENCIES]),
        latencies=dict(study.user_attrs.get(STUDY_LATENCIES, {})),
        requantizer=Requantizer(graph),
        analysis_feeds=pipeline.sample_feeds(config, graph, config.search.data_limit),
        ranking_fn=ranking,
        on_best=best_writer(config),
        reporter=reporter,
        tracker=tracker,
        should_stop=should_stop,
        user_stopped=requested,
    )
    objective = make_objective(ctx, study)
    try:
        _run_phases(ctx, study, objective)
    except SearchStopped:
        logger.info("the search stopped before its end (timeout or a stop request)")
    finally:
        result = study_result(config, study, fp32_score)
        if result.trials:
            _finish(config, result, tracker)
    if not result.trials:
        failures = [
            t.user_attrs.get(TRIAL_FAIL_REASON, "") for t in study.trials if t.state == TrialState.FAIL
        ]
        last = next((f for f in reversed(failures) if f), "unknown")
        raise SearchError(
            f"no trial of study {study.study_name!r} completed ({len(failures)} failed); the last failure: "
            f"{last}; fix it, then run again with --fresh"
        )
    return result
