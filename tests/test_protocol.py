"""The DeepPCB protocol on hand-computed cases."""

import pytest
from conftest import dets

from aivd.core import DEEPPCB_CLASSES
from aivd.eval.metrics import confusion_matrix, per_class
from aivd.eval.protocol import average_precision, evaluate, match_image


def test_pairing_is_class_agnostic_so_a_wrong_class_blocks_a_later_right_one():
    truth = dets([[0, 0, 10, 10]], classes=[0])
    # The higher-scoring detection has the wrong class; it takes the pair, and the right one stays unpaired.
    found = dets([[0, 0, 10, 10], [0, 0, 10, 10]], scores=[0.9, 0.8], classes=[1, 0])
    match = match_image("a", found, truth)
    assert match.det_gt.tolist() == [0, -1]
    assert match.det_correct.tolist() == [False, False]
    assert (match.correct, match.false_positives, match.missed) == (0, 2, 1)


def test_iou_must_exceed_033_strictly():
    truth = dets([[0, 0, 100, 100]])
    exactly = dets([[0, 0, 33, 100]])  # IoU = 0.33
    above = dets([[0, 0, 34, 100]])  # IoU = 0.34
    assert match_image("a", exactly, truth).correct == 0
    assert match_image("a", above, truth).correct == 1


def test_ground_truth_takes_the_most_confident_overlapping_detection_not_the_best_overlap():
    truth = dets([[0, 0, 10, 10]])
    found = dets([[0, 0, 10, 10], [2, 0, 12, 10]], scores=[0.5, 0.9])  # IoU 1.0 at 0.5, IoU 0.67 at 0.9
    match = match_image("a", found, truth)
    assert match.detections.confidence.tolist() == pytest.approx([0.9, 0.5])
    assert match.det_gt.tolist() == [0, -1]


def test_global_precision_recall_f_and_ap():
    truth_a = dets([[0, 0, 10, 10], [50, 50, 60, 60]], classes=[0, 2])
    truth_b = dets([[0, 0, 10, 10]], classes=[5])
    found_a = dets([[0, 0, 10, 10], [100, 100, 110, 110]], scores=[0.9, 0.7], classes=[0, 3])
    found_b = dets([[0, 0, 10, 10]], scores=[0.8], classes=[5])
    result = evaluate([("a", found_a, truth_a), ("b", found_b, truth_b)])
    assert (result.num_correct, result.num_detections, result.num_ground_truth) == (2, 3, 3)
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.fscore == pytest.approx(2 / 3)
    # Ranked 0.9 (hit), 0.8 (hit), 0.7 (miss): AP = (1/1 + 2/2) / 3 ground truths.
    assert result.ap == pytest.approx(2 / 3)


def test_average_precision_sums_precision_at_hits_only():
    assert average_precision([0.9, 0.8, 0.7, 0.6], [True, False, True, True], 5) == pytest.approx((1 + 2 / 3 + 3 / 4) / 5)
    assert average_precision([], [], 3) == 0.0


def test_per_class_and_confusion_matrix():
    truth = dets([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], classes=[0, 1, 2])
    found = dets([[0, 0, 10, 10], [50, 50, 60, 60], [200, 200, 210, 210]], scores=[0.9, 0.8, 0.5], classes=[0, 3, 4])
    result = evaluate([("a", found, truth)])
    table = per_class(result.matches, DEEPPCB_CLASSES)
    assert table["open"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "ground_truth": 1, "detections": 1, "correct": 1}
    assert table["short"]["recall"] == 0.0 and table["spur"]["precision"] == 0.0
    matrix = confusion_matrix(result.matches, DEEPPCB_CLASSES)
    counts = {(r, c): n for r, row in zip(matrix["rows"], matrix["counts"]) for c, n in zip(matrix["columns"], row) if n}
    assert counts == {("open", "open"): 1, ("short", "spur"): 1, ("mousebite", "missed"): 1, ("background", "copper"): 1}


def test_per_group_figures_come_from_the_same_pairing():
    from aivd.eval.deeppcb_eval import evaluate_results

    truth = {"a": dets([[0, 0, 10, 10]], classes=[0]), "b": dets([[0, 0, 10, 10]], classes=[1])}
    found = {"a": dets([[0, 0, 10, 10]], scores=[0.9], classes=[0]), "b": dets([[0, 0, 10, 10]], scores=[0.9], classes=[2])}
    output = evaluate_results(found, truth, {"a": "group1", "b": "group2"})
    assert output.groups["group1"]["fscore"] == 1.0 and output.groups["group2"]["fscore"] == 0.0
    assert output.to_json()["fscore"] == pytest.approx(0.5)
    # COCO mAP of the same predictions: open found (AP 1), short missed (AP 0); mousebite has no truth, so no AP.
    assert (output.to_json()["map50"], output.to_json()["map50_95"]) == (0.5, 0.5)
    assert output.classes["mousebite"]["ap50"] is None and output.classes["open"]["ap50"] == 1.0
