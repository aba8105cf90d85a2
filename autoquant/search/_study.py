"""The study behind ``autoquant tune`` and ``autoquant worker``: run a study and keep its best model
on disk.

The study lives in an Optuna storage, so the same command resumes it; ``fresh=True`` deletes it
first. The embedded default, SQLite ``study.db`` in the output folder, serves one ``tune`` (the
output folder's lock refuses a second). A shared storage (PostgreSQL, a journal file) serves any
number of ``tune`` and ``worker`` processes, which split the work through it
(:mod:`autoquant.search`, :mod:`autoquant.search`); a trial whose process died is found by
Optuna's heartbeat and run again. The best trial's outputs are rewritten after every improving
trial, with ``best_config.yaml`` (``autoquant quantize best_config.yaml`` reproduces the model),
and ``study_summary.json`` when a process ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoquant.common import atomic_write, timed
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.engine import (
    QuantizedModel,
    Requantizer,
    Sensitivity,
    compute_layers,
    write_files,
    write_outputs,
)
from autoquant.errors import ConfigError, SearchError, SearchStopped, StorageError
from autoquant.evaluation import SELECTION_THREADS, THREADS, LatencyTimer, latency_timers, trial_budget
from autoquant.hardware import ReduceRange, host_isa, resolve_reduce_range, target_isa
from autoquant.names import (
    BEST_CONFIG_FILE,
    MODEL_FILE,
    REPORT_FILE,
    SENSITIVITY_FILE,
    STUDY_COMPUTE_LAYERS,
    STUDY_DB_FILE,
    STUDY_FINGERPRINT,
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
from autoquant.search import _pipeline as pipeline
from autoquant.search._driver import Driver
from autoquant.search._report import render_report, render_study_report
from autoquant.search._selection import pareto_front
from autoquant.search._sharing import (
    check_fingerprint,
    fingerprint_inputs,
    fingerprint_results,
    load_existing,
    open_study,
)
from autoquant.search._space import load_space
from autoquant.search._trial import (
    DEFAULT_SAMPLED_TRIALS,
    Candidate,
    NullReporter,
    Reporter,
    Scorer,
    SearchContext,
    TrialOutcome,
    best_outcome,
    outcomes,
)
from autoquant.storage import (
    Heartbeat,
    StudyStorage,
    WorkerRecord,
    display_url,
    open_storage,
    output_lock,
    preload,
    storage_kind,
    workers,
)
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
    timings: dict[str, float] = field(default_factory=dict)  # this process's stages, seconds (see Stages)

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


def _existing_study(config: StudyConfig) -> tuple[StudyStorage | None, optuna.Study | None]:
    """The storage (None where opening it would create a file) and the stored study of ``config``
    (None if there is none)."""
    url, name = storage_url(config), study_name(config)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None, None
    if storage_kind(url) == "journal" and not Path(url).is_file():
        return None, None
    storage = open_storage(url, config.storage)
    return storage, storage.call(load_existing, storage, name)


def stored_status(config: StudyConfig) -> tuple[TuneResult, list[dict]]:
    """The stored study of ``config`` as it is now, and the processes that served it (most recently
    seen first: host, pid, command, started, seen, trial, key, state), without running anything.

    Raises:
        ConfigError: There is no such study in the storage.
    """
    storage, study = _existing_study(config)
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
        write_outputs(result, chosen, out, {BEST_CONFIG_FILE: chosen.to_yaml().encode()})  # all or none
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
        "timings": result.timings,
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
        "method": "per graph structure: the median over up to 3 new sessions of the INT8 model, each "
        "timed run for run in turn with the FP32 model (1 to 3 warm-up runs, then 3 to 50 runs, until "
        "the median is known to 2 % or a tenth of the trial's time is spent); speedup = FP32 ms / INT8 ms",
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
    )


def _ranking_writer(
    config: StudyConfig, calibrated: pipeline.Calibrated, name: str
) -> Callable[[QuantizationConfig], Sensitivity]:
    """Sensitivity analysis for the bisection; each ranking is also written as JSON and HTML.

    Rankings are cached beside the statistics, keyed by them, the choices, the analysis samples and
    the CPU's instruction set, so a resumed study, or another worker sharing the cache, reuses them.
    """

    def ranking(
        quantization: QuantizationConfig, should_stop: Callable[[], bool] = lambda: False
    ) -> Sensitivity:
        key = hashlib.sha256(
            "|".join(
                [
                    calibrated.stats.key,
                    quantization.model_copy(update={"fp32_layers": 0, "layer_scales": {}}).model_dump_json(),
                    str(config.search.data_limit),
                    str(list(config.model.outputs)),
                    target_isa().label,
                ]
            ).encode()
        ).hexdigest()[:24]
        cached = pipeline.cache_dir(config) / f"sensitivity-{key}.json"
        try:
            sensitivity = Sensitivity.from_json(cached.read_text())
            logger.info("sensitivity ranking reused from the cache (%s)", cached.name)
        except (OSError, ValueError, KeyError, TypeError):

            def check(_: int) -> None:  # polled after each layer: a deadline ends a long analysis
                if should_stop():
                    raise SearchStopped

            sensitivity = pipeline.analyze_layers(
                config.replace(quantization=quantization), calibrated, check
            )
            atomic_write(cached, lambda f: f.write(sensitivity.to_json().encode()))
        report = render_report(
            sensitivity, f"autoquant sensitivity: {name}", {"model": str(config.model.path)}
        )
        files = {SENSITIVITY_FILE: sensitivity.to_json().encode(), REPORT_FILE: report.encode()}
        write_files(config.output.directory, files)
        return sensitivity

    return ranking


def _last_out(storage: StudyStorage, study: optuna.Study, worker: WorkerRecord) -> bool:
    """Mark this process done; True when no other process still serves the study (it closes the
    MLflow parent run). A process not seen for a grace period is gone."""
    with storage.lock(study.study_name):
        worker.update(trial=None, key=None, state="done")
        now, grace = time.time(), storage.settings.grace_period
        others = [
            w
            for w in workers(storage, study)
            if (w.get("host"), w.get("pid"), w.get("started"), w.get("slot", 0)) != worker.identity
            and w.get("state") != "done"
            and now - float(w.get("seen", 0.0)) < grace
        ]
        return not others


def _finish(
    config: StudyConfig, result: TuneResult, tracker: NullTracker | MlflowTracker, close_parent: bool
) -> None:
    """Write the study summary and its report (the Pareto front, and the sensitivity ranking the
    folder holds); the last process out closes the MLflow parent run."""
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
    tracker.finish(summarised, out / MODEL_FILE, out / REPORT_FILE, close_parent=close_parent)
    if config.tracking.enabled:
        logger.info(
            "MLflow: the study waited %.2f s before its first trial and %.2f s at its end; logging "
            "took %.2f s in the background",
            tracker.attach_seconds,
            tracker.finish_seconds,
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
    command: str = "tune",
) -> TuneResult:
    """Run (or resume, or join) the study described by ``config``.

    Args:
        config: The study config.
        reporter: Receives phase, trial and progress events (e.g. a live display).
        fresh: Delete a stored study of the same name and start over.
        stop: Polled between trials; when it returns True the study ends after the current trial
            (the CLI sets it on Ctrl-C). ``search.timeout`` ends the study the same way.
        scorer: Who scores the models (:class:`~autoquant.search.Scorer`); default: the test set
            with ``test.objective``. The ask-and-tell :class:`~autoquant.search.Tuner` passes
            the user's code.
        command: ``tune``, or ``worker`` for a process that joins a shared study (``autoquant
            worker``), which needs a storage several processes share.

    Returns:
        The best trial and every completed one.

    Raises:
        AutoquantError: Bad config, model or data (before any trial).
        SearchError: No trial could complete, or another process is tuning into the same
            output folder (embedded SQLite storage).
        StorageError: The stored study was started with another model, data or settings, or the
            database stays unreachable.
    """
    url = storage_url(config)
    kind = storage_kind(url)
    if kind == "sqlite" and command == "worker":
        raise ConfigError(
            f"storage.url {display_url(url)}: `autoquant worker` needs a storage that several processes "
            "share: set storage.url to postgresql+psycopg://user:password@host/db or to a journal file on "
            "a shared filesystem (/shared/study.log); SQLite serves one `autoquant tune`"
        )
    with serving(config):
        return drive(open_search(config, reporter or NullReporter(), fresh, stop, scorer, command))


def serving(config: StudyConfig) -> contextlib.AbstractContextManager[object]:
    """Held while this process serves the study: the output folder's lock for the embedded SQLite
    storage, which one process serves (the shared storages have the study lock)."""
    if storage_kind(storage_url(config)) == "sqlite":
        return output_lock(config.output.directory, f"study {study_name(config)!r}")
    return contextlib.nullcontext()


def _prepare_study(
    config: StudyConfig,
    storage: StudyStorage,
    fresh: bool,
    fingerprint: dict[str, str],
    fp32_score: float,
    began: float,
    timers: dict[str, LatencyTimer],
    compute_count: int,
    command: str,
    latency_budget: float = 1.0,
) -> optuna.Study:
    """Create or join the study; store what is measured once (under the study lock)."""
    name = study_name(config)
    study = open_study(config, storage, name, fresh, fingerprint, command == "tune")
    with storage.lock(name):
        attrs = study.user_attrs
        if attrs.get(STUDY_FP32_SCORE) != fp32_score:
            study.set_user_attr(STUDY_FP32_SCORE, fp32_score)
        if STUDY_STARTED not in attrs:
            study.set_user_attr(STUDY_STARTED, began)
        if attrs.get(STUDY_COMPUTE_LAYERS) != compute_count:
            study.set_user_attr(STUDY_COMPUTE_LAYERS, compute_count)
    if STUDY_LATENCY_TOLERANCE not in study.user_attrs:  # measured once: a resumed study ranks alike
        tolerance = timers[SELECTION_THREADS].tolerance(budget_s=latency_budget)
        with storage.lock(name):
            if STUDY_LATENCY_TOLERANCE not in study.user_attrs:
                study.set_user_attr(STUDY_LATENCY_TOLERANCE, tolerance)
    with storage.lock(name):
        if STUDY_FP32_LATENCIES not in study.user_attrs:  # also for a study stored by an older version
            study.set_user_attr(STUDY_FP32_LATENCIES, {k: t.fp32_ms for k, t in timers.items()})
            study.set_user_attr(STUDY_FP32_LATENCY, timers[SELECTION_THREADS].fp32_ms)
    return study


@dataclass
class OpenSearch:
    """A study set up to be driven: calibrated, its FP32 reference scored, stored."""

    ctx: SearchContext
    study: optuna.Study
    storage: StudyStorage
    command: str
    fp32_score: float


def open_search(
    config: StudyConfig,
    reporter: Reporter,
    fresh: bool,
    stop: Callable[[], bool] | None,
    scorer: Scorer | None,
    command: str,
) -> OpenSearch:
    """Everything before the first trial: the statistics pass, the FP32 reference and latency, the
    stored study (created or joined) and the search context (call while :func:`serving`)."""
    began = time.time()
    deadline = time.monotonic() + config.search.timeout if config.search.timeout else math.inf
    stages: dict[str, float] = {}  # seconds per stage of the set-up, then of the first trial
    preload(storage_url(config))  # the database modules import while the model is prepared
    space = load_space(config.search.space or config.search.mode, config.search.overrides)
    tracker = make_tracker(config)  # fails in seconds, before any calibration work
    storage, existing = _existing_study(config)  # a shared database must answer before any work
    existing = None if fresh else existing
    name = study_name(config)
    with timed(stages, "prepare_s"):
        graph = pipeline.load_graph(config)
    inputs = fingerprint_inputs(config, graph, space)
    if existing is not None:  # refuse before the statistics pass
        stored = existing.user_attrs.get(STUDY_FINGERPRINT)
        check_fingerprint(stored, inputs, name, storage_url(config), command == "tune")
    with timed(stages, "statistics_s"):
        calibrated = pipeline.calibrate(config, graph=graph)
    scorer = scorer or pipeline.evaluator(config, graph)
    reporter.phase("FP32 reference")
    fp32 = Candidate(-1, "fp32", {}, graph.prepared_path, None)
    stored = None if existing is None else existing.user_attrs.get(STUDY_FP32_SCORE)
    with timed(stages, "fp32_reference_s"):
        fp32_score = scorer.reference_score(fp32, stored, reporter.progress)
    fingerprint = {**inputs, **fingerprint_results(calibrated, scorer)}
    latency_budget = trial_budget(time.time() - began)  # a tenth of the set-up so far, a second at least
    with timed(stages, "latency_s"):
        timers = latency_timers(
            graph.prepared_path, pipeline.sample_feeds(config, graph, 1)[0], latency_budget / len(THREADS)
        )
    compute_count = len(compute_layers(graph, [n.name for n in graph.nodes]))
    # Only now: a failure before leaves no study behind.
    storage = storage or open_storage(storage_url(config), config.storage)
    with timed(stages, "latency_s"):  # the tolerance, measured once per study, is timing too
        study = storage.call(
            _prepare_study,
            config,
            storage,
            fresh,
            fingerprint,
            fp32_score,
            began,
            timers,
            compute_count,
            command,
            latency_budget,
        )
    tracker.attach(study, storage, calibrated.stats.key, fp32_score)  # opened in the background
    stages["setup_s"] = time.time() - began
    wanted = (
        1
        if config.search.mode == "fast"
        else len(space.strategies) + (config.search.n_trials or DEFAULT_SAMPLED_TRIALS)
    )
    _check_timeout(config, stages, timers, pipeline.scored_samples(config, graph), wanted)
    requested = stop or (lambda: False)

    def should_stop() -> bool:  # the timeout never ends a study before its first completed trial
        late = time.monotonic() > deadline and bool(
            storage.call(study.get_trials, deepcopy=False, states=(TrialState.COMPLETE,))
        )
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
        ranking_fn=_ranking_writer(config, calibrated, name),
        on_best=best_writer(config),
        reporter=reporter,
        tracker=tracker,
        should_stop=should_stop,
        user_stopped=requested,
        stages=stages,
        began=began,
    )
    return OpenSearch(ctx, study, storage, command, fp32_score)


def _check_timeout(
    config: StudyConfig,
    stages: dict[str, float],
    timers: dict[str, LatencyTimer],
    test_samples: int,
    wanted: int,
) -> None:
    """Say in one line when ``search.timeout`` leaves no room for the trials the mode needs, with
    the estimate: a trial scores the test set once (as long as the FP32 reference took, or the FP32
    batch-1 latency times the samples when the reference came from the cache) and times itself."""
    timeout = config.search.timeout
    if not timeout:
        return
    scoring = stages.get("fp32_reference_s", 0.0)
    source = f"the FP32 reference took {scoring:.0f} s"
    if scoring < 1.0:  # read from the cache: estimate from the latency
        scoring = timers[next(reversed(THREADS))].fp32_ms / 1000.0 * test_samples
        source = f"{test_samples} test samples at {timers[next(reversed(THREADS))].fp32_ms:.3g} ms each"
    trial = scoring + trial_budget(scoring)
    left = timeout - stages["setup_s"]
    if left < wanted * trial:
        fits = max(0, int(left // trial))
        logger.warning(
            "search.timeout %.0f s is short for this model: the set-up took %.0f s and a trial about %.0f s "
            "(%s), so %d of the %d trials %s mode wants fit; the study ends with the trial running at "
            "the deadline (at least one)",
            timeout,
            stages["setup_s"],
            trial,
            source,
            fits,
            wanted,
            config.search.mode,
        )


def drive(
    search: OpenSearch,
    slot: int = 0,
    idle: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    may_claim: Callable[[], bool] | None = None,
) -> TuneResult:
    """Run the study's trials, then write the summary (and close MLflow's parent run if this is
    the last process serving the study).

    Args:
        search: The opened study.
        slot: Which of this process's drivers this is (the server runs several, one per trial
            handed out at once).
        idle: Entered while the driver waits for others' trials (see :class:`~autoquant.search.Driver`).
        may_claim: Asked before each claim (see :class:`~autoquant.search.Driver`).
    """
    ctx, study, storage, command, fp32_score = (
        search.ctx,
        search.study,
        search.storage,
        search.command,
        search.fp32_score,
    )
    config = ctx.config
    worker = WorkerRecord(storage, study, command, slot=slot)
    driver = Driver(
        ctx, study, storage, worker, ctx.on_best, idle or contextlib.nullcontext, may_claim or (lambda: True)
    )
    try:
        reason = driver.drive()
        logger.log(
            logging.INFO if slot == 0 else logging.DEBUG, "study %r done: %s", study.study_name, reason
        )
    except SearchStopped:
        logger.info("the search stopped before its end (timeout or a stop request)")
    except StorageError:
        raise  # the database is gone: nothing more can be read or written
    finally:
        if sys.exc_info()[0] is not StorageError:
            result = replace(storage.call(study_result, config, study, fp32_score), timings=dict(ctx.stages))
            if result.trials:
                with Heartbeat(storage, worker, None):  # seen alive while it waits for the lock
                    storage.call(driver.sync_outputs)
                    last = storage.call(_last_out, storage, study, worker)
                _finish(config, result, ctx.tracker, last)
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
