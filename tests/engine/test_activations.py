"""Decomposed activations left in float for speed, on the PP-OCR recognizer (tests/corpus.py): 13
GELUs written as Div/Erf/Add/Mul/Mul and 5 SiLUs as Sigmoid/Mul."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from autoquant.config import parse_config
from autoquant.engine import Requantizer, compute_layers, compute_thresholds, quantize_model
from autoquant.engine.graph import MS_DOMAIN
from autoquant.search import pipeline
from tests import corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("rec")
    calib, test = corpus.ocr_rec_data(folder / "data", calib=4, test=4)
    text = yaml.safe_dump(
        {
            "model": {"path": str(corpus.ocr_rec_model()), "inputs": {"x": list(corpus.REC_SHAPE)}},
            "calibration": {"source": str(calib)},
            "test": {"source": str(test), "objective": "cosine"},
            "quantization": {"per_channel": True, "method": "mse"},
            "tracking": {"enabled": False},
            "output": {"directory": str(folder / "out")},
        }
    )
    config = parse_config(text, folder / "rec.yaml")
    return config, pipeline.calibrate(config), np.load(test)


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter((n.domain, n.op_type) for n in model.graph.node)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])


def test_chains_are_found_and_run_as_fused_float_kernels(recognizer) -> None:
    config, calibrated, x = recognizer
    graph = calibrated.graph
    source = {n.name: n for n in graph.load().graph.node}
    kinds = Counter(c.kind for c in graph.activation_chains)
    assert kinds == {"gelu": 13, "silu": 5}
    for chain in graph.activation_chains:
        ops = [source[name].op_type for name in chain.nodes]
        assert ops == (["Div", "Erf", "Add", "Mul", "Mul"] if chain.kind == "gelu" else ["Sigmoid", "Mul"])
        assert (
            source[chain.nodes[-1]].output[0] == chain.output and chain.input in source[chain.nodes[0]].input
        )

    plain = pipeline.quantize(calibrated, config.quantization)
    fused = pipeline.quantize(calibrated, config.quantization.model_copy(update={"float_ops": "activations"}))
    ops, before = _ops(fused.model), _ops(plain.model)
    assert ops[(MS_DOMAIN, "Gelu")] == 13 and ops[(MS_DOMAIN, "QuickGelu")] == 5
    assert not {name for c in graph.activation_chains for name in c.nodes} & {
        n.name for n in fused.model.graph.node
    }
    # 18 activations, each one Mul (and a GELU's Add) the quantizer no longer wraps in Q/DQ
    assert ops[("", "QuantizeLinear")] < before[("", "QuantizeLinear")]
    # left in float for speed: not FP32 nodes, not FP32 compute layers
    quantizable = {n.name for n in graph.nodes}
    in_chains = [name for c in graph.activation_chains for name in c.nodes if name in quantizable]
    assert (
        sorted(fused.float_nodes) == sorted(in_chains) and len(in_chains) == 13 * 3 + 5 * 2
    )  # Add, Mul, Mul; Sigmoid, Mul
    assert fused.fp32_nodes == plain.fp32_nodes and compute_layers(graph, fused.fp32_nodes) == ()

    # The fused kernel computes what the chain computes: the same exclusions without the fusion.
    unfused = pipeline.quantize(
        calibrated, config.quantization.model_copy(update={"nodes_to_exclude": in_chains})
    )
    assert _ops(unfused.model)[(MS_DOMAIN, "Gelu")] == 0
    a, b = _run(fused.model, x), _run(unfused.model, x)
    cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine > 0.9999 and a.argmax(-1).tolist() == b.argmax(-1).tolist()

    # onnxruntime keeps the kernels through its own graph optimizations
    with_options = ort.SessionOptions()
    with_options.optimized_model_filepath = str(config.output.directory.parent / "optimized.onnx")
    ort.InferenceSession(fused.model.SerializeToString(), with_options, providers=["CPUExecutionProvider"])
    optimized = Counter(n.op_type for n in onnx.load(with_options.optimized_model_filepath).graph.node)
    assert optimized["Gelu"] == 13 and optimized["QuickGelu"] == 5


def test_a_fused_structure_is_rewritten_byte_for_byte(recognizer) -> None:
    config, calibrated, _ = recognizer
    choices = config.quantization.model_copy(update={"float_ops": "activations"})
    other = choices.model_copy(update={"method": "percentile"})
    requantizer = Requantizer(calibrated.graph)
    requantizer.quantize(compute_thresholds(calibrated.stats, choices), choices)
    ranges = compute_thresholds(calibrated.stats, other)
    rewritten = requantizer.quantize(ranges, other)
    assert requantizer.rewrites == 1
    direct = quantize_model(calibrated.graph, ranges, other)
    assert rewritten.model.SerializeToString() == direct.model.SerializeToString()
    assert rewritten.float_nodes == direct.float_nodes and rewritten.fp32_nodes == direct.fp32_nodes


def test_only_whole_chains_are_fused(recognizer) -> None:
    """A chain whose nodes are not all left in float is not fused; the others are."""
    config, calibrated, _ = recognizer
    graph = calibrated.graph
    first = graph.activation_chains[0]
    # keep every chain but the first in float; the first stays quantized
    rest = [n for c in graph.activation_chains[1:] for n in c.nodes if n in {q.name for q in graph.nodes}]
    from autoquant.engine.graph import fuse_activations

    model = pipeline.quantize(
        calibrated, config.quantization.model_copy(update={"nodes_to_exclude": rest})
    ).model
    quantized = {n.name for n in graph.nodes if n.name not in set(rest)}
    floating = {n.name for n in model.graph.node} - quantized
    fused_model, fused = fuse_activations(model, graph.activation_chains, floating)
    assert first not in fused and len(fused) == len(graph.activation_chains) - 1
    assert first.nodes[0] in {n.name for n in fused_model.graph.node}
