"""Evaluate stage: score FP32 and INT8 models on the test set with ONNX Runtime.

The FP32 outputs on the test set are computed once and stored in the cache (keyed like the
statistics: model hash, data fingerprint, sample count) and read back a batch at a time
(`ReferenceOutputs`); the FP32 score is replayed from them, or taken from
``search.fp32_score``. Each INT8 evaluation then runs the INT8 model once over the test set, batch
by batch, and reports the decay with a bootstrap 95 % confidence interval over test samples.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from autoquant.common import ProgressFn
from autoquant.config import StudyConfig
from autoquant.data import Batch, DataReader, open_reader
from autoquant.engine.graph import ModelGraph
from autoquant.errors import AutoquantError, ConfigError, DataError, UserCodeError
from autoquant.evaluation._fp32 import ReferenceOutputs, reference_folder
from autoquant.evaluation._reference import StoredArray
from autoquant.evaluation._resolution import Resolution, estimate_resolution, per_sample_scores
from autoquant.evaluation._sessions import run_batch, session_or_error
from autoquant.objectives import (
    Objective,
    create_objective,
    needs_labels,
    needs_reference,
    objective_name,
    supports_resampling,
)

logger = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000
#: Sequential evaluation: looks at the decay after each tenth of the test set; each look stops
#: the trial when the decay's lower bound (bootstrap mean - Z x std, Z for 0.1 % one-sided) is
#: over the budget, so that a trial within budget is stopped with at most 1 % chance (Bonferroni).
LOOKS, LOOK_RESAMPLES, LOOK_Z = 10, 200, 3.09


@dataclass(frozen=True)
class Evaluation:
    """The score of one model and its decay against FP32.

    Attributes:
        score: The objective's score of the evaluated model.
        fp32_score: The FP32 score it is compared with.
        decay: ``fp32_score - score`` (absolute) or that divided by ``fp32_score`` (relative).
        decay_ci: Bootstrap 95 % interval of the decay (2.5th and 97.5th percentiles of 1000
            resamples of the test samples), or None when the objective cannot resample.
        samples: Test samples evaluated.
        seconds: Wall time of the inference loop.
        pruned: The evaluation stopped early, its decay certainly over the budget; ``score`` and
            ``decay`` are those of the first ``samples`` samples.
        decay_bound: With ``search.budget_confidence`` c, the upper bound of the decay's one-sided
            interval at level c (its 100 c-th bootstrap percentile), which must be within budget.
    """

    score: float
    fp32_score: float
    decay: float
    decay_ci: tuple[float, float] | None
    samples: int
    seconds: float
    pruned: bool = False
    decay_bound: float | None = None


def compute_decay(fp32: float, score: float, mode: str) -> float:
    """Accuracy decay: absolute ``fp32 - score`` or relative ``(fp32 - score) / fp32``."""
    if mode == "relative":
        if fp32 == 0:
            raise DataError("relative decay needs a non-zero FP32 score; use search.decay: absolute")
        return (fp32 - score) / abs(fp32)
    return fp32 - score


def _guarded(name: str, call: Callable[..., object], *args: object) -> object:
    """Call objective code; anything but an autoquant error becomes a `UserCodeError`."""
    try:
        return call(*args)
    except AutoquantError:
        raise
    except Exception as exc:
        raise UserCodeError(
            f"the objective {name!r} raised {type(exc).__name__}: {exc}", traceback.format_exc()
        ) from None


def _check_score(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise DataError(f"the objective returned a non-finite {what} score ({value}); check the objective")
    return float(value)


class Evaluator:
    """Scores models on a study's test set against the (cached) FP32 reference.

    Args:
        config: The study config (``test``, ``search.decay``, ``search.fp32_score``, ``model.outputs``).
        graph: The prepared model.
        cache_dir: Folder for the FP32 reference outputs, or None.
        data_fingerprint: Hash of the test data, for the cache key.
    """

    def __init__(
        self, config: StudyConfig, graph: ModelGraph, cache_dir: Path | None, data_fingerprint: str
    ) -> None:
        self.config = config
        self.graph = graph
        test = config.test
        if test.source is None:
            raise ConfigError("test.source is required to evaluate; point it at the test data")
        self.reader: DataReader = open_reader(test, list(graph.inputs), limit=test.test_iterations)
        self.has_labels = self._first_batch_has_labels()
        self.output_names = self._output_names()
        self.objective_name = test.objective
        probe = self._new_objective()
        self.objective_label = objective_name(probe)
        self._needs_reference = needs_reference(probe)
        if needs_labels(probe) and not self.has_labels:
            raise ConfigError(
                f"test.objective {test.objective!r} needs labels; set test.labels or use objective: agreement"
            )
        folder = reference_folder(cache_dir, graph, data_fingerprint, test.test_iterations, self.output_names)
        self._fp32_outputs = ReferenceOutputs(
            graph, self.reader, self._batches, self.output_names, config.model.output_batch_axes, folder
        )
        self._fp32: Objective | None = None
        self.fp32_score: float | None = config.search.fp32_score

    def _output_names(self) -> list[str]:
        wanted = list(self.config.model.outputs) or list(self.graph.outputs)
        unknown = sorted(set(wanted) - set(self.graph.outputs))
        if unknown:
            raise ConfigError(
                f"model.outputs: {', '.join(unknown)} is not an output of the model; "
                f"its outputs are: {', '.join(self.graph.outputs)}"
            )
        return wanted

    def _new_objective(self) -> Objective:
        return create_objective(
            self.objective_name, has_labels=self.has_labels, decode=self.config.test.decode
        )

    def _first_batch_has_labels(self) -> bool:
        batch = next(iter(self.reader.batches(1)))
        return batch.labels is not None

    def _batches(self) -> Iterator[Batch]:
        return self.reader.batches(self.graph.batch_size(self.config.test.batch_size))

    # ------------------------------------------------------------------ FP32 reference

    def reference(
        self, progress: ProgressFn | None = None, threads: int = 0
    ) -> Sequence[np.ndarray | StoredArray]:
        """FP32 outputs over the test set (one array per output, samples first), computed with
        ``threads`` intra-op threads (0: onnxruntime's default).

        With a cache folder they are stored there a batch at a time and read back by slices
        (`StoredArray`), so they never sit in memory whole.
        """
        return self._fp32_outputs.arrays(progress, threads)

    def batch_axes(self, session: ort.InferenceSession | None = None) -> list[int]:
        """The batch axis of each evaluated output (``model.output_batch_axes``, else found).

        Raises:
            ConfigError: An output's batch axis cannot be told (see `find_batch_axes`).
        """
        return self._fp32_outputs.batch_axes(session)

    def fp32_objective(self, progress: ProgressFn | None = None, threads: int = 0) -> Objective:
        """The objective replayed over the FP32 reference outputs (see :meth:`reference`)."""
        if self._fp32 is None:
            reference = self.reference(progress, threads)
            objective = self._new_objective()
            start = 0
            for n, labels in self._label_batches():
                outputs = [r[start : start + n] for r in reference]
                _guarded(
                    self.objective_name,
                    objective.update,
                    outputs,
                    labels,
                    outputs if self._needs_reference else None,
                )
                start += n
            self._fp32 = objective
            if self.fp32_score is None:
                self.fp32_score = _check_score(_guarded(self.objective_name, objective.score), "FP32")
        return self._fp32

    def _label_batches(self) -> Iterator[tuple[int, list | None]]:
        """Sample count and labels (None when unlabelled) per batch; the inputs are read and dropped."""
        for batch in self._batches():
            yield len(batch.sample_ids), batch.labels

    # ------------------------------------------------------------------ INT8 evaluation

    def evaluate(
        self,
        model: onnx.ModelProto | bytes | Path | ort.InferenceSession,
        progress: ProgressFn | None = None,
        prune: bool = False,
    ) -> Evaluation:
        """Score ``model`` (or a session built for it) on the test set and compare it with FP32.

        With ``prune``, the decay is looked at after each tenth of the test set (`LOOKS`),
        and the evaluation stops when it is certainly over ``search.accept_int8_decay``; a model
        within budget is always scored on the whole test set.

        Raises:
            DataError: Outputs that do not fit the objective, or a non-finite score.
            EvaluationError: onnxruntime cannot load or run the model.
            UserCodeError: A user objective raised.
        """
        fp32 = self.fp32_objective()
        reference = self.reference()
        session = session_or_error(model, "model to evaluate")
        axes = self.batch_axes()
        objective = self._new_objective()
        start, seconds = 0, 0.0
        total = len(self.reader)
        prune = prune and supports_resampling(objective) and supports_resampling(fp32)
        looks = iter(range(1, LOOKS)) if prune else iter(())
        next_look = next(looks, None)
        for batch in self._batches():
            began = time.perf_counter()
            outputs = run_batch(session, self.output_names, batch, axes)
            seconds += time.perf_counter() - began
            n = len(batch.sample_ids)
            ref = [r[start : start + n] for r in reference] if self._needs_reference else None
            _guarded(self.objective_name, objective.update, outputs, batch.labels, ref)
            start += n
            if progress is not None:
                progress(n)
            if next_look is not None and start >= total * next_look / LOOKS and start < total:
                while next_look is not None and start >= total * next_look / LOOKS:
                    next_look = next(looks, None)
                if self._certainly_over(fp32, objective, start):
                    return self._partial(objective, fp32, start, seconds)
        score = _check_score(_guarded(self.objective_name, objective.score), "INT8")
        assert self.fp32_score is not None
        decay = compute_decay(self.fp32_score, score, self.config.search.decay)
        ci, bound = (
            self._bootstrap(fp32, objective, start) if supports_resampling(objective) else (None, None)
        )
        return Evaluation(score, self.fp32_score, decay, ci, start, seconds, decay_bound=bound)

    # ------------------------------------------------------------------ the Scorer protocol

    def reference_score(
        self, fp32: object, stored: float | None, progress: ProgressFn | None = None, threads: int = 0
    ) -> float:
        """The FP32 score on the test set (replayed from the cached reference outputs; ``stored``
        is not needed: the cache makes it as cheap and exact); ``threads`` as in :meth:`reference`."""
        self.fp32_objective(progress, threads)
        assert self.fp32_score is not None
        return self.fp32_score

    def score(self, candidate: object, progress: ProgressFn | None = None, prune: bool = False) -> Evaluation:
        """`evaluate` the candidate's session (see `autoquant.search.Scorer`)."""
        return self.evaluate(candidate.session, progress, prune)  # type: ignore[attr-defined]

    def _resampled_decays(self, fp32: Objective, int8: Objective, samples: int, count: int) -> np.ndarray:
        rng = np.random.default_rng(self.config.search.seed)
        fixed = self.config.search.fp32_score
        decays = []
        for _ in range(count):
            indices = rng.integers(0, samples, samples)
            base = fixed if fixed is not None else _guarded(self.objective_name, fp32.score, indices)
            score = _guarded(self.objective_name, int8.score, indices)
            decays.append(compute_decay(base, score, self.config.search.decay))
        return np.asarray(decays, np.float64)

    def _certainly_over(self, fp32: Objective, int8: Objective, samples: int) -> bool:
        """Whether the decay on the first ``samples`` samples is over the budget beyond doubt."""
        decays = self._resampled_decays(fp32, int8, samples, LOOK_RESAMPLES)
        return bool(decays.mean() - LOOK_Z * decays.std() > self.config.search.accept_int8_decay)

    def _partial(self, int8: Objective, fp32: Objective, samples: int, seconds: float) -> Evaluation:
        """The pruned evaluation: the score and decay of the first ``samples`` samples."""
        first = np.arange(samples)
        score = _check_score(_guarded(self.objective_name, int8.score, first), "INT8")
        fixed = self.config.search.fp32_score
        base = fixed if fixed is not None else _guarded(self.objective_name, fp32.score, first)
        decay = compute_decay(base, score, self.config.search.decay)
        logger.debug("stopped after %d samples: decay %+.4f is certainly over the budget", samples, decay)
        ci, bound = self._bootstrap(fp32, int8, samples)
        return Evaluation(score, base, decay, ci, samples, seconds, pruned=True, decay_bound=bound)

    def _bootstrap(
        self, fp32: Objective, int8: Objective, samples: int
    ) -> tuple[tuple[float, float], float | None]:
        """The decay's 95 % interval and, with ``search.budget_confidence``, its one-sided upper bound."""
        decays = self._resampled_decays(fp32, int8, samples, BOOTSTRAP_RESAMPLES)
        low, high = np.percentile(decays, [2.5, 97.5])
        level = self.config.search.budget_confidence
        bound = float(np.percentile(decays, 100.0 * level)) if level is not None else None
        return (float(low), float(high)), bound

    def resolution(self, level: float) -> Resolution | None:
        """How small a decay this test set resolves at ``level`` (see `estimate_resolution`), from
        the FP32 per-sample scores; None when the objective cannot score single samples or its
        FP32 scores do not vary."""
        fp32 = self.fp32_objective()
        if not supports_resampling(fp32):
            return None
        assert self.fp32_score is not None
        search = self.config.search

        def score(indices: np.ndarray) -> float:
            return float(_guarded(self.objective_name, fp32.score, indices))

        try:
            scores = per_sample_scores(score, len(self.reader), search.seed)
        except AutoquantError as exc:
            logger.debug("no resolution estimate: the objective cannot score one sample (%s)", exc)
            return None
        return estimate_resolution(
            scores,
            len(self.reader),
            level,
            search.accept_int8_decay,
            self.fp32_score,
            search.decay == "relative",
            getattr(fp32, "binary_scores", None),
        )
