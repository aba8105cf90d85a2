"""Every model-zoo architecture shipped in the onnx wheel quantizes with every threshold method and
both weight granularities, loads in onnxruntime and gives finite outputs of the FP32 shapes.

Methods change only ranges, so after the first method of each granularity the models come from
the structure-preserving :class:`~autoquant.engine.Requantizer`, as in a study; that it rewrites
every architecture is asserted too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autoquant.config import QuantizationConfig
from autoquant.engine import Requantizer, compute_thresholds, int8_kernels, methods, quantize_model
from autoquant.engine._statistics import Statistics, run_statistics_pass
from autoquant.engine.graph import prepare_model
from tests.helpers import zoo_models

pytestmark = pytest.mark.slow


def _feeds(graph, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for spec in graph.inputs:
            shape = [1 if dim is None else dim for dim in spec.shape]
            feed[spec.name] = rng.uniform(-1, 1, size=shape).astype(spec.dtype)
        feeds.append(feed)
    return feeds


@pytest.mark.parametrize("model_path", zoo_models(), ids=lambda p: p.stem.removeprefix("light_"))
def test_zoo_model_quantizes_with_every_method(model_path: Path, tmp_path: Path) -> None:
    graph = prepare_model(model_path, tmp_path)
    tensors, samples = run_statistics_pass(graph.load(), list(graph.activations), _feeds(graph, 2), 2048)
    stats = Statistics("zoo", tensors, samples)
    feed = _feeds(graph, 1, seed=1)[0]
    fp32 = ort.InferenceSession(str(graph.prepared_path)).run(None, feed)
    requantizer = Requantizer(graph)
    for per_channel in (False, True):
        for method in methods():
            config = QuantizationConfig(method=method, per_channel=per_channel, bins=1024)
            result = requantizer.quantize(compute_thresholds(stats, config), config)
            onnx.checker.check_model(result.model)
            session = ort.InferenceSession(
                result.model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            outputs = session.run(None, feed)
            assert [o.shape for o in outputs] == [o.shape for o in fp32], (method, per_channel)
            assert all(np.isfinite(o).all() for o in outputs), (method, per_channel)
    assert requantizer.rewrites == 2 * (len(methods()) - 1)  # all but the first of each granularity
    # With uint8 activations (the default) every Conv runs as QLinearConv. With int8 activations
    # onnxruntime keeps the convs that read a Relu output shared by several consumers in float.
    config = QuantizationConfig(bins=1024)
    kernels = int8_kernels(quantize_model(graph, compute_thresholds(stats, config), config).model)
    assert kernels.get("QLinearConv", 0) > 0 and "Conv" not in kernels
