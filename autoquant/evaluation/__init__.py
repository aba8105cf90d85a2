"""Accuracy and speed of a model: the evaluator (objective, bootstrap interval, sequential stop)
against cached FP32 reference outputs, the test set's resolution, latency timing and per-node
profiles.
"""

from autoquant.evaluation._accuracy import Evaluation, Evaluator, compute_decay
from autoquant.evaluation._latency import (
    BUSY_TOLERANCE,
    SELECTION_THREADS,
    THREADS,
    LatencyTimer,
    ThreadLabel,
    compare_latency,
    is_busy,
    latency_timers,
    load_average,
    trial_budget,
)
from autoquant.evaluation._reference import StoredArray, read_reference, write_reference
from autoquant.evaluation._resolution import DEFAULT_LEVEL, Resolution, estimate_resolution
from autoquant.evaluation._sessions import session_or_error

__all__ = [
    "BUSY_TOLERANCE",
    "DEFAULT_LEVEL",
    "SELECTION_THREADS",
    "THREADS",
    "Evaluation",
    "Evaluator",
    "LatencyTimer",
    "Resolution",
    "StoredArray",
    "ThreadLabel",
    "compare_latency",
    "compute_decay",
    "estimate_resolution",
    "is_busy",
    "latency_timers",
    "load_average",
    "read_reference",
    "session_or_error",
    "trial_budget",
    "write_reference",
]
