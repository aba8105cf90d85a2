"""Latency at batch 1, measured against the FP32 model and within a time budget.

Every INT8 latency is a ratio to the FP32 model's, timed run for run in turn, so that what the
machine does meanwhile (frequency, other load) slows both alike and cancels. The number of runs
adapts: timing stops once the median ratio is known to about 2 % or the measurement's budget is
spent, and never before a few runs. A 1 ms CNN gets dozens of runs and several sessions in a
fraction of a second; a transformer whose run takes a second gets a few runs in one session, so
timing costs a bounded share of a trial (`trial_budget`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from autoquant.common import release_memory
from autoquant.errors import EvaluationError, one_line
from autoquant.evaluation._sessions import session_or_error


class ThreadLabel(StrEnum):
    """The label of a thread count latency is measured at, as studies store it."""

    ONE = "1"
    DEFAULT = "default"


#: The thread counts latency is measured at: label -> onnxruntime's ``intra_op_num_threads``
#: (0: its default, one thread per physical core). The selection uses the first.
THREADS = {ThreadLabel.ONE.value: 1, ThreadLabel.DEFAULT.value: 0}
SELECTION_THREADS = next(iter(THREADS))

#: Above this spread of repeated FP32 timings (the latency tolerance, 0.25 = 25 %) the machine is
#: busy: the latencies and speedups measured on it are uncertain.
BUSY_TOLERANCE = 0.25


def load_average() -> float | None:
    """The machine's 1-minute load average now, or None where the OS does not tell it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def is_busy(tolerance: float | None) -> bool:
    """Whether repeated FP32 timings spread by more than :data:`BUSY_TOLERANCE`."""
    return tolerance is not None and tolerance > BUSY_TOLERANCE


#: Timed runs (or pairs of runs) at least and at most, per measurement.
LEAST_RUNS, MOST_RUNS = 3, 50
#: Timing stops early once the median's 95 % interval is within this share of it.
PRECISION = 0.02
#: The share of a trial's own time that its latency measurement may take, and the least it gets.
TRIAL_SHARE, LEAST_BUDGET_S = 0.1, 0.5


#: A FP32 model at least this large has its timing session opened only while it is timed.
KEEP_SESSION_BYTES = 64 * 2**20


def _model_bytes(model: object) -> int:
    """The size of a model: its bytes, or its file's and external data files' beside it."""
    if isinstance(model, onnx.ModelProto):
        return model.ByteSize()
    if isinstance(model, bytes):
        return len(model)
    if isinstance(model, str | Path):
        path = Path(model)
        return sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*") if f.is_file())
    return 0  # a session: the caller's to keep


def trial_budget(trial_seconds: float) -> float:
    """Seconds a trial's latency measurement may take, all thread counts together: a tenth of what
    the trial took to quantize and score, and at least half a second."""
    return max(LEAST_BUDGET_S, TRIAL_SHARE * trial_seconds)


def _warmup_runs(run_ms: float) -> int:
    """Untimed runs first: three for a fast model, one for a model whose run takes 50 ms or more."""
    return 1 if run_ms >= 50.0 else 3


def _settled(values: list[float]) -> bool:
    """Whether the median of ``values`` is known to `PRECISION` (a robust standard error from
    the median absolute deviation; a median's is about 1.25 times a mean's)."""
    if len(values) < 10:
        return False
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(np.asarray(values) - median)))
    return 1.96 * 1.2533 * spread / math.sqrt(len(values)) <= PRECISION * abs(median)


def _timed(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    began = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - began


def measure_latency(
    model: onnx.ModelProto | bytes | Path | ort.InferenceSession,
    feed: dict[str, np.ndarray],
    repeats: int = MOST_RUNS,
    warmup: int | None = None,
    threads: int = 0,
    budget_s: float = math.inf,
) -> float:
    """Median wall time in milliseconds of one run on ``feed`` (batch 1), in a session with
    ``threads`` intra-op threads (0: onnxruntime's default; ignored for a session).

    Runs ``warmup`` untimed runs (None: by the first run's time), then at most ``repeats`` timed
    runs, stopping once the median is settled or ``budget_s`` is spent (after at least
    `LEAST_RUNS`, or ``repeats`` if fewer).

    Raises:
        EvaluationError: onnxruntime cannot load or run the model.
    """
    session = session_or_error(model, "model to time", threads)
    began = time.perf_counter()
    times: list[float] = []
    try:
        first = _timed(session, feed)
        for _ in range((_warmup_runs(first * 1000.0) if warmup is None else warmup) - 1):
            session.run(None, feed)
        while len(times) < repeats:
            times.append(_timed(session, feed))
            enough = len(times) >= min(LEAST_RUNS, repeats)
            if enough and (time.perf_counter() - began > budget_s or _settled(times)):
                break
    except Exception as exc:
        raise EvaluationError(
            f"onnxruntime cannot run the model to measure its latency ({one_line(exc)})"
        ) from exc
    return float(np.median(times) * 1000.0)


class LatencyTimer:
    """Times models against the FP32 model, run for run in turn. Every session, the FP32 model's
    and the timed models', has ``threads`` intra-op threads.

    Args:
        fp32_model: The FP32 model (the reference every latency is relative to).
        feed: One batch-1 input.
        budget_s: Seconds one comparison may take unless told otherwise (sessions included).
        threads: onnxruntime's ``intra_op_num_threads`` (0: its default, one per physical core).

    Raises:
        EvaluationError: onnxruntime cannot load or run the FP32 model.
    """

    def __init__(
        self,
        fp32_model: onnx.ModelProto | bytes | Path,
        feed: dict[str, np.ndarray],
        budget_s: float = LEAST_BUDGET_S,
        threads: int = 0,
    ) -> None:
        self.feed = feed
        self.threads = threads
        self.budget_s = budget_s
        self._fp32_model = fp32_model
        began = time.perf_counter()
        self._reference: ort.InferenceSession | None = session_or_error(
            fp32_model, "FP32 model to time against", threads
        )
        self.session_s = time.perf_counter() - began  # what a new session of the model costs
        self.fp32_ms = measure_latency(self._reference, feed, repeats=10, budget_s=budget_s)
        # A large model's session is opened for each comparison and closed after it, rather than
        # held for the whole study beside everything else.
        self.keep_reference = _model_bytes(fp32_model) < KEEP_SESSION_BYTES
        self.release()

    @property
    def reference(self) -> ort.InferenceSession:
        """The FP32 model's session (opened again if `release` closed it)."""
        if self._reference is None:
            self._reference = session_or_error(self._fp32_model, "FP32 model to time against", self.threads)
        return self._reference

    def release(self) -> None:
        """Close the FP32 session of a large model (see ``keep_reference``) until it is needed."""
        if not self.keep_reference:
            self._reference = None
            release_memory()

    def ratio(self, session: ort.InferenceSession, budget_s: float | None = None) -> float:
        """Median latency of ``session`` divided by the FP32 model's, timed in turn, the pair
        count adapting to the noise within ``budget_s`` (None: the timer's).

        Raises:
            EvaluationError: onnxruntime cannot run the model.
        """
        budget = self.budget_s if budget_s is None else budget_s
        ratios: list[float] = []
        try:
            for _ in range(_warmup_runs(self.fp32_ms)):
                session.run(None, self.feed)
                self.reference.run(None, self.feed)
            began = time.perf_counter()
            while len(ratios) < MOST_RUNS:
                ratios.append(_timed(session, self.feed) / max(_timed(self.reference, self.feed), 1e-12))
                if len(ratios) >= LEAST_RUNS and (time.perf_counter() - began > budget or _settled(ratios)):
                    break
        except Exception as exc:
            raise EvaluationError(
                f"onnxruntime cannot run the model to measure its latency ({one_line(exc)})"
            ) from exc
        return float(np.median(ratios))

    def _sessions(self, budget: float, most: int) -> int:
        """How many new sessions a comparison within ``budget`` seconds can afford: each costs its
        creation, its warm-up and at least `LEAST_RUNS` timed pairs."""
        pair_s = 2.0 * self.fp32_ms / 1000.0
        one = self.session_s + (_warmup_runs(self.fp32_ms) + LEAST_RUNS) * pair_s
        return int(max(1, min(most, budget // max(one, 1e-9))))

    def model_ratio(
        self, model: onnx.ModelProto | bytes | Path, sessions: int = 3, budget_s: float | None = None
    ) -> float:
        """`ratio` of a model, the median over up to ``sessions`` new sessions of it (a
        session's memory layout and threads make its speed differ from another's of the same
        model), as many as ``budget_s`` (None: the timer's) affords.

        Raises:
            EvaluationError: onnxruntime cannot load or run the model.
        """
        budget = self.budget_s if budget_s is None else budget_s
        count = self._sessions(budget, sessions)
        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        ratios = []
        for _ in range(count):
            began = time.perf_counter()
            session = session_or_error(data, "model to time", self.threads)
            share = budget / count - (time.perf_counter() - began)
            ratios.append(self.ratio(session, max(share, 0.0)))
            del session
        self.release()
        return float(np.median(ratios))

    def tolerance(self, blocks: int = 3, floor: float = 0.25, budget_s: float | None = None) -> float:
        """How far the ratio of the FP32 model to itself strays: the spread of the ratios of up to
        ``blocks`` new sessions of it, ``max - min``, at least ``floor`` (each trial builds a new
        session too). Trials whose latencies differ by less are ties for the selection."""
        budget = self.budget_s if budget_s is None else budget_s
        count = max(2, self._sessions(budget, blocks))
        ratios = []
        for _ in range(count):
            session = session_or_error(self._fp32_model, "FP32 model to time", self.threads)
            ratios.append(self.ratio(session, budget / count))
            del session
        self.release()
        return max(floor, max(ratios) - min(ratios))


def latency_timers(
    fp32_model: onnx.ModelProto | bytes | Path, feed: dict[str, np.ndarray], budget_s: float = LEAST_BUDGET_S
) -> dict[str, LatencyTimer]:
    """One `LatencyTimer` per thread count of `THREADS`, by its label.

    Raises:
        EvaluationError: onnxruntime cannot load or run the FP32 model.
    """
    return {label: LatencyTimer(fp32_model, feed, budget_s, threads) for label, threads in THREADS.items()}


@dataclass(frozen=True)
class LatencyComparison:
    """An INT8 model's batch-1 latency against the FP32 model's at one thread count.

    Attributes:
        threads: onnxruntime's ``intra_op_num_threads`` (0: its default).
        fp32_ms: The FP32 model's median latency.
        int8_ms: The INT8 model's: the FP32 latency times their ratio timed in turn.
    """

    threads: int
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        """FP32 ms / INT8 ms: above 1, the INT8 model is faster."""
        return self.fp32_ms / max(self.int8_ms, 1e-12)


def compare_latency(
    fp32_model: onnx.ModelProto | bytes | Path,
    int8_model: onnx.ModelProto | bytes | Path,
    feed: dict[str, np.ndarray],
    budget_s: float = LEAST_BUDGET_S,
) -> dict[str, LatencyComparison]:
    """Both models timed the same way, in this process, at each thread count of `THREADS`
    (the way a study times its trials: `LatencyTimer.model_ratio`).

    Raises:
        EvaluationError: onnxruntime cannot load or run a model.
    """
    found = {}
    for label, timer in latency_timers(fp32_model, feed, budget_s).items():
        ratio = timer.model_ratio(int8_model)
        found[label] = LatencyComparison(timer.threads, timer.fp32_ms, ratio * timer.fp32_ms)
    return found
