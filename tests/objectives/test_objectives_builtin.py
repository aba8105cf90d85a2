"""top1, top5, agreement and cosine: hand-computed values, bootstrap resamples, bad input, real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, top_k_accuracy_score
from sklearn.metrics.pairwise import cosine_similarity

from autoquant.data._labels import Box
from autoquant.errors import DataError
from autoquant.objectives import Top1, create_objective

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"

# Four samples, three classes. argmax per row: 0, 1, 2, 0; labels 0, 1, 2, 1 -> hits 1, 1, 1, 0.
LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [5.0, 1.0, 0.0]], dtype=np.float32)
LABELS = [0, 1, 2, 1]


def scored(name: str, outputs: list[np.ndarray], labels: list | None = None, reference: list | None = None):
    objective = create_objective(name, has_labels=True)
    objective.update(outputs, labels, reference)
    return objective


def test_top1_hand_computed() -> None:
    objective = scored("top1", [LOGITS], LABELS)
    assert objective.score() == 0.75  # 3 hits out of 4


def test_top1_accumulates_batches_and_numpy_labels() -> None:
    objective = create_objective("top1", has_labels=True)
    objective.update([LOGITS[:1]], [0], None)
    objective.update([LOGITS[1:]], list(np.array(LABELS[1:])), None)  # numpy int64 labels
    assert objective.score() == 0.75


def test_top1_squeezes_trailing_unit_dims() -> None:
    assert scored("top1", [LOGITS[:, :, None, None]], LABELS).score() == 0.75


def test_top1_uses_the_chosen_output() -> None:
    objective = Top1(output=1)
    objective.update([np.zeros((4, 7, 7)), LOGITS], LABELS, None)
    assert objective.score() == 0.75


def test_top1_tie_goes_to_the_lower_class() -> None:
    # [1, 1, 0]: argmax is class 0, so label 0 is a hit and label 1 a miss (no double counting).
    assert scored("top1", [np.array([[1.0, 1.0, 0.0]] * 2)], [0, 1]).score() == 0.5


def test_top1_bootstrap_resamples() -> None:
    objective = scored("top1", [LOGITS], LABELS)
    assert objective.score(np.arange(4)) == objective.score()
    assert objective.score(np.array([3, 3, 0])) == pytest.approx(1 / 3)  # miss, miss, hit
    assert objective.score(np.array([0, 0, 3, 3, 3])) == pytest.approx(2 / 5)
    assert objective.score() == 0.75  # resampling leaves the state alone


def test_top5_hand_computed() -> None:
    # Every row ranks the classes 0 > 1 > 2 > 3 > 4 > 5. Labels 0, 4, 5, 2 have ranks 1, 5, 6, 3:
    # top5 hits, hits, misses, hits -> 0.75; top1 only hits label 0 -> 0.25.
    scores = np.tile(np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0]), (4, 1))
    labels = [0, 4, 5, 2]
    assert scored("top5", [scores], labels).score() == 0.75
    assert scored("top1", [scores], labels).score() == 0.25
    assert scored("top5", [scores], labels).score(np.array([2, 2, 1])) == pytest.approx(1 / 3)


def test_agreement_hand_computed() -> None:
    # INT8 argmax per row: 0, 1, 2, 1; FP32 (LOGITS): 0, 1, 2, 0 -> 3 of 4 agree.
    int8 = np.array([[1.9, 1.1, 0.0], [0.1, 2.9, 1.2], [1.0, 0.2, 1.9], [0.9, 1.0, 0.0]], dtype=np.float32)
    objective = scored("agreement", [int8], None, [LOGITS])
    assert objective.score() == 0.75
    assert objective.score(np.array([3, 3, 1])) == pytest.approx(1 / 3)


def test_cosine_hand_computed() -> None:
    # cos([1,0],[0,1]) = 0; cos([1,1],[2,2]) = 1; two zero vectors = 1; zero vs [1,0] = 0 -> mean 0.5.
    outputs = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    reference = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    objective = scored("cosine", [outputs], None, [reference])
    assert objective.score() == 0.5
    assert objective.score(np.arange(4)) == objective.score()
    assert objective.score(np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert objective.score(np.array([1, 1, 2])) == 1.0


def test_cosine_concatenates_all_outputs_of_a_sample() -> None:
    # Sample vectors [3, 0, 4] and [3, 0, -4]: (9 - 16) / (5 * 5) = -0.28.
    outputs = [np.array([[3.0, 0.0]]), np.array([[[4.0]]])]
    reference = [np.array([[3.0, 0.0]]), np.array([[[-4.0]]])]
    assert scored("cosine", outputs, None, reference).score() == pytest.approx(-0.28)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e200])
def test_identical_outputs_score_exactly_one(scale: float) -> None:
    rng = np.random.default_rng(0)
    outputs = [rng.normal(size=(64, 10)) * scale, rng.normal(size=(64, 3, 2, 2)) * scale]
    assert scored("agreement", outputs, None, outputs).score() == 1.0
    assert scored("cosine", outputs, None, [o.copy() for o in outputs]).score() == 1.0


@pytest.mark.parametrize(
    ("name", "outputs", "labels", "reference", "message"),
    [
        ("top5", [np.zeros((4, 4))], [0, 1, 2, 3], None, r"C >= 5 .*got shape \(4, 4\)"),
        ("top1", [np.zeros((4, 3, 2))], LABELS, None, r"\[N, C\].*got shape \(4, 3, 2\)"),
        ("top1", [LOGITS], [[Box(0, 0, 0, 1, 1)]] * 4, None, "got list .*map objective"),
        ("top1", [LOGITS], [0.0, 1.0, 2.0, 1.0], None, "integer class id.*got float 0.0.*label file"),
        ("top1", [LOGITS], [True, False, True, False], None, "got bool"),
        ("top1", [LOGITS], None, None, "labels=None"),
        ("top1", [LOGITS], [0, 1, 2], None, "4 samples in its outputs but 3 labels"),
        ("top1", [LOGITS], [0, 1, 3, 1], None, "label 3 of sample 2 is outside"),
        ("top1", [LOGITS], [0, 1, -1, 1], None, "label -1 of sample 2 is outside"),
        ("top1", LOGITS, LABELS, None, "list of arrays .*got ndarray"),
        ("top1", [], LABELS, None, "at least one array"),
        ("top1", [np.float32(1.0)], LABELS, None, "batch dimension"),
        ("agreement", [LOGITS], None, None, "reference=None"),
        ("agreement", [LOGITS], None, [LOGITS, LOGITS], "expected 1 reference arrays .*got 2"),
        ("agreement", [LOGITS], None, [LOGITS[:3]], r"\(4, 3\) but the FP32 reference has \(3, 3\)"),
        ("agreement", [np.zeros((4, 3, 2))], None, [np.zeros((4, 3, 2))], r"\[N, C\]"),
        ("cosine", [LOGITS, LOGITS[:2]], None, [LOGITS, LOGITS[:2]], r"same batch size, got sizes \[4, 2\]"),
    ],
)
def test_bad_input_raises_data_error(name, outputs, labels, reference, message) -> None:
    objective = create_objective(name, has_labels=True)
    with pytest.raises(DataError, match=message):
        objective.update(outputs, labels, reference)


def test_missing_output_position() -> None:
    with pytest.raises(DataError, match="at least 2 outputs"):
        Top1(output=1).update([LOGITS], LABELS, None)


def test_score_needs_samples() -> None:
    objective = create_objective("top1", has_labels=True)
    with pytest.raises(DataError, match="no samples to score"):
        objective.score()
    objective.update([LOGITS[:0]], [], None)  # an empty batch adds nothing
    with pytest.raises(DataError, match="no samples to score"):
        objective.score()
    objective.update([LOGITS], LABELS, None)
    with pytest.raises(DataError, match="indices is empty"):
        objective.score(np.array([], dtype=int))


def test_bad_indices_are_caller_errors() -> None:
    objective = scored("top1", [LOGITS], LABELS)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        objective.score(np.array([0, 4]))
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        objective.score(np.array([-1]))
    with pytest.raises(ValueError, match="1-D integer"):
        objective.score(np.array([0.5]))


@pytest.fixture(scope="module")
def digits_logits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of a least-squares linear classifier on sklearn digits: FP32 and with int8-rounded weights."""
    data = load_digits()
    features = np.hstack([data.data / 16.0, np.ones((len(data.data), 1))])
    train, test = slice(0, 1000), slice(1000, None)
    weights = np.linalg.lstsq(features[train], np.eye(10)[data.target[train]], rcond=None)[0]
    scale = np.abs(weights).max() / 127
    int8_weights = np.round(weights / scale).clip(-127, 127) * scale
    return features[test] @ weights, features[test] @ int8_weights, data.target[test]


def feed(name: str, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
    objective = create_objective(name, has_labels=labels is not None)
    for start in range(0, len(outputs), 100):
        batch = slice(start, start + 100)
        objective.update(
            [outputs[batch]],
            None if labels is None else list(labels[batch]),
            None if reference is None else [reference[batch]],
        )
    return objective.score()


def test_digits_linear_model_matches_sklearn(digits_logits) -> None:
    fp32, int8, target = digits_logits
    assert feed("top1", fp32, target, None) == pytest.approx(
        accuracy_score(target, fp32.argmax(1)), abs=1e-12
    )
    top5 = top_k_accuracy_score(target, fp32, k=5, labels=np.arange(10))
    assert feed("top5", fp32, target, None) == pytest.approx(top5, abs=1e-12)
    agreement = accuracy_score(fp32.argmax(1), int8.argmax(1))
    assert 0.9 < feed("agreement", int8, None, fp32) == pytest.approx(agreement, abs=1e-12)
    cosine = np.diag(cosine_similarity(int8, fp32)).mean()
    assert feed("cosine", int8, None, fp32) == pytest.approx(cosine, abs=1e-12)
    assert feed("agreement", fp32, None, fp32) == feed("cosine", fp32, None, fp32) == 1.0


def test_digits_onnx_model_top1(digits_test_data) -> None:
    images, labels = digits_test_data
    session = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    score = feed("top1", logits, labels, None)
    assert score == pytest.approx(accuracy_score(labels, logits.argmax(1)), abs=1e-12)
    assert score == pytest.approx(float((DIGITS / "fp32_top1.txt").read_text()), abs=5e-5)
