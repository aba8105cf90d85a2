"""Threshold methods: the plugins that choose the threshold of one side of a tensor.

Pure numpy. Each method is a :class:`ThresholdMethod` object registered by name in
:data:`autoquant.registry.THRESHOLD_METHODS` with :func:`register_method`; it carries its own
checks (:meth:`ThresholdMethod.check`) and behaviour (:meth:`ThresholdMethod.threshold`):

* ``max`` and ``percentile`` give a threshold directly;
* ``kl``, ``symkl``, ``jsd`` and ``mse`` score candidate thresholds (bin counts ``i``, threshold
  ``i * width``) and the lowest score wins. Without ratio search the candidates are every bin
  count (TensorRT's entropy calibration); with ratio search they are ``base * ratio`` for
  ``ratio`` in ``[start_ratio, end_ratio]``, ``base`` being the ``max_percentile`` threshold.

Divergences follow TensorRT's entropy calibration: the reference distribution ``P`` is the first
``i`` bins with the outliers added to the last one; the candidate ``Q`` merges those ``i`` bins
into ``levels`` groups and spreads each group evenly over its non-empty bins. KL and symmetric KL
are computed for all candidates at once from prefix sums over the groups; no per-candidate loop.

Adding a method is a change to this file: a :class:`ThresholdMethod` subclass, or a score
function, decorated with :func:`register_method`. The conformance test
(``tests/engine/test_threshold_methods.py``) runs over every registered method.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from autoquant.config import QuantizationConfig
from autoquant.registry import THRESHOLD_METHODS, Registry

logger = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
_COARSE_STEP = 16  # quadratic methods: scan every 16th candidate, then refine around the best


@dataclass(frozen=True)
class Side:
    """One side of a tensor: a fine histogram of magnitudes, its bin width, the largest magnitude
    seen (> 0) and the quantization levels over ``[0, threshold]`` (128 for int8, 256 for uint8)."""

    fine: np.ndarray
    fine_width: float
    peak: float
    levels: int


class ThresholdMethod(abc.ABC):
    """A way to choose a threshold from a :class:`Side`; registered under a ``quantization.method`` name.

    Attributes:
        ratio_search: Whether ``quantization.ratio_search`` may scan candidates around the
            ``max_percentile`` threshold with this method (only methods that score candidates can).
        trt_calibrator: The TensorRT calibrator closest to this method, named in the header of
            ``calibration.cache``.
    """

    ratio_search: bool = False
    trt_calibrator: str = "EntropyCalibration2"

    def check(self, config: QuantizationConfig) -> None:
        """Refuse a config this method cannot honour; called when the config is validated.

        Raises:
            ValueError: ``ratio_search`` is on and this method does not score candidates.
        """
        if config.ratio_search and not self.ratio_search:
            scorers = ", ".join(name for name, method in METHODS.items() if method.ratio_search)
            raise ValueError(
                f"ratio_search needs a divergence method ({scorers}), got method={config.method!r}"
            )

    @abc.abstractmethod
    def threshold(self, side: Side, config: QuantizationConfig) -> float:
        """The threshold of ``side``: finite, positive, deterministic and within the histogram's
        range (up to ``end_ratio`` times the percentile threshold with ratio search)."""


METHODS: Registry[ThresholdMethod] = THRESHOLD_METHODS


def register_method(name: str, **options: Any) -> Callable[[Any], Any]:
    """Register a threshold method under ``name`` (a ``quantization.method`` value).

    Decorates either a :class:`ThresholdMethod` subclass (registered as ``cls(**options)``) or a
    score function ``score(counts, candidates, levels) -> scores`` (registered as
    ``ScoredMethod(score, **options)``): ``counts`` is a histogram of magnitudes, ``candidates``
    integer bin counts, and the lowest score wins.
    """

    def decorator(plugin: Any) -> Any:
        method = plugin(**options) if isinstance(plugin, type) else ScoredMethod(plugin, **options)
        METHODS.add(name, method)
        return plugin

    return decorator


# --------------------------------------------------------------------------- histograms


def coarse_histogram(fine: np.ndarray, fine_width: float, bins: int) -> tuple[np.ndarray, float]:
    """Re-bin the used part of a fine magnitude histogram into ``bins`` bins.

    The coarse histogram spans ``[0, U * fine_width)`` where ``U`` is one past the last non-empty
    fine bin (TensorRT spans ``[0, max|x|]``). Counts are split by linear interpolation of the
    cumulative counts, which is exact when ``bins`` divides ``U``.

    Returns:
        The coarse counts (float64) and their bin width.
    """
    used = int(np.flatnonzero(fine)[-1]) + 1 if fine.any() else 1
    cumulative = np.concatenate([[0.0], np.cumsum(fine[:used], dtype=np.float64)])
    edges = np.linspace(0.0, used, bins + 1)
    coarse = np.diff(np.interp(edges, np.arange(used + 1), cumulative))
    return coarse, used * fine_width / bins


def percentile_threshold(counts: np.ndarray, width: float, percentile: float) -> float:
    """Smallest threshold below which ``percentile`` of the counts lie (interpolated within a bin)."""
    cumulative = np.cumsum(counts, dtype=np.float64)
    total = cumulative[-1]
    if total <= 0:
        return 0.0
    if percentile >= 1.0:
        return (int(np.flatnonzero(counts)[-1]) + 1) * width
    target = percentile * total
    k = int(np.searchsorted(cumulative, target, side="left"))
    below = cumulative[k - 1] if k > 0 else 0.0
    inside = counts[k]
    fraction = (target - below) / inside if inside > 0 else 1.0
    return (k + fraction) * width


def ratio_candidates(base: float, width: float, start: float, end: float, step: float) -> np.ndarray:
    """Candidate bin counts ``round(base * r / width)`` for ``r`` in ``[start, end]`` by ``step``."""
    ratios = start + step * np.arange(int(np.floor((end - start) / step + 1e-9)) + 1)
    return np.unique(np.maximum(np.rint(base * ratios / width).astype(np.int64), 1))


def percentile_base(side: Side, config: QuantizationConfig) -> float:
    """The ``max_percentile`` threshold of ``side``, at most its peak."""
    return min(percentile_threshold(side.fine, side.fine_width, config.max_percentile), side.peak)


# --------------------------------------------------------------------------- direct methods


@register_method("max")
class Max(ThresholdMethod):
    """The largest magnitude seen: nothing is clipped."""

    trt_calibrator = "MinMaxCalibration"

    def threshold(self, side: Side, config: QuantizationConfig) -> float:
        return side.peak


@register_method("percentile")
class Percentile(ThresholdMethod):
    """The magnitude below which ``max_percentile`` of the values lie."""

    trt_calibrator = "LegacyCalibration"

    def threshold(self, side: Side, config: QuantizationConfig) -> float:
        return percentile_base(side, config)


# --------------------------------------------------------------------------- scored methods


@dataclass(frozen=True)
class ScoredMethod(ThresholdMethod):
    """A method that scores candidate thresholds on a coarse histogram; the lowest score wins.

    Attributes:
        score: ``score(counts, candidates, levels) -> scores``.
        cost: ``"linear"``: every candidate is scored at once; ``"quadratic"``: O(bins) per
            candidate, so the scan is coarse-to-fine (every 16th candidate, then every candidate
            around the best three).
        zero_spike: Flatten the first bin to its neighbour before scoring, as NVIDIA's
            pytorch-quantization does: the spike of exact zeros after a ReLU would otherwise
            dominate ``P`` and push the divergences to tiny thresholds.
        below_levels: Candidates may hold fewer bins than there are quantization levels (the
            error of MSE is defined there; a divergence between ``P`` and ``Q`` is not).
    """

    score: ScoreFn
    cost: Literal["linear", "quadratic"] = "linear"
    zero_spike: bool = True
    below_levels: bool = False
    trt_calibrator: str = "EntropyCalibration2"
    ratio_search: bool = True

    def threshold(self, side: Side, config: QuantizationConfig) -> float:
        counts, width = coarse_histogram(side.fine, side.fine_width, config.bins)
        if self.zero_spike and counts.size > 1:
            counts[0] = counts[1]
        # Fewer bins than levels cannot be merged into levels groups; never go beyond the histogram.
        fewest = 1 if self.below_levels else min(side.levels, config.bins)
        if config.ratio_search:
            base = percentile_base(side, config)
            candidates = ratio_candidates(
                base, width, config.start_ratio, config.end_ratio, config.step_ratio
            )
        else:
            candidates = np.arange(fewest, config.bins + 1)
        scores = self.scan(counts, candidates, side.levels)
        if not np.isfinite(scores).any():
            logger.debug("no finite %s score; using the largest candidate", config.method)
            return float(candidates[-1] * width)
        best = int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))
        return float(max(candidates[best], fewest) * width)

    def scan(self, counts: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
        """Scores of every candidate; for quadratic methods only near the best of a coarse scan (others inf)."""
        if self.cost == "linear" or len(candidates) <= 4 * _COARSE_STEP:
            return self.score(counts, candidates, levels)
        scores = np.full(len(candidates), np.inf)
        coarse = np.unique(np.r_[np.arange(0, len(candidates), _COARSE_STEP), len(candidates) - 1])
        scores[coarse] = self.score(counts, candidates[coarse], levels)
        near = np.concatenate(
            [
                np.arange(max(0, k - _COARSE_STEP), min(len(candidates), k + _COARSE_STEP + 1))
                for k in coarse[np.argsort(scores[coarse])[:3]]
            ]
        )
        near = np.setdiff1d(near, coarse)
        scores[near] = self.score(counts, candidates[near], levels)
        return scores


def _xlogx(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    positive = x > 0
    out[positive] = x[positive] * np.log(x[positive])
    return out


def _safe_log(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    positive = x > 0
    out[positive] = np.log(x[positive])
    return out


def _pad(counts: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([counts, np.zeros(max(0, size - counts.size))]).astype(np.float64)


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])


def _kl_and_symkl(counts: np.ndarray, candidates: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) and KL(P||Q) + KL(Q||P) for every candidate ``i``, from prefix sums.

    Candidate ``i`` merges bins into ``levels`` groups of ``m = i // levels`` bins, the last group
    taking the remainder. The first ``levels - 1`` groups depend on ``m`` only, so their sums are
    computed once per distinct ``m``; the last group and the outliers are O(1) per candidate.
    With ``q = G / n`` on the ``n`` non-empty bins of a group of mass ``G``:
    ``sum c log q = sum_g C_g log(G_g / n_g)``, ``sum q log q = sum_g G_g log(G_g / n_g)`` and
    ``sum q log c = sum_g (G_g / n_g) sum_{j in g} log c_j``.
    """
    i = np.maximum(np.asarray(candidates, dtype=np.int64), levels)
    padded = _pad(counts, int(i.max()))
    cum, cum_nz, cum_log = _prefix(padded), _prefix(padded > 0), _prefix(_safe_log(padded))
    total = cum[-1]

    # Groups 0 .. levels-2, per distinct group size m.
    sizes, which = np.unique(i // levels, return_inverse=True)
    starts = sizes[:, None] * np.arange(levels - 1)[None, :]
    stops = starts + sizes[:, None]
    mass, nonzero = cum[stops] - cum[starts], cum_nz[stops] - cum_nz[starts]
    per_bin = np.divide(mass, nonzero, out=np.zeros_like(mass), where=nonzero > 0)
    head_mass_log_q = (mass * _safe_log(per_bin)).sum(axis=1)[which]
    head_q_log_c = (per_bin * (cum_log[stops] - cum_log[starts])).sum(axis=1)[which]

    # The last group [a, i) and the outliers, which P adds to its bin i - 1.
    a = sizes[which] * (levels - 1)
    last, outliers = padded[i - 1], total - cum[i]
    new_last = last + outliers
    g_last = cum[i] - cum[a]
    n_last = cum_nz[i] - cum_nz[a] + ((last == 0) & (outliers > 0))
    log_c_last = cum_log[i] - cum_log[a] + _safe_log(new_last) - _safe_log(last)
    q_last = np.divide(g_last, n_last, out=np.zeros_like(g_last), where=n_last > 0)
    log_q_last = _safe_log(q_last)

    q_total = cum[i]
    impossible = ((g_last + outliers > 0) & (q_last == 0)) | (q_total <= 0)
    q_total = np.where(impossible, 1.0, q_total)
    sum_p_log_p = _prefix(_xlogx(padded))[i] - _xlogx(last) + _xlogx(new_last)
    sum_p_log_q = head_mass_log_q + (g_last + outliers) * log_q_last
    sum_q_log_q = head_mass_log_q + g_last * log_q_last
    sum_q_log_p = head_q_log_c + q_last * log_c_last
    kl = (sum_p_log_p - sum_p_log_q) / total - np.log(total) + np.log(q_total)
    reverse = (sum_q_log_q - sum_q_log_p) / q_total - np.log(q_total) + np.log(total)
    return np.where(impossible, np.inf, kl), np.where(impossible, np.inf, kl + reverse)


@register_method("kl")
def kl_scores(counts: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """TensorRT-style entropy calibration: KL(P || Q) per candidate."""
    return _kl_and_symkl(counts, candidates, levels)[0]


@register_method("symkl")
def symkl_scores(counts: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """Symmetric KL divergence KL(P || Q) + KL(Q || P) per candidate."""
    return _kl_and_symkl(counts, candidates, levels)[1]


def expand_candidate(counts: np.ndarray, i: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the (unnormalised) ``P`` and ``Q`` of candidate ``i``, each of length ``i``."""
    padded = _pad(counts, i)
    p = padded[:i].copy()
    p[-1] += padded[i:].sum()
    size = i // levels
    group = np.minimum(np.arange(i) // size, levels - 1)
    mass = np.bincount(group, weights=padded[:i], minlength=levels)
    nonzero = np.bincount(group, weights=(p > 0).astype(np.float64), minlength=levels)
    q = np.where(p > 0, mass[group] / np.maximum(nonzero[group], 1), 0.0)
    return p, q


@register_method("jsd", cost="quadratic")
def jsd_scores(counts: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """Jensen-Shannon divergence between ``P`` and ``Q`` per candidate."""
    candidates = np.maximum(np.asarray(candidates, dtype=np.int64), levels)
    scores = np.empty(len(candidates))
    for k, i in enumerate(candidates):
        p, q = expand_candidate(counts, int(i), levels)
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum <= 0 or q_sum <= 0:
            scores[k] = np.inf
            continue
        p, q = p / p_sum, q / q_sum
        m = 0.5 * (p + q)
        scores[k] = 0.5 * (_xlogx(p).sum() - (p * _safe_log(m)).sum()) + 0.5 * (
            _xlogx(q).sum() - (q * _safe_log(m)).sum()
        )
    return scores


@register_method("mse", zero_spike=False, below_levels=True, trt_calibrator="MinMaxCalibration")
def mse_scores(counts: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """Expected squared quantization error per candidate threshold ``i`` bins.

    Values inside the threshold carry the uniform rounding error ``step**2 / 12`` with
    ``step = threshold / (levels - 1)``; values beyond it are clipped to the threshold. Every
    count sits at its bin centre. Units are bin widths squared.
    """
    candidates = np.maximum(np.asarray(candidates, dtype=np.int64), 1)
    padded = _pad(counts, int(candidates.max()))
    centres = np.arange(padded.size) + 0.5
    cum = np.concatenate([[0.0], np.cumsum(padded)])
    cum_x = np.concatenate([[0.0], np.cumsum(padded * centres)])
    cum_x2 = np.concatenate([[0.0], np.cumsum(padded * centres**2)])
    t = candidates.astype(np.float64)
    inside = cum[candidates]
    out_n, out_x, out_x2 = cum[-1] - inside, cum_x[-1] - cum_x[candidates], cum_x2[-1] - cum_x2[candidates]
    step = t / (levels - 1)
    return inside * step**2 / 12.0 + out_x2 - 2.0 * t * out_x + t**2 * out_n
