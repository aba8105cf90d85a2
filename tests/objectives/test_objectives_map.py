"""map (mAP@0.5) on a hand-worked case, its bootstrap resamples, bad input, and the SSD decode example."""

from __future__ import annotations

import numpy as np
import pytest

from autoquant.data._labels import Box
from autoquant.errors import DataError
from autoquant.objectives import Detection, MeanAveragePrecision, average_precision, create_objective
from autoquant.objectives.ssd_decode import decode as ssd_decode

SSD = "autoquant.objectives.ssd_decode:decode"

# Image A: class 0 at [0,0,10,10], class 1 at [20,20,30,30].
# Image B: class 0 at [0,0,10,10] and at [50,50,60,60].
TRUTH = [
    [Box(0, 0, 0, 10, 10), Box(1, 20, 20, 30, 30)],
    [Box(0, 0, 0, 10, 10), Box(0, 50, 50, 60, 60)],
]
# A: 0.9 matches its class-0 box (IoU 1); 0.6 overlaps it too (IoU 0.81) but it is taken: FP;
#    class 1 at 0.8 matches (IoU 1).
# B: 0.7 matches [50,50,60,60]; 0.5 overlaps nothing: FP; class 1 at 0.4: B has no class-1 box: FP.
FOUND = [
    [Detection(0, 0.9, 0, 0, 10, 10), Detection(0, 0.6, 1, 1, 10, 10), Detection(1, 0.8, 20, 20, 30, 30)],
    [Detection(0, 0.7, 50, 50, 60, 60), Detection(0, 0.5, 30, 30, 40, 40), Detection(1, 0.4, 0, 0, 10, 10)],
]


def given(batch: list[list[Detection]]):
    """A decode function returning ``batch`` whatever the outputs."""
    return lambda outputs: batch


def scored(found=FOUND, truth=TRUTH, batches: int = 1) -> MeanAveragePrecision:
    objective = MeanAveragePrecision(decode=None)
    size = len(truth) // batches
    for start in range(0, len(truth), size):
        objective.decode = given(found[start : start + size])
        objective.update([np.zeros((size, 1))], truth[start : start + size], None)
    return objective


def test_map_hand_computed() -> None:
    # Class 0, 3 ground-truth boxes. By score: 0.9 TP, 0.7 TP, 0.6 FP, 0.5 FP.
    #   recall 1/3, 2/3, 2/3, 2/3; precision 1, 1, 2/3, 1/2.
    #   AP = (1/3 - 0) * 1 + (2/3 - 1/3) * 1 + (1 - 2/3) * 0 = 2/3.
    # Class 1, 1 box: 0.8 TP (recall 1, precision 1), 0.4 FP (recall 1, precision 1/2) -> AP = 1.
    # mAP = (2/3 + 1) / 2 = 5/6.
    assert scored().score() == pytest.approx(5 / 6)
    assert scored(batches=2).score() == pytest.approx(5 / 6)


def test_map_bootstrap_resamples() -> None:
    objective = scored()
    assert objective.score(np.arange(2)) == objective.score()
    # [A, A]: class 0 has 2 boxes, TP 0.9 twice then FP 0.6 twice: AP 1; class 1 likewise: AP 1.
    assert objective.score(np.array([0, 0])) == pytest.approx(1.0)
    # [B, B]: class 0 has 4 boxes: 0.7 TP twice (recall 1/2, precision 1), then FPs: AP 1/2.
    # Class 1 has no box in B, so its detections are ignored: mAP = 1/2.
    assert objective.score(np.array([1, 1])) == pytest.approx(0.5)
    # [A, B, B]: class 0 has 1 + 2 * 2 = 5 boxes: 0.9 TP, 0.7 TP, 0.7 TP: recall 3/5 at precision 1,
    # then only FPs: AP 3/5. Class 1: 1 box (A): 0.8 TP first: AP 1. mAP = (3/5 + 1) / 2 = 4/5.
    assert objective.score(np.array([0, 1, 1])) == pytest.approx(0.8)


def test_map_iou_threshold_is_inclusive() -> None:
    # [0,0,10,5] against [0,0,10,10]: IoU 50 / 100 = 0.5, a hit; [0,0,10,4.9]: IoU 0.49, a miss.
    truth = [[Box(0, 0, 0, 10, 10)]]
    assert scored([[Detection(0, 0.9, 0, 0, 10, 5)]], truth).score() == 1.0
    assert scored([[Detection(0, 0.9, 0, 0, 10, 4.9)]], truth).score() == 0.0


def test_map_class_without_detections_counts_zero() -> None:
    # Class 0 found (AP 1), class 1 has a box but no detection (AP 0): mAP 0.5.
    truth = [[Box(0, 0, 0, 10, 10), Box(1, 20, 20, 30, 30)]]
    assert scored([[Detection(0, 0.9, 0, 0, 10, 10)]], truth).score() == 0.5


def test_average_precision_interpolates_precision() -> None:
    # By score: TP, FP, TP with 2 boxes: recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    # Interpolated: recall 0..1/2 at 1, 1/2..1 at 2/3 -> AP = 1/2 + 1/3 = 5/6.
    scores, hits = np.array([0.3, 0.9, 0.5]), np.array([True, True, False])
    assert average_precision(scores, hits, np.ones(3), 2.0) == pytest.approx(5 / 6)


def test_map_with_ssd_decode() -> None:
    objective = create_objective("map", has_labels=True, decode=SSD)
    rows = np.zeros((2, 4, 7), dtype=np.float32)
    rows[0, 0] = [0, 0, 0.9, 0, 0, 10, 10]
    rows[0, 1] = [0, 1, 0.8, 20, 20, 30, 30]
    rows[1, 0] = [1, 0, 0.7, 0, 0, 10, 10]
    rows[1, 1] = [1, 0, 0.005, 50, 50, 60, 60]  # below the 0.01 score floor: dropped
    rows[1, 2:] = [-1, 0, 0.9, 50, 50, 60, 60]  # padding rows: dropped
    objective.update([rows], TRUTH, None)
    # Class 0 (3 boxes): 0.9 TP, 0.7 TP -> recall 2/3 at precision 1: AP 2/3. Class 1: AP 1.
    assert objective.score() == pytest.approx(5 / 6)


def test_ssd_decode_layout() -> None:
    rows = np.zeros((1, 1, 2, 7))
    rows[0, 0, 0] = [0, 3, 0.5, 0.1, 0.2, 0.3, 0.4]
    assert ssd_decode([rows]) == [[Detection(3, 0.5, 0.1, 0.2, 0.3, 0.4)]]  # row 1 has score 0
    with pytest.raises(DataError, match=r"\[N, K, 7\].*got shape \(2, 6\)"):
        ssd_decode([np.zeros((2, 6))])


@pytest.mark.parametrize(
    ("found", "labels", "message"),
    [
        (FOUND, None, "labels=None"),
        (FOUND, [1, 2], "detection labels .*got int 1 for sample 0"),
        (FOUND, [TRUTH[0], [(0, 0, 0, 1, 1)]], "got list .*for sample 1"),
        (FOUND, TRUTH[:1], "2 samples in its outputs but 1 labels"),
        (FOUND[:1], TRUTH, r"one list of Detection per sample \(2 for this batch\), got 1 lists"),
        ([[(0, 0.9, 0, 0, 1, 1)], []], TRUTH, "lists of Detection, got .* for sample 0"),
        (np.zeros((2, 7)), TRUTH, "got ndarray"),
    ],
)
def test_map_bad_input(found, labels, message) -> None:
    objective = MeanAveragePrecision(decode=given(found))
    with pytest.raises(DataError, match=message):
        objective.update([np.zeros((2, 1))], labels, None)


def test_map_without_ground_truth_is_undefined() -> None:
    objective = scored([[Detection(0, 0.9, 0, 0, 1, 1)], []], [[], []])
    with pytest.raises(DataError, match="2 images scored have no ground-truth box"):
        objective.score()
    with pytest.raises(DataError, match="no samples to score"):
        MeanAveragePrecision(decode=ssd_decode).score()
