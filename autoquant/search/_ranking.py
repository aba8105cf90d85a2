"""The sensitivity ranking for the blacklist bisection, cached beside the statistics."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from autoquant.common import atomic_write
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.engine import Sensitivity
from autoquant.errors import SearchStopped
from autoquant.hardware import target_isa
from autoquant.search import pipeline

logger = logging.getLogger(__name__)


def analyse(
    config: StudyConfig,
    calibrated: pipeline.Calibrated,
    quantization: QuantizationConfig,
    should_stop: Callable[[], bool] = lambda: False,
) -> Sensitivity:
    """The sensitivity analysis of these choices (without a blacklist), for the bisection.

    Rankings are cached beside the statistics, keyed by them, the choices, the analysis samples and
    the CPU's instruction set, so a resumed study, or another worker sharing the cache, reuses them.
    The output folder is the outputs stage's (:func:`autoquant.search._outputs.write_sensitivity`).

    Raises:
        SearchStopped: ``should_stop`` said yes between two layers; nothing is cached.
    """
    base = quantization.model_copy(update={"fp32_layers": 0, "layer_scales": {}})
    parts = [
        calibrated.stats.key,
        # the analysis quantizes without bias correction; left out, the key is that of older versions
        base.model_dump_json(exclude={"bias_correction"}),
        str(config.search.data_limit),
        str(list(config.model.outputs)),
        target_isa().label,
    ]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
    cached = pipeline.cache_dir(config) / f"sensitivity-{key}.json"
    try:
        sensitivity = Sensitivity.from_json(cached.read_text())
        logger.info("sensitivity ranking reused from the cache (%s)", cached.name)
        return sensitivity
    except (OSError, ValueError, KeyError, TypeError):
        pass

    def check(_: int) -> None:  # polled after each layer: a deadline ends a long analysis
        if should_stop():
            raise SearchStopped

    sensitivity = pipeline.analyze_layers(config.replace(quantization=base), calibrated, check)
    atomic_write(cached, lambda f: f.write(sensitivity.to_json().encode()))
    return sensitivity
