"""Which trial is best, and which trials no other beats on every count (the Pareto front).

The selection rule, for trials within budget: the fewest compute layers (Conv, ConvTranspose,
Gemm, MatMul) that onnxruntime runs in FP32 (its optimized graph: a layer counts as INT8 only
when an integer kernel runs it, so a quantized ConvTranspose without one counts), then the lowest latency at one thread, latencies within the measured
noise being ties that the smaller decay breaks. Ops left in float for speed
(``quantization.float_ops``) or for accuracy that are not compute layers (the element-wise ops of
a decomposed LayerNorm) do not count. Over budget: the smallest decay first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Selectable(Protocol):
    """What the selection reads of a trial (:class:`autoquant.search.TrialOutcome`)."""

    number: int
    decay: float
    latency_ms: float
    within_budget: bool
    fp32_compute: tuple[str, ...]


T = TypeVar("T", bound=Selectable)


def ranked(outcomes: Sequence[T], latency_tolerance: float = 0.0) -> list[T]:
    """Outcomes best first, by the selection rule.

    Within budget: fewer FP32 compute layers first; among as many, the trials sorted by latency
    form tiers, each a run of latencies within ``latency_tolerance`` (relative) of the one before:
    a tier's latencies are ties, which the smaller decay and then the lower trial number break.
    Over budget: smaller decay, fewer FP32 compute layers, lower latency, lower number.
    """
    within = sorted(
        (o for o in outcomes if o.within_budget), key=lambda o: (len(o.fp32_compute), o.latency_ms)
    )
    order: list[T] = []
    tier: list[T] = []
    for o in within:  # tiers: runs of latencies each within the tolerance of the one before
        if tier and (
            len(o.fp32_compute) != len(tier[-1].fp32_compute)
            or o.latency_ms > tier[-1].latency_ms * (1.0 + latency_tolerance)
        ):
            order += sorted(tier, key=lambda t: (t.decay, t.number))
            tier = []
        tier.append(o)
    order += sorted(tier, key=lambda t: (t.decay, t.number))
    over = [o for o in outcomes if not o.within_budget]
    return order + sorted(over, key=lambda o: (o.decay, len(o.fp32_compute), o.latency_ms, o.number))


def best_outcome(outcomes: Sequence[T], latency_tolerance: float = 0.0) -> T | None:
    """The best outcome by :func:`ranked`, or None without outcomes."""
    order = ranked(outcomes, latency_tolerance)
    return order[0] if order else None


def objectives(outcome: Selectable) -> tuple[float, float, int]:
    """The three counts of the Pareto front, each the lower the better: decay, latency (ms, one
    thread), FP32 compute layers."""
    return (outcome.decay, outcome.latency_ms, len(outcome.fp32_compute))


def pareto_front(outcomes: Sequence[T]) -> list[T]:
    """The outcomes that no other dominates (as good on the three :func:`objectives` and better on
    one), fastest first. Outcomes equal on all three are all on the front."""

    def dominates(a: tuple, b: tuple) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    scored = [(objectives(o), o) for o in outcomes]
    front = [o for s, o in scored if not any(dominates(t, s) for t, _ in scored)]
    return sorted(front, key=lambda o: (o.latency_ms, o.decay, o.number))
