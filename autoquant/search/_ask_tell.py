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

The study is the one ``autoquant tune`` runs, phases, resume, tracking and outputs alike: the
driver (:func:`autoquant.search.tune`) runs on a background thread with the Tuner as its
:class:`~autoquant.search.Scorer`, and each score it needs is handed to the loop above. Without
``search.fp32_score`` (or a score a resumed study stored) the first trial is the FP32 model itself
(``trial.fp32`` is True); its score is the reference for the decay.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from autoquant.common import ProgressFn
from autoquant.config import StudyConfig
from autoquant.engine.graph import session_for
from autoquant.errors import DataError, TrialReturned
from autoquant.evaluation import Evaluation, compute_decay
from autoquant.search._space import Value
from autoquant.search._summary import TuneResult, stored_result
from autoquant.search._trial import Candidate

logger = logging.getLogger(__name__)


@dataclass
class Trial:
    """One model to evaluate in the user's code.

    Attributes:
        number: Optuna trial number (-1 for the FP32 reference).
        params: The quantization choices.
        fp32: True for the FP32 reference model.
        model: The model to evaluate (the prepared FP32 model's path for the reference).
        score: What :meth:`report` was given.
    """

    number: int
    params: dict[str, Value]
    fp32: bool
    model: onnx.ModelProto | object
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


class _Unscored(DataError):
    """The user's loop ended a trial without reporting a score."""


class HandingScorer:
    """The :class:`~autoquant.search.Scorer` for scores computed outside autoquant: each model is
    handed out as a :class:`Trial` by :meth:`_hand`, which waits for its score.

    Args:
        config: The study config.
    """

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self._fp32_score: float | None = None

    def _hand(self, trial: Trial) -> float:
        """Hand the trial out and return its score.

        Raises:
            TrialReturned: It came back without a score (handed out again, or failed and queued).
        """
        raise NotImplementedError

    def reference_score(self, fp32: Candidate, stored: float | None, progress: ProgressFn) -> float:
        """``search.fp32_score``, the score a resumed study stored, or the one handed back for the
        FP32 model."""
        known = self.config.search.fp32_score if self.config.search.fp32_score is not None else stored
        session = None
        while known is None:
            session = session or session_for(fp32.model)
            try:
                known = self._hand(Trial(-1, {}, True, fp32.model, session))
            except TrialReturned as returned:
                logger.info("the FP32 trial: %s; it is handed out again", returned)
        self._fp32_score = known
        return known

    def score(self, candidate: Candidate, progress: ProgressFn, prune: bool = False) -> Evaluation:
        """Hand the candidate out and wait for its score (never pruned: the test set is scored whole)."""
        began = time.perf_counter()
        session = candidate.session or session_for(candidate.model)
        score = self._hand(Trial(candidate.number, candidate.params, False, candidate.model, session))
        assert self._fp32_score is not None
        decay = compute_decay(self._fp32_score, score, self.config.search.decay)
        return Evaluation(score, self._fp32_score, decay, None, 0, time.perf_counter() - began)


class Tuner(HandingScorer):
    """Iterate over trials; see the module docstring.

    Args:
        config: The study config; ``test`` is not used (the user evaluates).
        fresh: Delete a stored study of the same name first.
    """

    def __init__(self, config: StudyConfig, fresh: bool = False) -> None:
        super().__init__(config)
        self.fresh = fresh
        self._handed: queue.Queue[Trial | None] = queue.Queue()  # driver -> user
        self._told: queue.Queue[float | None] = queue.Queue()  # user -> driver
        self._stop = threading.Event()
        self._result: TuneResult | None = None
        self._error: BaseException | None = None

    # ---- the user's side --------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Trial]:
        from autoquant.search._study import tune

        def drive() -> None:
            try:
                self._result = tune(self.config, fresh=self.fresh, stop=self._stop.is_set, scorer=self)
            except BaseException as exc:
                self._error = exc
            finally:
                self._handed.put(None)

        driver = threading.Thread(target=drive, name="autoquant-tuner", daemon=True)
        driver.start()
        trial: Trial | None = None
        try:
            while (trial := self._handed.get()) is not None:
                yield trial
                handed, trial = trial, None
                self._told.put(handed.score)
                if handed.score is None:
                    raise _Unscored(f"trial {handed.number} ended without trial.report(score)")
        finally:
            if trial is not None:  # the loop left early (break, an exception): stop after this one
                self._stop.set()
                self._told.put(trial.score)
            driver.join()
        if self._error is not None and not isinstance(self._error, _Unscored):
            raise self._error

    def result(self) -> TuneResult:
        """The study so far: the best trial by the selection rule and every completed one."""
        if self._result is not None:
            return self._result
        return stored_result(self.config)

    # ---- the driver's side ------------------------------------------------------------------------

    def _hand(self, trial: Trial) -> float:
        self._handed.put(trial)
        score = self._told.get()
        if score is None:
            self._stop.set()
            raise _Unscored(f"trial {trial.number} ended without trial.report(score)")
        return score
