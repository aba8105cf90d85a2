"""The trial driver that every process serving a study runs (``tune``, ``worker``, the ask-and-tell
Tuner): :meth:`Driver.drive`.

Each turn, under the study lock, it fails the trials of dead processes (the heartbeat), asks
``_phases.next_step`` what comes next and claims it: the trial is queued with its fixed choices if
it is not queued already, taken with :meth:`optuna.Study.ask`, and given its first heartbeat and its
owner before the lock is released. The trial runs without the lock, its heartbeat recorded from a
thread. Its result is stored and told to Optuna; then, under the lock again, the best-so-far outputs
are written if it is the new best and the output folder holds an older one (``best_trial.json`` says
which trial it holds: a compare-and-set). Each storage step (marked :func:`autoquant.storage.retried`)
runs again while the database does not answer; a step inside another runs once, within the outer one.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoquant.config import QuantizationConfig
from autoquant.engine import QuantizedModel
from autoquant.errors import AutoquantError, EvaluationError, SearchStopped, TrialReturned
from autoquant.names import (
    STUDY_LATENCIES,
    STUDY_LATENCY_TOLERANCE,
    STUDY_SCALES_PROGRESS,
    STUDY_STARTED,
    STUDY_TIME_TO_BUDGET,
    TRIAL_FAIL_REASON,
    TRIAL_KEY,
    TRIAL_OWNER,
    TRIAL_SCALES,
    TrialKey,
)
from autoquant.search._open import measure_tolerance
from autoquant.search._outcome import EndState, OutcomeAttr, TrialEnd, TrialOutcome, current_best
from autoquant.search._outputs import holds_best, publish_best, write_sensitivity
from autoquant.search._phases import (
    Analyse,
    Done,
    Keys,
    Phase,
    Run,
    Wait,
    next_step,
    phase_progress,
    search_scales,
)
from autoquant.search._ranking import analyse
from autoquant.search._trial import Pruned, SearchContext, log_trial, ranking_key, run_choice, stage
from autoquant.search.pipeline import quantize
from autoquant.storage import Heartbeat, StudyStorage, WorkerRecord, WorkerState, is_outage, retried

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often a process with nothing to claim looks at the study again


@dataclass(frozen=True)
class Claimed:
    """A trial this process has taken."""

    trial: optuna.Trial
    key: str
    phase: Phase
    prune: bool  # a completed trial exists: evaluations certainly over budget may stop early
    progress: tuple[int, int, str] | None = None  # the phase's (finished, total, unit), for its bar


class Driver:
    """Runs a study's trials in this process, sharing the work with any other process.

    Args:
        ctx: The search context.
        study: The Optuna study.
        storage: Its storage, with the study lock and the retries.
        worker: This process's record in the study.
        idle: Entered while the driver waits for other processes' trials (the server's drivers
            release their shared lock there, :mod:`autoquant.serve`).
        may_claim: Asked before each claim; while it says no, the driver waits (the server's
            spare drivers claim only when a client is waiting for a trial).
    """

    def __init__(
        self,
        ctx: SearchContext,
        study: optuna.Study,
        storage: StudyStorage,
        worker: WorkerRecord,
        idle: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        may_claim: Callable[[], bool] = lambda: True,
    ) -> None:
        self.ctx, self.study, self.storage, self.worker = ctx, study, storage, worker
        self.idle, self.may_claim = idle, may_claim

    def lock(self):
        """The study lock."""
        return self.storage.lock(self.study.study_name)

    # --- the loop --------------------------------------------------------------------------------
    def drive(self) -> str:
        """Claim and run trials until the study is done; returns why it is done.

        Raises:
            SearchStopped: A stop request or the deadline ended the search first.
            StorageError: The database stayed unreachable.
        """
        shown: Phase | None = None
        waiting: str | None = None
        bar: tuple[int, int, str] | None = None  # the phase bar shown

        def close_bar() -> None:
            if bar is not None:
                self.ctx.observers.reporter.step(bar[1], bar[1], bar[2])

        while True:
            if self.ctx.observers.should_stop():
                close_bar()
                raise SearchStopped
            if not self.may_claim():
                self._pause()
                continue
            step = self._claim()
            if isinstance(step, Analyse):
                self._ranking(step.quantization)
                continue
            if isinstance(step, Done):
                close_bar()
                # "done" only once its summary is written: until then the others count it as serving
                # (of the processes that finish together, exactly one is the last out).
                self.worker.update(WorkerState.FINISHING)
                return step.reason
            if isinstance(step, Wait):
                if waiting != step.reason:
                    logger.info("waiting: %s in other processes", step.reason)
                    waiting = step.reason
                self.worker.update(WorkerState.WAITING, reason=step.reason)
                self._pause()
                continue
            waiting = None
            if step.phase != shown:
                close_bar()
                bar = None
                self.ctx.observers.reporter.phase(step.phase.title(self.ctx))
                shown = step.phase
            if step.progress is not None:
                bar = step.progress
                self.ctx.observers.reporter.step(*bar)
            self._run(step)

    def _pause(self) -> None:
        until = time.monotonic() + POLL_SECONDS
        with self.idle():
            while time.monotonic() < until and not self.ctx.observers.should_stop():
                time.sleep(0.05)

    # --- claiming --------------------------------------------------------------------------------
    @retried
    def _claim(self) -> Claimed | Wait | Done | Analyse:
        ctx, study = self.ctx, self.study
        with self.lock():
            self.storage.fail_dead_trials(study)
            self._fail_broken_claims(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            trials = study.get_trials(deepcopy=False)
            attrs = study.user_attrs
            # the first measurement of a graph wins
            ctx.caches.latencies.update(attrs.get(STUDY_LATENCIES, {}))
            tolerance = float(attrs.get(STUDY_LATENCY_TOLERANCE, 0.0))
            step = next_step(ctx, trials, attrs, study.set_user_attr, tolerance)
            if not isinstance(step, Run):
                return step
            self._discard_settled(Keys(trials))
            if step.params is not None and not step.queued:
                study.enqueue_trial(step.params, user_attrs={TRIAL_KEY: step.key})
            with warnings.catch_warnings():  # Optuna expects the heartbeat with Study.optimize
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask()
            key = trial.user_attrs.get(TRIAL_KEY)
            if key is None:  # a new trial, for the sampler
                trial.set_user_attr(TRIAL_KEY, step.key)
                key = step.key
            self.storage.claim(trial)
            prune = any(t.state == TrialState.COMPLETE for t in trials)
            self.worker.update(WorkerState.RUNNING, trial.number, key)
        return Claimed(trial, key, step.phase, prune, phase_progress(ctx, trials, key))

    def _fail_broken_claims(self, running: list[FrozenTrial]) -> None:
        """A running trial without an owner, seen under the lock, is a claim whose process died
        half-way (claims are made whole under the lock): fail it and queue it again."""
        broken = [t for t in running if TRIAL_OWNER not in t.system_attrs]
        for trial in broken:
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            if trial.user_attrs.get(TRIAL_KEY):
                self.storage.requeue(self.study, trial)
            logger.info("trial %d was claimed by a process that died; it runs again", trial.number)

    def _discard_settled(self, keys: Keys) -> None:
        """Waiting trials whose key another trial settled would be taken first by ``ask``: take them
        and mark them failed, not run (a trial completed by a process thought dead, rarely)."""
        waiting = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
        for frozen in waiting:
            done = keys.done(frozen.user_attrs.get(TRIAL_KEY, ""))
            if done is None:
                return  # the oldest waiting trial is one to run
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
            trial.set_user_attr(TRIAL_FAIL_REASON, f"not run: trial {done.number} settled its key")
            self.study.tell(trial, state=TrialState.FAIL)

    # --- the sensitivity analysis ------------------------------------------------------------
    def _ranking(self, quantization: QuantizationConfig) -> list[str]:
        """The sensitivity ranking of these choices: this process's, or the analysis run now (outside
        the study lock; its result is cached and written by the outputs stage)."""
        caches = self.ctx.caches
        known = caches.ranking(quantization)
        if known is not None:
            return known
        inputs = self.ctx.inputs
        sensitivity = analyse(inputs.config, inputs.calibrated, quantization, self.ctx.observers.should_stop)
        write_sensitivity(inputs.config, sensitivity, self.study.study_name)
        caches.rankings[ranking_key(quantization)] = sensitivity.ranking()
        caches.new_sensitivity = sensitivity.to_json()
        return caches.rankings[ranking_key(quantization)]

    # --- running ---------------------------------------------------------------------------------
    def _body(self, claimed: Claimed) -> tuple[TrialOutcome, QuantizedModel, QuantizationConfig]:
        """Suggest, quantize, evaluate and measure (the scale trial searches its scales first)."""
        ctx, trial, key = self.ctx, claimed.trial, claimed.key
        base = ctx.inputs.config.quantization
        params = ctx.inputs.space.suggest(trial, base, ctx.inputs.nodes, key.startswith(TrialKey.BISECT))
        quantization = ctx.inputs.space.apply(params, base)
        ctx.observers.reporter.trial_started(trial.number, key, params)
        with stage("the sensitivity analysis for fp32_layers", EvaluationError):
            ranking = self._ranking(quantization) if quantization.fp32_layers else []
        scales = trial.user_attrs.get(TRIAL_SCALES)
        if key == TrialKey.SCALES and scales is None:
            scales = search_scales(ctx, params, ranking, self._scales_progress(), self._save_scales_progress)
            self._set_trial_attr(trial, TRIAL_SCALES, scales)
        if scales:
            quantization = quantization.model_copy(update={"layer_scales": scales})
        outcome, result = run_choice(ctx, quantization, ranking, trial.number, key, params, claimed.prune)
        return outcome, result, quantization

    @retried
    def _scales_progress(self) -> dict | None:
        """The scale search's saved progress (a resumed trial goes on from it)."""
        return self.study.user_attrs.get(STUDY_SCALES_PROGRESS)

    @retried
    def _save_scales_progress(self, progress: dict) -> None:
        self.study.set_user_attr(STUDY_SCALES_PROGRESS, progress)

    @retried
    def _set_trial_attr(self, trial: optuna.Trial, key: str, value: object) -> None:
        trial.set_user_attr(key, value)

    def _run(self, claimed: Claimed) -> None:
        trial = claimed.trial
        with Heartbeat(self.storage, self.worker, trial):
            try:
                made = self._body(claimed)
            except Pruned as pruned:
                self._record_pruned(trial, claimed.key, pruned)
                return
            except TrialReturned as returned:
                logger.info("trial %d: %s; it runs again", trial.number, returned)
                self._interrupted(trial, str(returned))
                end = TrialEnd(trial.number, claimed.key, EndState.returned, str(returned))
                self.ctx.observers.reporter.trial_finished(None, end, current_best(self.study))
                return
            except AutoquantError as exc:
                self._record_failure(trial, claimed.key, exc)
                return
            except (SearchStopped, KeyboardInterrupt):
                self._interrupted(trial, "stopped before its end")
                raise
            except Exception as exc:
                if self.storage.shared and is_outage(exc):
                    logger.warning("trial %d: the storage connection was lost; it runs again", trial.number)
                    self._interrupted(trial, "the storage connection was lost")
                    return
                self._interrupted(trial, f"{type(exc).__name__}: {exc}", again=False)
                raise
            self._record(trial, *made)
        self.worker.update(WorkerState.IDLE)

    @retried
    def _interrupted(self, trial: optuna.Trial, reason: str, again: bool = True) -> None:
        """Fail a trial that did not finish, and queue it again (unless ``again`` is False)."""
        trial.set_user_attr(TRIAL_FAIL_REASON, reason)
        frozen = self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if again and frozen.state == TrialState.FAIL:
            with self.lock():
                if not self._requeued(frozen):
                    self.storage.requeue(self.study, frozen)

    def _requeued(self, frozen: FrozenTrial) -> bool:
        key = frozen.user_attrs.get(TRIAL_KEY)
        return Keys(self.study.get_trials(deepcopy=False)).busy(key) if key else True

    @retried
    def _record_pruned(self, trial: optuna.Trial, key: str, pruned: Pruned) -> None:
        e = pruned.evaluation
        for name in (OutcomeAttr.score, OutcomeAttr.decay, OutcomeAttr.decay_ci, OutcomeAttr.samples):
            trial.set_user_attr(name.value, getattr(e, name.value))
        if e.samples not in self._intermediate_steps(trial):
            trial.report(e.decay, step=e.samples)
        self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        end = TrialEnd(trial.number, key, EndState.pruned, str(pruned), e.decay, e.samples, e.decay_ci)
        self.ctx.observers.reporter.trial_finished(None, end, current_best(self.study))

    def _intermediate_steps(self, trial: optuna.Trial) -> set[int]:
        return set(self.study.get_trials(deepcopy=False)[trial.number].intermediate_values)

    @retried
    def _record_failure(self, trial: optuna.Trial, key: str, exc: AutoquantError) -> None:
        ctx = self.ctx
        details = getattr(exc, "details", "")
        if details and details not in ctx.caches.shown_tracebacks:  # user code: its traceback, once
            ctx.caches.shown_tracebacks.add(details)
            logger.error("trial %d failed in user code:\n%s", trial.number, details.rstrip())
        logger.debug("trial %d failed", trial.number, exc_info=exc)  # the cause chain, with --verbose
        trial.set_user_attr(TRIAL_FAIL_REASON, str(exc))
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        ctx.observers.tracker.log_failure(trial.number, trial.params, str(exc))
        end = TrialEnd(trial.number, key, EndState.failed, str(exc))
        ctx.observers.reporter.trial_finished(None, end, current_best(self.study))

    @retried
    def _record(
        self,
        trial: optuna.Trial,
        outcome: TrialOutcome,
        result: QuantizedModel,
        quantization: QuantizationConfig,
    ) -> None:
        """Store a completed trial, then write the outputs if it is the new best."""
        ctx, study = self.ctx, self.study
        for name, value in outcome.attrs().items():
            trial.set_user_attr(name, value)
        with self.lock():  # told under the lock: a claim sees the result, or started before it
            frozen = study.tell(trial, outcome.decay, skip_if_finished=True)
            if frozen.state != TrialState.COMPLETE:  # failed by another process that thought us dead
                self._rescue(frozen, outcome)
            attrs = study.user_attrs
            latencies = {**ctx.caches.latencies, **attrs.get(STUDY_LATENCIES, {})}
            if latencies != attrs.get(STUDY_LATENCIES):
                study.set_user_attr(STUDY_LATENCIES, latencies)
            ctx.caches.latencies.update(latencies)
            if outcome.within_budget and STUDY_TIME_TO_BUDGET not in attrs:
                started = float(attrs.get(STUDY_STARTED, time.time()))
                study.set_user_attr(STUDY_TIME_TO_BUDGET, time.time() - started)
            best = current_best(study)
            if best is not None and best.number == outcome.number:
                publish_best(self.ctx.inputs.config, study.study_name, outcome, result, quantization)
        ctx.caches.stages.setdefault("to_first_trial_s", time.time() - ctx.inputs.began)
        log_trial(ctx, outcome, result)
        ctx.observers.reporter.trial_finished(outcome, None, best)
        measure_tolerance(study, attrs, self.lock, ctx.inputs.timers, ctx.caches.stages)

    def _rescue(self, frozen: FrozenTrial, outcome: TrialOutcome) -> None:
        """Keep a completed result whose trial another process failed meanwhile: as a new trial."""
        logger.warning("trial %d was failed by another process meanwhile; its result is kept", frozen.number)
        self.study.add_trial(
            optuna.trial.create_trial(
                params=frozen.params,
                distributions=frozen.distributions,
                value=outcome.decay,
                user_attrs={**frozen.user_attrs, **outcome.attrs()},
            )
        )

    # --- the best-so-far outputs --------------------------------------------------------------
    @retried
    def sync_outputs(self) -> None:
        """Make the output folder hold the study's best trial, whichever process found it: the
        model is rebuilt from the trial's choices (quantization is deterministic)."""
        ctx = self.ctx
        with self.lock():
            best = current_best(self.study)
            if best is None or holds_best(self.ctx.inputs.config, self.study.study_name, best):
                return
            quantization = ctx.inputs.space.apply(best.params, ctx.inputs.config.quantization)
            if best.layer_scales:
                quantization = quantization.model_copy(update={"layer_scales": best.layer_scales})
            ranking = self._ranking(quantization) if quantization.fp32_layers else ()
            result = quantize(
                ctx.inputs.calibrated, quantization, ranking, requantizer=ctx.caches.requantizer
            )
            logger.info("writing the outputs of trial %d, the best of the study", best.number)
            publish_best(self.ctx.inputs.config, self.study.study_name, best, result, quantization)
