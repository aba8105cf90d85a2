"""What runs next, decided from the stored trials alone (autoquant/phases.py), on made-up studies."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autoquant.config import QuantizationConfig, SearchConfig
from autoquant.search import load_space
from autoquant.search._phases import Done, Keys, Phase, Run, Wait, next_step, phase_progress, strategies


def _ctx(mode: str, n_trials: int | None = None) -> SimpleNamespace:
    config = SimpleNamespace(
        search=SearchConfig(mode=mode, n_trials=n_trials), quantization=QuantizationConfig()
    )
    return SimpleNamespace(inputs=SimpleNamespace(config=config, space=load_space(mode)))


def _trial(number: int, key: str, state: TrialState, within: bool | None = None) -> optuna.trial.FrozenTrial:
    attrs = {"key": key} if within is None else {"key": key, "within_budget": within}
    trial = optuna.trial.create_trial(
        state=state,
        value=0.0 if state == TrialState.COMPLETE else None,
        params={"x": "a"} if state != TrialState.WAITING else {},
        distributions={"x": CategoricalDistribution(["a"])} if state != TrialState.WAITING else {},
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def _next(ctx: SimpleNamespace, trials: list) -> object:
    saved: dict = {}
    return next_step(ctx, trials, {}, saved.__setitem__)


def test_fast_mode_claims_the_strategies_in_order_each_once() -> None:
    ctx = _ctx("fast")
    keys = [key for key, _ in strategies(ctx)]
    assert len(keys) == len(set(keys)) == 6
    assert _next(ctx, []) == Run(keys[0], strategies(ctx)[0][1], Phase.STRATEGIES)
    running = [_trial(0, keys[0], TrialState.RUNNING)]
    step = _next(ctx, running)
    assert isinstance(step, Run) and step.key == keys[1]  # the next one, not the one running
    all_claimed = [_trial(i, k, TrialState.RUNNING) for i, k in enumerate(keys)]
    assert isinstance(_next(ctx, all_claimed), Wait)
    over = [_trial(i, k, TrialState.COMPLETE, within=False) for i, k in enumerate(keys)]
    assert isinstance(_next(ctx, over), Done)


def test_fast_mode_is_done_at_the_first_trial_within_budget_even_with_others_running() -> None:
    ctx = _ctx("fast")
    keys = [key for key, _ in strategies(ctx)]
    trials = [_trial(0, keys[0], TrialState.RUNNING), _trial(1, keys[1], TrialState.COMPLETE, within=True)]
    step = _next(ctx, trials)
    assert step == Done("trial 1 is within the budget")


def test_a_trial_queued_again_runs_first() -> None:
    ctx = _ctx("fast")
    keys = [key for key, _ in strategies(ctx)]
    trials = [
        _trial(0, keys[0], TrialState.FAIL),  # its worker died ...
        _trial(1, keys[1], TrialState.RUNNING),
        _trial(2, keys[0], TrialState.WAITING),  # ... and it was queued again
    ]
    assert _next(ctx, trials) == Run(keys[0], None, Phase.STRATEGIES, queued=True)
    assert not Keys(trials).done(keys[0]) and Keys(trials).busy(keys[0])
    failed_for_good = [_trial(0, keys[0], TrialState.FAIL)]
    assert Keys(failed_for_good).done(keys[0]).number == 0


def test_sampled_trials_are_numbered_slots_up_to_the_budget() -> None:
    ctx = _ctx("full", n_trials=3)
    done = [_trial(i, k, TrialState.COMPLETE, within=False) for i, (k, _) in enumerate(strategies(ctx))]
    assert _next(ctx, done) == Run("sampled:0", None, Phase.SAMPLED)
    # A study from before workers keyed sampled trials by number: slots never collide with them.
    old = [*done, _trial(6, "sampled:1", TrialState.COMPLETE, within=False)]
    assert _next(ctx, old).key == "sampled:2"
    full = [*old, _trial(7, "sampled:2", TrialState.RUNNING), _trial(8, "sampled:3", TrialState.RUNNING)]
    assert _next(ctx, full) == Wait("sampled trials are running")  # the budget is spent; they run


def test_phase_progress_counts_the_finished_trials_of_the_phase() -> None:
    ctx = _ctx("full", n_trials=4)
    keys = [key for key, _ in strategies(ctx)]
    trials = [
        _trial(0, keys[0], TrialState.COMPLETE, within=False),
        _trial(1, keys[1], TrialState.PRUNED),
        _trial(2, keys[2], TrialState.FAIL),  # failed: runs again, not finished
        _trial(3, keys[3], TrialState.RUNNING),
        _trial(4, "sampled:0", TrialState.COMPLETE, within=False),
    ]
    assert phase_progress(ctx, trials, keys[3]) == (2, 6, "strategies")
    assert phase_progress(ctx, trials, "sampled:1") == (1, 4, "sampled trials")
    assert phase_progress(ctx, trials, "bisect:3") is None


def test_each_phase_has_its_title() -> None:
    ctx = _ctx("full", n_trials=3)
    titles = {phase: phase.title(ctx) for phase in Phase}
    assert (
        titles[Phase.STRATEGIES] == "6 known-good strategies" and titles[Phase.SAMPLED] == "3 sampled trials"
    )
    assert titles[Phase.BISECT] == "binary search over the FP32 blacklist"
    assert titles[Phase.SCALES] == "per-layer threshold scales"
