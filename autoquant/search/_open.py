"""Everything before a study's first trial: :func:`open_search` calibrates, scores the FP32
reference, measures its latency and creates or joins the stored study."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from autoquant.common import Alongside, ProgressFn, timed
from autoquant.config import StudyConfig
from autoquant.engine import Requantizer, compute_layers
from autoquant.engine.graph import ModelGraph
from autoquant.evaluation import (
    SELECTION_THREADS,
    THREADS,
    LatencyTimer,
    latency_timers,
    load_average,
    trial_budget,
)
from autoquant.names import (
    STUDY_COMPUTE_LAYERS,
    STUDY_FINGERPRINT,
    STUDY_FP32_LATENCIES,
    STUDY_FP32_LATENCY,
    STUDY_FP32_LOAD,
    STUDY_FP32_SCORE,
    STUDY_LATENCIES,
    STUDY_LATENCY_TOLERANCE,
    STUDY_STARTED,
    Command,
)
from autoquant.search import pipeline
from autoquant.search._naming import existing_study, storage_url, study_name
from autoquant.search._resolution import check_resolution, store_resolution
from autoquant.search._sharing import check_fingerprint, fingerprint_inputs, fingerprint_results, open_study
from autoquant.search._space import load_space
from autoquant.search._trial import (
    DEFAULT_SAMPLED_TRIALS,
    Candidate,
    Observers,
    ProcessCaches,
    Reporter,
    Scorer,
    SearchContext,
    SearchInputs,
)
from autoquant.storage import StudyStorage, open_storage, preload
from autoquant.tracking import make_tracker

logger = logging.getLogger(__name__)


def _prepare_study(
    config: StudyConfig,
    storage: StudyStorage,
    fresh: bool,
    ref: _Reference,
    began: float,
    compute_count: int,
    create: bool,
) -> optuna.Study:
    """Create or join the study; store what is measured once (under the study lock)."""
    name = study_name(config)
    study = open_study(config, storage, name, fresh, ref.fingerprint, create)
    with storage.lock(name):
        attrs = study.user_attrs
        if attrs.get(STUDY_FP32_SCORE) != ref.fp32_score:
            study.set_user_attr(STUDY_FP32_SCORE, ref.fp32_score)
        if STUDY_STARTED not in attrs:
            study.set_user_attr(STUDY_STARTED, began)
        if attrs.get(STUDY_COMPUTE_LAYERS) != compute_count:
            study.set_user_attr(STUDY_COMPUTE_LAYERS, compute_count)
    with storage.lock(name):
        if STUDY_FP32_LATENCIES not in study.user_attrs:  # also for a study stored by an older version
            study.set_user_attr(STUDY_FP32_LATENCIES, {k: t.fp32_ms for k, t in ref.timers.items()})
            study.set_user_attr(STUDY_FP32_LATENCY, ref.timers[SELECTION_THREADS].fp32_ms)
            study.set_user_attr(STUDY_FP32_LOAD, ref.load_average)
    return study


def measure_tolerance(
    study: optuna.Study,
    attrs: dict[str, object],
    lock: Callable[[], AbstractContextManager[object]],
    timers: dict[str, LatencyTimer],
    stages: dict[str, float],
) -> None:
    """Measure the study's latency tolerance once, after its first trial: it only decides ties
    between trials, so the first trial does not wait for it. ``attrs``: the study's attributes as
    just read; a study that holds one (stored by any process, or resumed) keeps it, so that it
    ranks alike."""
    if STUDY_LATENCY_TOLERANCE in attrs:
        return
    with timed(stages, "tolerance_s"):
        tolerance = timers[SELECTION_THREADS].tolerance(budget_s=trial_budget(stages.get("setup_s", 0.0)))
    with lock():
        if STUDY_LATENCY_TOLERANCE not in study.user_attrs:
            study.set_user_attr(STUDY_LATENCY_TOLERANCE, tolerance)


@dataclass
class OpenSearch:
    """A study set up to be driven: calibrated, its FP32 reference scored, stored."""

    ctx: SearchContext
    study: optuna.Study
    storage: StudyStorage
    command: Command
    fp32_score: float


@dataclass(frozen=True)
class _Reference:
    """What is measured before the study is stored: the statistics, the FP32 score and latency."""

    calibrated: pipeline.Calibrated
    scorer: Scorer
    fp32_score: float
    fingerprint: dict[str, str]
    timers: dict[str, LatencyTimer]
    load_average: float | None = None  # the 1-minute load average as the FP32 latency was measured


#: Models up to this size score their FP32 reference while the statistics pass runs; a larger
#: one runs the two in turn, so that two sessions and their activations are never alive at once.
#: Measured on 2026-12-08 (bench/compare.py, x86_64 avx512_vnni): on PP-OCR's 9.9 MB detector,
#: running both at once cost 45 to 67 MB of peak RSS for 0.7 s; on magika (3.2 MB) it saved 1.9 s.
OVERLAP_LIMIT = 8 * 2**20


def _overlaps(graph: ModelGraph) -> bool:
    """Whether the FP32 reference may run alongside the statistics pass (see `OVERLAP_LIMIT`)."""
    return not graph.external_data and graph.prepared_path.stat().st_size <= OVERLAP_LIMIT


def _measure(
    config: StudyConfig,
    graph: ModelGraph,
    inputs: dict[str, str],
    existing: optuna.Study | None,
    scorer: Scorer | None,
    reporter: Reporter,
    stages: dict[str, float],
    began: float,
) -> _Reference:
    """The statistics pass, the FP32 reference score (the stored one, if any, is checked against
    it) and the FP32 latency timers.

    The statistics pass keeps one core busy building histograms while onnxruntime runs the next
    batch; the FP32 reference (onnxruntime over the test set) fills the idle time on a second
    thread, for a local evaluator and a model of at most `OVERLAP_LIMIT`. The latency is timed
    after both, on a machine they no longer load.
    """
    evaluator = pipeline.evaluator(config, graph) if scorer is None else None
    scorer = scorer or evaluator
    fp32 = Candidate(-1, "fp32", {}, graph.prepared_path, None)
    stored = None if existing is None else existing.user_attrs.get(STUDY_FP32_SCORE)

    def reference(progress: ProgressFn | None) -> float:
        with timed(stages, "fp32_reference_s"):
            return scorer.reference_score(fp32, stored, progress)

    def reference_alongside() -> float:  # on one core: the statistics pass has the other
        with timed(stages, "fp32_reference_s"):
            return evaluator.reference_score(fp32, stored, None, threads=1)

    alongside = None
    if evaluator is not None and _overlaps(graph):
        reporter.phase("statistics pass and FP32 reference")
        alongside = Alongside(reference_alongside, "autoquant-fp32-reference")
    with timed(stages, "statistics_s"):
        calibrated = pipeline.calibrate(config, graph=graph)
    if alongside is None:
        reporter.phase("FP32 reference")
    fp32_score = reference(reporter.progress) if alongside is None else alongside.result()
    fingerprint = {**inputs, **fingerprint_results(calibrated, scorer)}
    latency_budget = trial_budget(time.time() - began)  # a tenth of the set-up so far, a second at least
    with timed(stages, "latency_s"):
        timers = latency_timers(
            graph.prepared_path, pipeline.sample_feeds(config, graph, 1)[0], latency_budget / len(THREADS)
        )
    load = load_average()
    return _Reference(calibrated, scorer, fp32_score, fingerprint, timers, load)


def _stopper(
    config: StudyConfig,
    storage: StudyStorage,
    study: optuna.Study,
    requested: Callable[[], bool],
    start: float,
) -> Callable[[], bool]:
    """Whether the search should stop: a stop request, or ``search.timeout`` passed (the timeout
    never ends a study before its first completed trial)."""
    deadline = start + config.search.timeout if config.search.timeout else math.inf

    def should_stop() -> bool:
        late = time.monotonic() > deadline and bool(
            storage.call(study.get_trials, deepcopy=False, states=(TrialState.COMPLETE,))
        )
        return requested() or late

    return should_stop


def open_search(
    config: StudyConfig,
    reporter: Reporter,
    fresh: bool,
    stop: Callable[[], bool] | None,
    scorer: Scorer | None,
    command: Command,
) -> OpenSearch:
    """Everything before the first trial: the statistics pass, the FP32 reference and latency, the
    stored study (created or joined) and the search context (call while :func:`serving`)."""
    began = time.time()
    stopper_clock = time.monotonic()  # the timeout counts from here
    stages: dict[str, float] = {}  # seconds per stage of the set-up, then of the first trial
    preload(storage_url(config))  # the database modules import while the model is prepared
    space = load_space(config.search.space or config.search.mode, config.search.overrides)
    tracker = make_tracker(config)  # fails in seconds, before any calibration work
    storage, existing = existing_study(config)  # a shared database must answer before any work
    existing = None if fresh else existing
    with timed(stages, "prepare_s"):
        graph = pipeline.load_graph(config)
    inputs = fingerprint_inputs(config, graph, space)
    if existing is not None:  # refuse before the statistics pass
        stored = existing.user_attrs.get(STUDY_FINGERPRINT)
        check_fingerprint(stored, inputs, study_name(config), storage_url(config), command == Command.TUNE)
    ref = _measure(config, graph, inputs, existing, scorer, reporter, stages, began)
    resolution = check_resolution(config, ref.scorer)  # one line when the budget is too fine for it
    compute_count = len(compute_layers(graph, [n.name for n in graph.nodes]))
    # Only now: a failure before leaves no study behind.
    storage = storage or open_storage(storage_url(config), config.storage)
    study = storage.call(
        _prepare_study, config, storage, fresh, ref, began, compute_count, command == Command.TUNE
    )
    store_resolution(storage, study, resolution)
    tracker.attach(study, storage, ref.calibrated.stats.key, ref.fp32_score)  # opened in the background
    stages["setup_s"] = time.time() - began
    _check_timeout(config, stages, ref.timers, pipeline.scored_samples(config, graph), len(space.strategies))
    requested = stop or (lambda: False)
    inputs = SearchInputs(
        config=config,
        calibrated=ref.calibrated,
        scorer=ref.scorer,
        space=space,
        timers=ref.timers,
        analysis_feeds=pipeline.sample_feeds(config, graph, config.search.data_limit),
        fp32_latency=dict(study.user_attrs[STUDY_FP32_LATENCIES]),
        began=began,
    )
    caches = ProcessCaches(
        requantizer=Requantizer(graph),
        latencies=dict(study.user_attrs.get(STUDY_LATENCIES, {})),
        stages=stages,
    )
    should_stop = _stopper(config, storage, study, requested, stopper_clock)
    ctx = SearchContext(inputs, caches, Observers(reporter, tracker, should_stop, requested))
    return OpenSearch(ctx, study, storage, command, ref.fp32_score)


def _check_timeout(
    config: StudyConfig,
    stages: dict[str, float],
    timers: dict[str, LatencyTimer],
    test_samples: int,
    strategies: int,
) -> None:
    """Say in one line when ``search.timeout`` leaves no room for the trials the mode needs, with
    the estimate: a trial scores the test set once (as long as the FP32 reference took, or the FP32
    batch-1 latency times the samples when the reference came from the cache) and times itself."""
    timeout = config.search.timeout
    if not timeout:
        return
    fast = config.search.mode == "fast"
    wanted = 1 if fast else strategies + (config.search.n_trials or DEFAULT_SAMPLED_TRIALS)
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
