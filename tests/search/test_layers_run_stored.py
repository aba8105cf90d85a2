"""A trial stores the compute layers onnxruntime runs in float and those its choices kept in FP32;
a trial stored by an earlier version (no ``fp32_wrapped_layers``) still reads."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from autoquant.search import TrialOutcome


def _frozen(attrs: dict) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs=attrs)


def test_both_counts_round_trip_through_the_stored_attributes() -> None:
    outcome = TrialOutcome(
        0, "strategy:a", {}, 0.9, 0.01, None, ("conv0",), 1.0, True,
        fp32_compute=("deconv1", "conv0"), fp32_wrapped=("conv0",),
    )  # fmt: skip
    attrs = outcome.attrs()
    assert attrs["fp32_compute_layers"] == ["deconv1", "conv0"] and attrs["fp32_wrapped_layers"] == ["conv0"]
    back = TrialOutcome.from_trial(_frozen(attrs))
    assert back is not None
    assert back.fp32_compute == ("deconv1", "conv0") and back.kept_fp32 == ("conv0",)


def test_a_trial_of_an_earlier_version_counts_what_it_kept() -> None:
    attrs = TrialOutcome(0, "strategy:a", {}, 0.9, 0.01, None, ("conv0",), 1.0, True).attrs()
    del attrs["fp32_wrapped_layers"]
    attrs["fp32_compute_layers"] = ["conv0"]
    back = TrialOutcome.from_trial(_frozen(attrs))
    assert back is not None and back.fp32_wrapped is None
    assert back.fp32_compute == back.kept_fp32 == ("conv0",)
