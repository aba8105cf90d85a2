"""Evaluation on the digits example: FP32 and INT8 scores, decay and its interval, bad objectives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoquant.config import QuantizationConfig
from autoquant.errors import ConfigError, DataError, EvaluationError, UserCodeError
from autoquant.evaluation import Evaluator, StoredArray, compute_decay, read_reference, write_reference
from autoquant.evaluation._latency import measure_latency
from autoquant.search import pipeline
from tests.helpers import top1


@pytest.fixture(scope="module")
def setup(calibrated_digits):
    config, calibrated = calibrated_digits
    return config, calibrated, pipeline.quantize(calibrated, QuantizationConfig())


def test_scores_and_decay_match_an_independent_computation(setup, digits_test_data) -> None:
    config, calibrated, int8 = setup
    x, y = digits_test_data
    evaluator = pipeline.evaluator(config, calibrated.graph)
    result = evaluator.evaluate(int8.model)
    assert result.fp32_score == pytest.approx(0.994)  # the README's figure
    assert result.fp32_score == pytest.approx(top1(calibrated.graph.prepared_path, x, y))
    assert result.score == pytest.approx(top1(int8.model, x, y))
    assert result.decay == pytest.approx(result.fp32_score - result.score)
    low, high = result.decay_ci
    assert low <= result.decay <= high and high - low < 0.05
    assert result.samples == 500


def test_fp32_model_against_itself_has_no_decay(setup) -> None:
    config, calibrated, _ = setup
    result = pipeline.evaluator(config, calibrated.graph).evaluate(calibrated.graph.prepared_path)
    assert result.decay == 0.0 and result.decay_ci == (0.0, 0.0)


def test_agreement_without_labels(setup) -> None:
    config, calibrated, int8 = setup
    unlabelled = config.replace(test={"labels": None})
    evaluator = pipeline.evaluator(unlabelled, calibrated.graph)
    assert evaluator.objective_name == "auto"
    itself = evaluator.evaluate(calibrated.graph.prepared_path)
    assert itself.fp32_score == 1.0 and itself.score == 1.0
    result = evaluator.evaluate(int8.model)
    x, _ = np.load(Path(config.test.source)), None
    import onnxruntime as ort

    fp32_pred = ort.InferenceSession(str(calibrated.graph.prepared_path)).run(None, {"input": x})[0].argmax(1)
    int8_pred = ort.InferenceSession(int8.model.SerializeToString()).run(None, {"input": x})[0].argmax(1)
    assert result.score == pytest.approx((fp32_pred == int8_pred).mean())


def test_fp32_reference_is_cached(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    config, calibrated, int8 = setup
    pipeline.evaluator(config, calibrated.graph).reference()
    from autoquant.evaluation import _sessions as evaluate_module

    def no_fp32_session(model):
        if str(model) == str(calibrated.graph.prepared_path):
            raise AssertionError("the FP32 model ran again")
        return original(model)

    original = evaluate_module.session_for
    monkeypatch.setattr(evaluate_module, "session_for", no_fp32_session)
    result = pipeline.evaluator(config, calibrated.graph).evaluate(int8.model)
    assert result.fp32_score == pytest.approx(0.994)


def test_configured_fp32_score_and_relative_decay(setup) -> None:
    config, calibrated, int8 = setup
    given = config.replace(search={"fp32_score": 0.99, "decay": "relative"})
    result = pipeline.evaluator(given, calibrated.graph).evaluate(int8.model)
    assert result.fp32_score == 0.99
    assert result.decay == pytest.approx((0.99 - result.score) / 0.99)
    assert compute_decay(0.8, 0.6, "relative") == pytest.approx(0.25)
    with pytest.raises(DataError, match="non-zero FP32 score"):
        compute_decay(0.0, 0.1, "relative")


def test_objective_needing_labels_without_labels(setup) -> None:
    config, calibrated, _ = setup
    with pytest.raises(ConfigError, match="needs labels"):
        pipeline.evaluator(config.replace(test={"labels": None, "objective": "top5"}), calibrated.graph)


def _user_objective(tmp_path: Path, body: str) -> str:
    path = tmp_path / "my_objective.py"
    path.write_text(body)
    return f"{path}:make"


def test_user_objective_that_raises_is_reported_with_its_traceback(setup, tmp_path: Path) -> None:
    config, calibrated, int8 = setup
    spec = _user_objective(
        tmp_path,
        "class Broken:\n"
        "    def update(self, outputs, labels, reference):\n"
        "        raise KeyError('logits_v2')\n"
        "    def score(self):\n"
        "        return 1.0\n"
        "def make():\n"
        "    return Broken()\n",
    )
    evaluator = pipeline.evaluator(config.replace(test={"objective": spec}), calibrated.graph)
    with pytest.raises(UserCodeError, match="raised KeyError: 'logits_v2'") as info:
        evaluator.evaluate(int8.model)
    assert "my_objective.py" in info.value.details and "line 3" in info.value.details


def test_nan_score_is_an_error(setup, tmp_path: Path) -> None:
    config, calibrated, int8 = setup
    spec = _user_objective(
        tmp_path,
        "class Nan:\n"
        "    def update(self, outputs, labels, reference):\n"
        "        pass\n"
        "    def score(self):\n"
        "        return float('nan')\n"
        "def make():\n"
        "    return Nan()\n",
    )
    evaluator = pipeline.evaluator(config.replace(test={"objective": spec}), calibrated.graph)
    with pytest.raises(DataError, match="non-finite FP32 score"):
        evaluator.evaluate(int8.model)


def test_fp32_reference_is_stored_in_the_cache_and_read_by_slices(setup, digits_test_data) -> None:
    import onnxruntime as ort

    config, calibrated, _ = setup
    x, _ = digits_test_data
    stored = pipeline.evaluator(config, calibrated.graph).reference()
    assert isinstance(stored[0], StoredArray) and stored[0].shape == (500, 10)
    whole = ort.InferenceSession(str(calibrated.graph.prepared_path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(stored[0][37:41], whole[37:41], rtol=1e-5, atol=1e-6)
    in_memory = Evaluator(config, calibrated.graph, None, "no cache").reference()
    assert isinstance(in_memory[0], np.ndarray)
    np.testing.assert_array_equal(stored[0][0:500], in_memory[0])


def test_stored_reference_appears_whole_and_a_stale_copy_is_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "fp32-k"
    a, b = np.arange(24, dtype=np.float32).reshape(6, 2, 2), np.arange(6, dtype=np.int64)
    batches = [[a[:4], b[:4]], [a[4:], b[4:]]]
    stored = write_reference(folder, batches, [0, 1])
    np.testing.assert_array_equal(stored[0][1:5], a[1:5])
    np.testing.assert_array_equal(stored[1][0:6], b)
    assert stored[1][5:9].tolist() == [5] and read_reference(folder)[1] == [0, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["fp32-k"]  # nothing staged is left
    assert write_reference(folder, [[a[:1], b[:1]]], [0, 1])[0].shape == (6, 2, 2)  # a complete copy stays
    (folder / "out0.bin").write_bytes(bytes(8))  # truncated: not a reference any more
    assert read_reference(folder) is None
    np.testing.assert_array_equal(write_reference(folder, batches, [0, 1])[0][0:6], a)

    def failing():
        yield [a[:4], b[:4]]
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError):
        write_reference(tmp_path / "fp32-other", failing(), [0, 0])
    assert [p.name for p in tmp_path.iterdir()] == ["fp32-k"]


def test_onnxruntime_failures_are_evaluation_errors_with_their_cause(setup) -> None:
    import onnxruntime as ort

    config, calibrated, int8 = setup
    session = ort.InferenceSession(int8.model.SerializeToString())

    def run(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : kernel failed")

    session.run = run
    with pytest.raises(
        EvaluationError, match=r"cannot run the model on test samples .*kernel failed"
    ) as info:
        pipeline.evaluator(config, calibrated.graph).evaluate(session)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(EvaluationError, match="cannot load the model to evaluate") as info:
        pipeline.evaluator(config, calibrated.graph).evaluate(b"not a model")
    assert info.value.__cause__ is not None
    with pytest.raises(EvaluationError, match="cannot run the model to measure its latency") as info:
        measure_latency(int8.model, {"input": np.zeros((1, 3), np.float32)}, repeats=1, warmup=0)
    assert info.value.__cause__ is not None


def test_sequential_evaluation_stops_only_what_is_certainly_over_budget(setup) -> None:
    """A model far over budget stops at the first look (a tenth of the test set, here its first
    batch of 100), with the score, decay and decay interval of the samples seen; a model within budget is scored on every sample, exactly as without pruning."""
    config, calibrated, _ = setup
    evaluator = pipeline.evaluator(config, calibrated.graph)
    ruined = QuantizationConfig(layer_scales={t: 0.05 for t in calibrated.graph.activations})
    bad = evaluator.evaluate(pipeline.quantize(calibrated, ruined).model, prune=True)
    assert bad.pruned and bad.samples == 100 and bad.decay > 0.3  # the first batch
    low, high = bad.decay_ci or (None, None)  # the interval of the samples it saw
    assert low is not None and low <= bad.decay <= high
    good = pipeline.quantize(calibrated, QuantizationConfig(method="mse"))
    kept = evaluator.evaluate(good.model, prune=True)
    whole = evaluator.evaluate(good.model)
    assert not kept.pruned and kept.samples == whole.samples == 500
    assert (kept.score, kept.decay, kept.decay_ci) == (whole.score, whole.decay, whole.decay_ci)
