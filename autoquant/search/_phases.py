"""What runs next in a study, decided from the stored study alone.

Every process that serves a study asks :func:`next_step` under the study lock before each trial.
The answer depends only on the stored trials and study attributes, so any number of processes,
started at any time, share the work without running a piece twice. Every trial has a key
(:class:`~autoquant.names.TrialKey`); a key is *done* once one of its trials completed or was
pruned, or failed without being queued again, and *busy* while one of its trials runs or waits.

* Trials queued again (their worker died, or a stop interrupted them) run first, oldest first.
* **Fast mode**: the strategies in order, each claimed once; the study is done as soon as a
  trial is within budget (the other processes stop after their current trial) or every
  strategy has run.
* **Full mode**: the strategies, then ``n_trials`` sampled trials (each a numbered slot, so the
  count holds whoever samples), then, once all of those are done, the FP32 blacklist bisection:
  its choices and range are stored once (:data:`~autoquant.names.STUDY_BISECT_PLAN`) and every
  step follows from the stored results, so a step runs once and the others wait for it; then the
  per-layer scale trial, whose search stores its progress after each tensor.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from autoquant.config import QuantizationConfig
from autoquant.engine import compute_layers, difference, fp32_nodes, run_outputs
from autoquant.errors import SearchStopped
from autoquant.names import STUDY_BISECT_PLAN, TRIAL_KEY, TrialKey
from autoquant.search._outcome import OutcomeAttr, TrialOutcome
from autoquant.search._selection import best_outcome
from autoquant.search._space import Value
from autoquant.search._trial import DEFAULT_SAMPLED_TRIALS, SCALE_CANDIDATES, SearchContext
from autoquant.search.pipeline import quantize

logger = logging.getLogger(__name__)


class Phase(Enum):
    """The phases of a study, in order (fast mode runs the first only)."""

    STRATEGIES = "strategies"
    SAMPLED = "sampled"
    BISECT = "bisect"
    SCALES = "scales"

    def title(self, ctx: SearchContext) -> str:
        """What a display shows for the phase."""
        if self is Phase.STRATEGIES:
            return f"{len(ctx.inputs.space.strategies)} known-good strategies"
        if self is Phase.SAMPLED:
            return f"{ctx.inputs.config.search.n_trials or DEFAULT_SAMPLED_TRIALS} sampled trials"
        if self is Phase.BISECT:
            return "binary search over the FP32 blacklist"
        return "per-layer threshold scales"


@dataclass(frozen=True)
class Run:
    """Run the trial of ``key``: queue ``params`` for it (fixed choices), or take the trial queued
    for it (``queued``), or let the sampler choose (``params`` None, not ``queued``)."""

    key: str
    params: dict[str, Value] | None
    phase: Phase
    queued: bool = False


@dataclass(frozen=True)
class Wait:
    """Nothing to claim now: other processes run what comes next."""

    reason: str


@dataclass(frozen=True)
class Done:
    """The study is done."""

    reason: str


@dataclass(frozen=True)
class Analyse:
    """Run the sensitivity analysis of these choices first (the bisection plans with its ranking);
    the driver runs it outside the study lock, then asks again."""

    quantization: QuantizationConfig


Step = Run | Wait | Done | Analyse


def within_budget(trial: FrozenTrial) -> bool:
    """Whether a finished trial met the budget."""
    return bool(trial.state == TrialState.COMPLETE and trial.user_attrs.get(OutcomeAttr.within_budget))


@dataclass
class Keys:
    """The stored trials by key."""

    trials: Sequence[FrozenTrial]
    by_key: dict[str, list[FrozenTrial]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for trial in self.trials:
            key = trial.user_attrs.get(TRIAL_KEY)
            if key:
                self.by_key[key].append(trial)

    def done(self, key: str) -> FrozenTrial | None:
        """The trial that settled ``key``, or None while it has not run or is running."""
        trials = self.by_key.get(key, [])
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if finished:
            return finished[0]
        if trials and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return trials[-1]  # failed, and not queued again
        return None

    def busy(self, key: str) -> bool:
        """Whether a trial of ``key`` runs or waits and none settled it."""
        return self.done(key) is None and key in self.by_key

    def queued(self) -> list[FrozenTrial]:
        """Waiting trials of keys not yet done, oldest first."""
        waiting = [t for t in self.trials if t.state == TrialState.WAITING]
        return [t for t in waiting if self.done(t.user_attrs.get(TRIAL_KEY, "")) is None]

    def sampled(self) -> set[str]:
        return {k for k in self.by_key if k.startswith(TrialKey.SAMPLED)}


def _outcomes(trials: Sequence[FrozenTrial]) -> list[TrialOutcome]:
    return [o for o in map(TrialOutcome.from_trial, trials) if o is not None]


def strategies(ctx: SearchContext) -> list[tuple[str, dict[str, Value]]]:
    """The keys and complete choices of the known-good strategies, in order."""
    base = ctx.inputs.config.quantization
    found = []
    for strategy in ctx.inputs.space.strategies:
        name = str(strategy.get("name", len(ctx.inputs.space.strategies)))
        partial = {k: v for k, v in strategy.items() if k != "name"}
        found.append((TrialKey.strategy(name), ctx.inputs.space.complete(partial, base)))
    return found


def next_step(
    ctx: SearchContext,
    trials: Sequence[FrozenTrial],
    attrs: dict[str, Any],
    save: Callable[[str, Any], None],
    tolerance: float = 0.0,
) -> Step:
    """What this process should do next (call it under the study lock).

    Args:
        ctx: The search context (config, space, graph).
        trials: Every stored trial of the study.
        attrs: The study's user attributes.
        save: Stores a study user attribute (the bisection plan, decided once).
        tolerance: The study's latency tolerance, for the best trial.
    """
    keys = Keys(trials)
    fast = ctx.inputs.config.search.mode == "fast"
    passed = [t for t in trials if within_budget(t)]
    if fast and passed:
        return Done(f"trial {passed[0].number} is within the budget")
    for trial in keys.queued():
        key = trial.user_attrs[TRIAL_KEY]
        return Run(key, None, _phase(key), queued=True)
    known = strategies(ctx)
    for key, params in known:
        if key not in keys.by_key:
            return Run(key, params, Phase.STRATEGIES)
    if fast:
        busy = any(keys.busy(k) for k, _ in known)
        return Wait("strategies are running") if busy else Done("every strategy has run")
    count = ctx.inputs.config.search.n_trials or DEFAULT_SAMPLED_TRIALS
    sampled = keys.sampled()
    if len(sampled) < count:
        slot = next(
            n for n in range(len(sampled), len(sampled) + count + 1) if TrialKey.sampled(n) not in sampled
        )
        return Run(TrialKey.sampled(slot), None, Phase.SAMPLED)
    if any(keys.busy(k) for k in [*(k for k, _ in known), *sampled]):
        return Wait("sampled trials are running")
    if STUDY_BISECT_PLAN not in attrs:
        plan = bisect_plan(ctx, _outcomes(trials), tolerance)
        if isinstance(plan, Analyse):
            return plan
        attrs = {**attrs, STUDY_BISECT_PLAN: plan}
        save(STUDY_BISECT_PLAN, plan)
    step = _bisect_step(keys, attrs[STUDY_BISECT_PLAN])
    if step is not None:
        return step
    if keys.done(TrialKey.SCALES) is not None:
        return Done("every phase has run")
    if keys.busy(TrialKey.SCALES):
        return Wait("the per-layer scale search is running")
    base = min(_outcomes(trials), key=lambda o: (o.decay, len(o.fp32_compute)), default=None)
    if base is None:
        return Done("no trial completed")
    return Run(TrialKey.SCALES, dict(base.params), Phase.SCALES)


def _phase(key: str) -> Phase:
    if key.startswith(TrialKey.STRATEGY):
        return Phase.STRATEGIES
    if key.startswith(TrialKey.SAMPLED):
        return Phase.SAMPLED
    return Phase.BISECT if key.startswith(TrialKey.BISECT) else Phase.SCALES


def phase_progress(
    ctx: SearchContext, trials: Sequence[FrozenTrial], key: str
) -> tuple[int, int, str] | None:
    """How far the phase of ``key`` has come, for its progress bar: (finished trials, trials in the
    phase, unit), or None for the phases that are one trial or a few (bisection, scales)."""
    finished = [
        t.user_attrs.get(TRIAL_KEY, "") for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    if key.startswith(TrialKey.STRATEGY):
        total, prefix, unit = len(ctx.inputs.space.strategies), TrialKey.STRATEGY, "strategies"
    elif key.startswith(TrialKey.SAMPLED):
        total, prefix, unit = (
            ctx.inputs.config.search.n_trials or DEFAULT_SAMPLED_TRIALS,
            TrialKey.SAMPLED,
            "sampled trials",
        )
    else:
        return None
    return min(sum(k.startswith(prefix) for k in finished), total), total, unit


def bisect_plan(
    ctx: SearchContext, outcomes: Sequence[TrialOutcome], tolerance: float
) -> dict[str, Any] | Analyse:
    """The bisection's choices and range: search the smallest k such that keeping the k most
    sensitive nodes in FP32 meets the budget, with the choices of the trial of smallest decay.

    k = 0 is taken as failing (else there is nothing to search) and k = all nodes as passing;
    about log2(nodes) trials run. Only the ks that could beat the best trial within budget are
    searched: the selection counts the compute layers onnxruntime runs in float, those a blacklist
    keeps and those without an INT8 kernel; when the best within budget keeps none in FP32, or no
    k >= 1 can leave fewer, the phase is skipped. :class:`Analyse`: a ranking is needed first.
    """
    base = min(outcomes, key=lambda o: o.decay, default=None)
    if base is None or (base.within_budget and not base.kept_fp32):
        return {"skipped": "a trial that keeps no compute layer in FP32 is within the budget"}
    params = {k: v for k, v in base.params.items() if k != "fp32_layers"}
    quantization = ctx.inputs.space.apply(params, ctx.inputs.config.quantization)
    best = best_outcome(outcomes, tolerance)
    high = ctx.inputs.nodes
    if best is not None and best.within_budget:
        high = _beatable_ks(ctx, quantization, best)
        if isinstance(high, Analyse):
            return high
        if high <= 1:
            logger.info(
                "FP32 blacklist bisection skipped: no k >= 1 can beat trial %d's %d FP32 compute layers",
                best.number,
                len(best.fp32_compute),
            )
            return {"skipped": f"no k >= 1 can beat trial {best.number}"}
    return {"params": params, "low": 0, "high": high}


def _beatable_ks(ctx: SearchContext, quantization: QuantizationConfig, best: TrialOutcome) -> int | Analyse:
    """The smallest k whose blacklist leaves at least as many compute layers running in float as
    ``best`` (so only the ks below it can win), at most the number of nodes. A blacklist's layers
    run in float, and so do those that ran in float in ``best`` though quantized (no INT8 kernel)."""
    graph = ctx.inputs.calibrated.graph
    anyway = set(best.fp32_compute) - set(best.kept_fp32)

    def in_float(names: list[str]) -> int:
        return len(anyway | set(compute_layers(graph, names)))

    fixed = fp32_nodes(graph, quantization.model_copy(update={"fp32_layers": 0}))
    if in_float(fixed) >= len(best.fp32_compute):
        return 0
    ranking = ctx.caches.ranking(quantization)
    if ranking is None:
        return Analyse(quantization)
    for k in range(1, len(ranking) + 1):
        if in_float(list(dict.fromkeys([*fixed, *ranking[:k]]))) >= len(best.fp32_compute):
            return k
    return ctx.inputs.nodes


def _bisect_step(keys: Keys, plan: dict[str, Any]) -> Step | None:
    """The next bisection step from the stored results, a wait for a running one, or None at the end."""
    if "params" not in plan:
        return None
    low, high = int(plan["low"]), int(plan["high"])
    while high - low > 1:
        k = (low + high) // 2
        key = TrialKey.bisect(k)
        done = keys.done(key)
        if done is None:
            if keys.busy(key):
                return Wait(f"bisection step k={k} is running")
            return Run(key, {**plan["params"], "fp32_layers": k}, Phase.BISECT)
        low, high = (low, k) if within_budget(done) else (k, high)
    return None


def search_scales(
    ctx: SearchContext,
    params: dict[str, Value],
    ranking: Sequence[str],
    saved: dict[str, Any] | None,
    save: Callable[[dict], None],
) -> dict[str, float]:
    """The per-layer scale search of the scale trial, from where a stored progress left it.

    When the deadline passes inside the search, the scales found so far are returned (the trial
    confirms them); on a stop request the progress stays stored for the next run.

    Raises:
        SearchStopped: The user asked to stop.
    """
    quantization = ctx.inputs.space.apply(params, ctx.inputs.config.quantization)
    progress = (
        saved if saved and saved.get("params") == params else {"params": params, "next": 0, "scales": {}}
    )
    last = dict(progress)

    def keep(state: dict) -> None:
        last.update(state)
        save(state)

    scales, finished = greedy_scales(ctx, quantization, ranking, progress, keep)
    if not finished:
        if ctx.observers.user_stopped():
            logger.info("per-layer scales: stopped after %d tensors; a resumed study goes on", last["next"])
            raise SearchStopped
        logger.info(
            "per-layer scales: the deadline passed; confirming the %d scales found so far", len(scales)
        )
    return scales


def greedy_scales(
    ctx: SearchContext,
    quantization: QuantizationConfig,
    ranking: Sequence[str],
    progress: dict[str, Any],
    save: Callable[[dict], None],
) -> tuple[dict[str, float], bool]:
    """The seed auto-tuning tool's loop: one tensor at a time, keep the scale that lowers the L2.

    For each quantized tensor in topological order (tensors of ``ignore_layer_list`` nodes are
    skipped), every scale in :data:`~autoquant.search.SCALE_CANDIDATES` is tried and kept if it
    lowers the squared distance between the INT8 and FP32 model outputs on ``data_limit`` samples.

    Args:
        ctx: The search context; ``ctx.observers.should_stop`` is polled between evaluations.
        quantization: The choices the scales refine.
        ranking: Their sensitivity ranking (for ``fp32_layers``; empty without).
        progress: ``{"next": tensor index, "scales": {...}}`` to start from (a resumed search).
        save: Called with the progress after each tensor.

    Returns:
        The scales found and whether every tensor was tried.
    """
    graph = ctx.inputs.calibrated.graph
    names = list(ctx.inputs.config.model.outputs) or list(graph.outputs)
    reference = run_outputs(str(graph.prepared_path), ctx.inputs.analysis_feeds, names)
    ignored = set(ctx.inputs.config.search.ignore_layer_list)
    skip = {t for n in graph.nodes if n.name in ignored for t in (*n.inputs, *n.outputs)}
    tensors = [t for t in graph.activations if t not in skip]
    scales: dict[str, float] = dict(progress.get("scales", {}))

    def error(candidate: dict[str, float]) -> float:
        choices = quantization.model_copy(update={"layer_scales": candidate})
        model = quantize(ctx.inputs.calibrated, choices, ranking, requantizer=ctx.caches.requantizer).model
        return difference(reference, run_outputs(model, ctx.inputs.analysis_feeds, names)).l2

    best = error(scales)
    for index in range(int(progress.get("next", 0)), len(tensors)):
        tensor = tensors[index]
        ctx.observers.reporter.step(index, len(tensors), "tensors")
        for scale in SCALE_CANDIDATES:
            if ctx.observers.should_stop():
                return scales, False
            value = error({**scales, tensor: scale})
            if value < best:
                best, scales = value, {**scales, tensor: scale}
        progress = {**progress, "next": index + 1, "scales": scales}
        save(progress)
    ctx.observers.reporter.step(len(tensors), len(tensors), "tensors")
    return scales, True
