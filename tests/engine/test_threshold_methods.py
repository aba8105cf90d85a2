"""One conformance test for every registered threshold method (as scikit-learn's ``check_estimator``).

On a few histograms (bell, heavy tail, ReLU spike of zeros, uniform, a handful of values) and
both level counts, a method must give a finite, positive threshold within the histogram's range
(up to ``end_ratio`` times it with ratio search), the same one every time, and with ratio search
too when it says it supports it. Its ``check`` must accept a config without ratio search and
decide on one with it.
"""

from __future__ import annotations

import numpy as np
import pytest

from autoquant.config import QuantizationConfig
from autoquant.engine import Side, ThresholdMethod
from autoquant.engine._statistics import HistogramCollector
from autoquant.registry import THRESHOLD_METHODS

_RNG = np.random.default_rng(7)
SAMPLES = {
    "normal": _RNG.normal(size=20_000),
    "laplace": _RNG.laplace(size=20_000),
    "relu": np.maximum(_RNG.normal(size=20_000), 0.0),
    "uniform": _RNG.uniform(0.5, 3.0, size=5_000),
    "few": np.array([0.01, 0.2, 0.2, 3.0]),
}


def _sides(fine_bins: int = 8192) -> list[tuple[str, Side]]:
    sides = []
    for name, values in SAMPLES.items():
        collector = HistogramCollector(name, bins=fine_bins)
        collector.update(values.astype(np.float32))
        stats = collector.result()
        width = stats.range / stats.bins
        for levels in (128, 256):
            sides.append((f"{name}/{levels}", Side(stats.positive, width, stats.maximum, levels)))
    return sides


SIDES = _sides()


def _configs(method: ThresholdMethod, name: str) -> list[QuantizationConfig]:
    configs = [QuantizationConfig(method=name, bins=bins) for bins in (128, 1024, 2048)]
    configs.append(QuantizationConfig(method=name, max_percentile=0.999))
    if method.ratio_search:
        configs.append(QuantizationConfig(method=name, ratio_search=True, bins=1024))
        configs.append(QuantizationConfig(method=name, ratio_search=True, start_ratio=0.3, end_ratio=1.7))
    return configs


@pytest.mark.parametrize("name", THRESHOLD_METHODS.names())
def test_threshold_method_conforms(name: str) -> None:
    method = THRESHOLD_METHODS.get(name)
    assert isinstance(method, ThresholdMethod)
    assert method.trt_calibrator, f"{name}: name the closest TensorRT calibrator"
    for config in _configs(method, name):
        for label, side in SIDES:
            threshold = method.threshold(side, config)
            used = (int(np.flatnonzero(side.fine)[-1]) + 1) * side.fine_width
            assert np.isfinite(threshold) and threshold > 0.0, (name, label, config)
            # Within the histogram; ratio search scans up to end_ratio times the percentile
            # threshold, rounded to a coarse bin.
            bound = (
                used * (1 + 1e-9) if not config.ratio_search else used * config.end_ratio + used / config.bins
            )
            assert threshold <= bound, (name, label, threshold, used)
            assert method.threshold(side, config) == threshold, f"{name} is not deterministic"


@pytest.mark.parametrize("name", THRESHOLD_METHODS.names())
def test_threshold_method_checks_its_config(name: str) -> None:
    method = THRESHOLD_METHODS.get(name)
    method.check(QuantizationConfig(method=name))
    ratio = QuantizationConfig.model_construct(
        **{**QuantizationConfig(method=name).__dict__, "ratio_search": True}
    )
    if method.ratio_search:
        method.check(ratio)
    else:
        with pytest.raises(ValueError, match="ratio_search needs a divergence method"):
            method.check(ratio)


def test_unknown_method_lists_the_registered_ones() -> None:
    from autoquant.errors import CalibrationError

    with pytest.raises(CalibrationError, match="unknown threshold method 'l1'; valid: max, percentile, kl"):
        THRESHOLD_METHODS.get("l1")
