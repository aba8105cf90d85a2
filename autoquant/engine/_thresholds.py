"""Threshold stage: turn cached statistics into a quantization range per tensor.

Pure numpy. The threshold of each side of a tensor comes from the ``quantization.method``
plugin (:mod:`autoquant.engine._methods`); this module handles the degenerate tensors, the
signed and unsigned sides, and the per-layer scales.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from autoquant.config import QuantizationConfig
from autoquant.engine._methods import METHODS, Side
from autoquant.engine._statistics import Statistics, TensorStats
from autoquant.errors import CalibrationError

logger = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class TensorRange:
    """The quantization range chosen for one tensor."""

    name: str
    method: str
    lowest: float
    highest: float

    @property
    def threshold(self) -> float:
        """Largest magnitude of the range."""
        return max(-self.lowest, self.highest)


def _warn_once(tensor: str, kind: str, message: str, *args: object) -> None:
    """Warn about a tensor's data once per process, not once per trial."""
    if (tensor, kind) not in _warned:
        _warned.add((tensor, kind))
        logger.warning(message, *args)


def methods() -> tuple[str, ...]:
    """Names of the registered threshold methods."""
    return METHODS.names()


def side_threshold(
    fine: np.ndarray, fine_width: float, peak: float, config: QuantizationConfig, levels: int
) -> float:
    """Threshold for one side (a magnitude histogram) of a tensor, by ``config.method``.

    Args:
        fine: Fine magnitude histogram.
        fine_width: Width of a fine bin.
        peak: Largest magnitude seen on this side.
        config: Method, bins, percentile and ratio search settings.
        levels: Quantization levels over ``[0, threshold]``: 128 for symmetric int8, 256 for uint8.

    Raises:
        CalibrationError: ``config.method`` is not a registered threshold method.
    """
    if peak <= 0.0:
        return 0.0
    return METHODS.get(config.method).threshold(Side(fine, fine_width, peak, levels), config)


def tensor_range(stats: TensorStats, config: QuantizationConfig) -> TensorRange:
    """Quantization range of one tensor (scale multiplier from ``config.layer_scales`` applied last).

    Defined behaviour on degenerate data, each with a warning naming the tensor: NaN and inf values
    are ignored; an all-zero or empty tensor gets ``[-1, 1]`` (``[0, 1]`` asymmetric), since any
    scale represents zero exactly; a constant tensor gets the range spanning zero and the constant.
    """
    if stats.nan_count or stats.inf_count:
        _warn_once(
            stats.name,
            "nonfinite",
            "tensor %r: ignoring %d NaN and %d infinite values in the calibration data",
            stats.name,
            stats.nan_count,
            stats.inf_count,
        )
    symmetric = config.activation_scheme == "symmetric"
    if stats.count == 0 or stats.range == 0.0:
        _warn_once(
            stats.name,
            "zero",
            "tensor %r: every calibration value is zero (or not finite); using range 1.0",
            stats.name,
        )
        return TensorRange(stats.name, config.method, -1.0 if symmetric else 0.0, 1.0)
    fine_width = stats.range / stats.bins
    if stats.minimum == stats.maximum:
        _warn_once(
            stats.name,
            "constant",
            "tensor %r is constant (%g) over the calibration data",
            stats.name,
            stats.maximum,
        )
        lowest, highest = min(stats.minimum, 0.0), max(stats.maximum, 0.0)
    elif symmetric:
        t = side_threshold(stats.magnitude, fine_width, max(-stats.minimum, stats.maximum), config, 128)
        lowest, highest = -t, t
    else:
        levels = 256 if stats.minimum >= 0.0 else 128
        highest = side_threshold(stats.positive, fine_width, max(stats.maximum, 0.0), config, levels)
        lowest = -side_threshold(stats.negative, fine_width, max(-stats.minimum, 0.0), config, 128)
    scale = config.layer_scales.get(stats.name, 1.0)
    if symmetric:
        t = max(-lowest, highest) * scale
        lowest, highest = -t, t
    else:
        lowest, highest = lowest * scale, highest * scale
    return TensorRange(stats.name, config.method, float(lowest), float(highest))


def compute_thresholds(stats: Statistics, config: QuantizationConfig) -> dict[str, TensorRange]:
    """Ranges for every tensor in ``stats``.

    Raises:
        CalibrationError: ``config.layer_scales`` names a tensor without statistics.
    """
    unknown = sorted(set(config.layer_scales) - set(stats.tensors))
    if unknown:
        raise CalibrationError(
            f"quantization.layer_scales names tensors without statistics: {', '.join(unknown)}"
        )
    return {name: tensor_range(s, config) for name, s in stats.tensors.items()}
