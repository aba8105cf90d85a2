"""The sensitivity ranking for the blacklist bisection, cached beside the statistics."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from autoquant.common import atomic_write
from autoquant.config import QuantizationConfig, StudyConfig
from autoquant.engine import Sensitivity, write_files
from autoquant.errors import SearchStopped
from autoquant.hardware import target_isa
from autoquant.names import REPORT_FILE, SENSITIVITY_FILE
from autoquant.search import _pipeline as pipeline
from autoquant.search._report import render_report

logger = logging.getLogger(__name__)


def ranking_writer(
    config: StudyConfig, calibrated: pipeline.Calibrated, name: str
) -> Callable[[QuantizationConfig], Sensitivity]:
    """Sensitivity analysis for the bisection; each ranking is also written as JSON and HTML.

    Rankings are cached beside the statistics, keyed by them, the choices, the analysis samples and
    the CPU's instruction set, so a resumed study, or another worker sharing the cache, reuses them.
    """

    def ranking(
        quantization: QuantizationConfig, should_stop: Callable[[], bool] = lambda: False
    ) -> Sensitivity:
        key = hashlib.sha256(
            "|".join(
                [
                    calibrated.stats.key,
                    quantization.model_copy(update={"fp32_layers": 0, "layer_scales": {}}).model_dump_json(),
                    str(config.search.data_limit),
                    str(list(config.model.outputs)),
                    target_isa().label,
                ]
            ).encode()
        ).hexdigest()[:24]
        cached = pipeline.cache_dir(config) / f"sensitivity-{key}.json"
        try:
            sensitivity = Sensitivity.from_json(cached.read_text())
            logger.info("sensitivity ranking reused from the cache (%s)", cached.name)
        except (OSError, ValueError, KeyError, TypeError):

            def check(_: int) -> None:  # polled after each layer: a deadline ends a long analysis
                if should_stop():
                    raise SearchStopped

            sensitivity = pipeline.analyze_layers(
                config.replace(quantization=quantization), calibrated, check
            )
            atomic_write(cached, lambda f: f.write(sensitivity.to_json().encode()))
        report = render_report(
            sensitivity, f"autoquant sensitivity: {name}", {"model": str(config.model.path)}
        )
        files = {SENSITIVITY_FILE: sensitivity.to_json().encode(), REPORT_FILE: report.encode()}
        write_files(config.output.directory, files)
        return sensitivity

    return ranking
