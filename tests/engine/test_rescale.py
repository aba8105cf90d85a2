"""Structure-preserving re-quantization: a rewritten model is byte for byte the one onnxruntime's
quantizer writes for the same ranges and choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant.config import QuantizationConfig
from autoquant.engine import Requantizer, compute_thresholds, quantize_model
from autoquant.search import pipeline
from tests.fixtures.export_styles import TINY_VIT_MODEL
from tests.helpers import digits_variant

CHOICES = [
    {},
    {"per_channel": True},
    {"activation_scheme": "symmetric", "per_channel": True},  # Softmax outputs get a fixed range
    {"first_layer_fp32": True, "depthwise_per_channel": True},
]
METHODS = ["kl", "mse", "percentile", "max"]


def _assert_rewrites_equal_quantizing(
    calibrated: pipeline.Calibrated, base: QuantizationConfig, choice_set=CHOICES, methods=METHODS
) -> None:
    requantizer = Requantizer(calibrated.graph)
    for choices in choice_set:
        for method in methods:
            config = base.model_copy(update={**choices, "method": method})
            if method == "max":  # a per-tensor threshold scale too
                config = config.model_copy(update={"layer_scales": {calibrated.graph.activations[2]: 0.7}})
            ranges = compute_thresholds(calibrated.stats, config)
            direct = quantize_model(calibrated.graph, ranges, config).model
            rewritten = requantizer.quantize(ranges, config).model
            assert rewritten.SerializeToString() == direct.SerializeToString(), (choices, method)
    # Each structure is quantized twice (once more to map its scales), then rewritten.
    assert requantizer.rewrites == len(choice_set) * (len(methods) - 1)


def test_digits(calibrated_digits) -> None:
    config, calibrated = calibrated_digits
    _assert_rewrites_equal_quantizing(calibrated, config.quantization)


def test_transformer_with_attention_and_softmax(tmp_path: Path) -> None:
    config = digits_variant(
        tmp_path, model={"path": TINY_VIT_MODEL}, calibration={"cache_dir": tmp_path / "cache"}
    )
    _assert_rewrites_equal_quantizing(pipeline.calibrate(config), config.quantization)


@pytest.mark.slow
def test_real_recognizer_with_decomposed_layernorm(tmp_path: Path) -> None:
    from tests import corpus

    calib, test = corpus.ocr_rec_data(tmp_path / "data", calib=4, test=2)
    config = digits_variant(
        tmp_path,
        model={"path": corpus.ocr_rec_model(), "inputs": {"x": list(corpus.REC_SHAPE)}},
        calibration={"source": str(calib), "batch_size": 1, "calib_iterations": 0},
        test={"source": str(test), "labels": None, "batch_size": 1, "test_iterations": 0},
    )
    # Each direct quantization of this model takes seconds: two structures, three methods.
    _assert_rewrites_equal_quantizing(
        pipeline.calibrate(config), config.quantization, CHOICES[1:3], ["kl", "percentile", "max"]
    )
