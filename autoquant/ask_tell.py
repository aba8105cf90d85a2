"""Ask-and-tell: the search driven from the user's own evaluation code, in-process.

Like the older tool's client mode, the user runs each trial's INT8 model on their own batches,
computes the score with their own post-processing, and reports it::

    tuner = autoquant.Tuner(config)
    for trial in tuner:
        metric = MyMetric()
        for inputs, labels in my_loader:
            metric.update(trial.run(inputs), labels)
        trial.report(metric.score())
    result = tuner.result()

Without ``search.fp32_score`` the first trial is the FP32 model itself (``trial.fp32`` is True);
its score is the reference for the decay. Then come the fast strategies (fast mode stops at the
first within budget) and, in full mode, ``search.n_trials`` sampled trials. Every trial is an
Optuna trial of the stored study; the best one's outputs are written as ``autoquant tune`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import optuna

from autoquant import pipeline
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.errors import DataError
from autoquant.evaluate import compute_decay, measure_latency
from autoquant.graph import session_for
from autoquant.quantize import QuantizedModel, quantize_model
from autoquant.search import DEFAULT_SAMPLED_TRIALS, TrialOutcome, best_outcome, outcomes
from autoquant.space import Value, load_space
from autoquant.study import TuneResult, best_writer, open_study, study_result
from autoquant.thresholds import compute_thresholds


@dataclass
class Trial:
    """One model to evaluate in the user's code.

    Attributes:
        number: Optuna trial number (-1 for the FP32 reference).
        params: The quantization choices.
        fp32: True for the FP32 reference model.
        model: The model to evaluate.
    """

    number: int
    params: dict[str, Value]
    fp32: bool
    model: onnx.ModelProto
    _session: ort.InferenceSession = field(repr=False)
    score: float | None = None

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Run the model on one batch: a dict of input arrays, or one array for a single-input model."""
        if not isinstance(inputs, dict):
            inputs = {self._session.get_inputs()[0].name: np.asarray(inputs)}
        return self._session.run(None, inputs)

    def report(self, score: float) -> None:
        """Report the score the user computed for this trial (higher is better)."""
        if not np.isfinite(score):
            raise DataError(f"trial {self.number}: the reported score must be finite, got {score}")
        self.score = float(score)


class Tuner:
    """Iterate over trials; see the module docstring.

    Args:
        config: The study config; ``test`` is not used (the user evaluates).
        fresh: Delete a stored study of the same name first.
    """

    def __init__(self, config: StudyConfig, fresh: bool = False) -> None:
        self.config = config
        self.calibrated = pipeline.calibrate(config)
        self.space = load_space(config.search.space or config.search.mode, config.search.overrides)
        self.study = open_study(config, fresh)
        self.fp32_score = config.search.fp32_score
        self._write_best = best_writer(config)
        self._feed = _first_calibration_feed(config, self.calibrated)

    def __iter__(self) -> Iterator[Trial]:
        if self.fp32_score is None:
            model = self.calibrated.graph.load()
            reference = Trial(-1, {}, True, model, session_for(model))
            yield reference
            if reference.score is None:
                raise DataError("the FP32 trial ended without trial.report(score)")
            self.fp32_score = reference.score
        base = self.config.quantization
        for strategy in self.space.strategies:
            partial = {k: v for k, v in strategy.items() if k != "name"}
            trial = yield from self._one(
                self.space.complete(partial, base), f"strategy:{strategy.get('name', '')}"
            )
            if self.config.search.mode == "fast" and trial.within_budget:
                return
        if self.config.search.mode == "full":
            for _ in range(self.config.search.n_trials or DEFAULT_SAMPLED_TRIALS):
                yield from self._one(None, "sampled")

    def _one(self, params: dict[str, Value] | None, key: str) -> Iterator[Trial]:
        if params is not None:
            self.study.enqueue_trial(params, user_attrs={"key": key})
        optuna_trial = self.study.ask()
        if params is None:
            key = f"sampled:{optuna_trial.number}"
            optuna_trial.set_user_attr("key", key)
        chosen = self.space.suggest(optuna_trial, self.config.quantization, len(self.calibrated.graph.nodes))
        quantization = self.space.apply(chosen, self.config.quantization)
        result = self._quantize(quantization)
        session = session_for(result.model)
        trial = Trial(optuna_trial.number, chosen, False, result.model, session)
        yield trial
        if trial.score is None:
            self.study.tell(optuna_trial, state=optuna.trial.TrialState.FAIL)
            raise DataError(f"trial {trial.number} ended without trial.report(score)")
        decay = compute_decay(self.fp32_score, trial.score, self.config.search.decay)
        outcome = TrialOutcome(
            number=trial.number,
            key=key,
            params=chosen,
            score=trial.score,
            decay=decay,
            decay_ci=None,
            fp32_nodes=result.fp32_nodes,
            latency_ms=measure_latency(session, self._feed, repeats=20, warmup=3),
            within_budget=decay <= self.config.search.accept_int8_decay,
        )
        for name, value in outcome.attrs().items():
            optuna_trial.set_user_attr(name, value)
        if best_outcome([*outcomes(self.study), outcome]) is outcome:
            self._write_best(outcome, result, quantization)
        self.study.tell(optuna_trial, decay)
        return outcome

    def _quantize(self, quantization: QuantizationConfig) -> QuantizedModel:
        ranges = compute_thresholds(self.calibrated.stats, quantization)
        return quantize_model(self.calibrated.graph, ranges, quantization)

    def result(self) -> TuneResult:
        """The study so far: the best trial by the selection rule and every completed one."""
        if self.fp32_score is None:
            raise DataError("no FP32 score yet: iterate the tuner and report the FP32 trial first")
        return study_result(self.config, self.study, self.fp32_score)


def _first_calibration_feed(config: StudyConfig, calibrated: pipeline.Calibrated) -> dict[str, np.ndarray]:
    """A batch-1 feed for latency, from the calibration data (the test data may live elsewhere)."""
    from autoquant.data import open_reader

    reader = open_reader(config.calibration, list(calibrated.graph.inputs), limit=1)
    return next(iter(reader.batches(1))).inputs
