"""Detection metrics for any data set on hand-made cases with known answers."""

import numpy as np
import pytest

from aivd.core import DEEPPCB_CLASSES, Detections, LabelMap
from aivd.eval.detection_metrics import coco_map, evaluate_detections, greedy_pairing, threshold_metrics
from aivd.eval.report import write_report

STEEL = LabelMap(("crazing", "inclusion", "scratches"))


def boxes(rows, labels=STEEL) -> Detections:
    """`rows` of (x1, y1, x2, y2, class name[, score]); ground truth has no score (1.0)."""
    rows = list(rows)
    return Detections(
        np.array([r[:4] for r in rows], np.float32).reshape(-1, 4),
        np.array([r[5] if len(r) > 5 else 1.0 for r in rows]),
        np.array([labels.id(r[4]) for r in rows], np.int64),
        labels,
    )


NONE = boxes([])
CRAZING = (0, 0, 100, 100, "crazing")
SCRATCH = (200, 200, 260, 240, "scratches")


def test_a_perfect_prediction_scores_one():
    pairs = [("a", boxes([(*CRAZING, 0.9), (*SCRATCH, 0.8)]), boxes([CRAZING, SCRATCH]))]
    result = coco_map(pairs, STEEL)
    assert result["map50"] == 1.0 and result["map50_95"] == 1.0
    assert result["ap50"] == {"crazing": 1.0, "inclusion": None, "scratches": 1.0}


def test_one_missed_box_of_two_halves_recall_so_ap_is_51_of_101_recall_points():
    pairs = [("a", boxes([(*CRAZING, 0.9)]), boxes([CRAZING, (300, 300, 350, 350, "crazing")]))]
    # Precision 1 at recall points 0.00..0.50 (51 of COCO's 101), 0 beyond.
    assert coco_map(pairs, STEEL)["ap50"]["crazing"] == pytest.approx(51 / 101, abs=1e-5)


def test_a_wrong_class_is_no_hit_for_either_class():
    pairs = [("a", boxes([(0, 0, 100, 100, "inclusion", 0.9)]), boxes([CRAZING]))]
    result = coco_map(pairs, STEEL)
    assert result["ap50"] == {"crazing": 0.0, "inclusion": None, "scratches": None}
    assert result["map50"] == 0.0


def test_a_duplicate_is_a_false_positive_after_the_hit():
    truth = boxes([CRAZING, (300, 300, 400, 400, "crazing")])
    # Ranked: hit (0.9), duplicate of it (0.8), hit (0.7): precision 1, 1/2, 2/3 at recall 0.5, 0.5, 1.0.
    found = boxes([(*CRAZING, 0.9), (2, 0, 102, 100, "crazing", 0.8), (300, 300, 400, 400, "crazing", 0.7)])
    # Interpolated precision: 1 up to recall 0.5 (51 points), 2/3 beyond (50 points).
    assert coco_map([("a", found, truth)], STEEL)["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-5)


def test_a_box_at_iou_06_counts_at_05_but_not_at_075():
    found = boxes([(0, 0, 100, 62, "crazing", 0.9)])  # IoU 0.62 with CRAZING
    result = coco_map([("a", found, boxes([CRAZING]))], STEEL)
    assert result["map50"] == 1.0
    # A hit at IoU thresholds 0.50, 0.55 and 0.60 only: 3 of the 10.
    assert result["map50_95"] == pytest.approx(0.3)
    assert result["map50_95"] < result["map50"]


def test_images_without_truth_or_predictions_count_and_a_class_without_truth_is_left_out_of_the_mean():
    pairs = [
        ("empty", NONE, NONE),
        ("hit", boxes([(*CRAZING, 0.9)]), boxes([CRAZING])),
        ("false alarm", boxes([(*SCRATCH, 0.5)]), NONE),  # scratches has no ground truth anywhere
    ]
    result = coco_map(pairs, STEEL)
    assert result["ap50"]["scratches"] is None and result["ap50"]["inclusion"] is None
    assert result["map50"] == 1.0  # the mean of crazing's AP alone
    assert coco_map([("empty", NONE, NONE)], STEEL)["map50"] is None
    assert coco_map([], STEEL)["map50"] is None
    assert coco_map([("nothing found", NONE, boxes([CRAZING]))], STEEL)["map50"] == 0.0


def test_more_detections_than_max_dets_per_image_and_class_keeps_the_most_confident():
    # 120 false alarms far from the truth score above the one hit: with 100 kept, the hit is dropped.
    alarms = [(500 + 3 * i, 500, 502 + 3 * i, 502, "crazing", 0.95) for i in range(120)]
    pairs = [("a", boxes([*alarms, (*CRAZING, 0.5)]), boxes([CRAZING]))]
    assert coco_map(pairs, STEEL)["map50"] == 0.0


def test_predictions_with_another_label_map_are_refused_naming_the_image():
    with pytest.raises(ValueError, match="board7: predictions use classes open, short"):
        coco_map([("board7", Detections.empty(DEEPPCB_CLASSES), NONE)], STEEL)


def test_greedy_pairing_takes_the_highest_iou_unmatched_truth_of_the_same_class():
    truth = boxes([(0, 0, 100, 100, "crazing"), (10, 0, 110, 100, "crazing"), (10, 0, 110, 100, "inclusion")])
    found = boxes([(10, 0, 110, 100, "crazing", 0.9), (10, 0, 110, 100, "crazing", 0.8)])
    # The first takes truth 1 (IoU 1.0), the second the best left of its class: truth 0 (IoU 0.82), not 2.
    assert greedy_pairing(found, truth, 0.5, same_class=True).tolist() == [1, 0]
    assert greedy_pairing(found, truth, 0.9, same_class=True).tolist() == [1, -1]
    # Whatever the class, the second takes the inclusion box (IoU 1.0).
    assert greedy_pairing(found, truth, 0.5, same_class=False).tolist() == [1, 2]
    assert greedy_pairing(found, NONE, 0.5, same_class=False).tolist() == [-1, -1]


def test_threshold_metrics_per_class_and_confusion():
    truth_a = boxes([CRAZING, SCRATCH])
    found_a = boxes([(*CRAZING, 0.9), (200, 200, 260, 240, "inclusion", 0.8), (400, 400, 450, 450, "crazing", 0.2)])
    truth_b = boxes([(0, 0, 50, 50, "inclusion")])
    found_b = boxes([(0, 0, 50, 50, "inclusion", 0.7), (300, 300, 350, 350, "scratches", 0.6)])
    result = threshold_metrics([("a", found_a, truth_a), ("b", found_b, truth_b)], STEEL, threshold=0.5)
    # At 0.5: four detections (the 0.2 one is dropped), two right, three truths.
    assert (result["correct"], result["detections"], result["ground_truth"]) == (2, 4, 3)
    assert result["precision"] == 0.5 and result["recall"] == pytest.approx(2 / 3, abs=1e-5)
    assert result["fscore"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), abs=1e-5)
    assert result["per_class"]["crazing"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "ground_truth": 1, "detections": 1, "correct": 1}
    assert result["per_class"]["inclusion"]["precision"] == 0.5 and result["per_class"]["inclusion"]["recall"] == 1.0
    assert result["per_class"]["scratches"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "ground_truth": 1, "detections": 1, "correct": 0}
    matrix = result["confusion"]
    counts = {(r, c): n for r, row in zip(matrix["rows"], matrix["counts"]) for c, n in zip(matrix["columns"], row) if n}
    # The scratch found as inclusion is a confusion, not a false alarm plus a miss.
    assert counts == {("crazing", "crazing"): 1, ("scratches", "inclusion"): 1, ("inclusion", "inclusion"): 1, ("background", "scratches"): 1}
    lower = threshold_metrics([("a", found_a, truth_a)], STEEL, threshold=0.1)
    assert lower["per_class"]["crazing"]["precision"] == 0.5


def test_evaluate_detections_json_has_exactly_the_contract_keys():
    pairs = [("a", boxes([(*CRAZING, 0.9), (*SCRATCH, 0.3)]), boxes([CRAZING, SCRATCH])), ("b", NONE, NONE)]
    evaluation = evaluate_detections(pairs, STEEL, threshold=0.5, errors=2)
    report = evaluation.to_json()
    assert set(report) == {"map50", "map50_95", "precision", "recall", "fscore", "per_class", "images", "errors", "confusion", "threshold"}
    assert report["per_class"]["scratches"] == {"ap50": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}  # below the threshold
    assert report["per_class"]["inclusion"]["ap50"] is None
    assert (report["map50"], report["precision"], report["recall"], report["images"], report["errors"]) == (1.0, 1.0, 0.5, 2, 2)


def test_the_report_renders_for_any_label_map(tmp_path):
    import cv2

    image_path = tmp_path / "plate.png"
    cv2.imwrite(str(image_path), np.full((300, 300), 128, np.uint8))
    pairs = [
        ("plate", boxes([(0, 0, 100, 100, "inclusion", 0.9)]), boxes([CRAZING, SCRATCH])),
        ("clean plate", NONE, NONE),
    ]
    evaluation = evaluate_detections(pairs, STEEL, threshold=0.5)
    path = write_report(
        tmp_path / "report" / "eval.html", "NEU-DET val", evaluation.summary(), evaluation.per_class, evaluation.confusion,
        evaluation.matches, {"plate": image_path}, protocol=evaluation.protocol,
    )
    html = path.read_text(encoding="utf-8")
    for name in STEEL.names:
        assert f"<td>{name}</td>" in html and f"<th>{name}</th>" in html
    assert "mAP@0.5:0.95" in html and "AP@0.5" in html and "DeepPCB" not in html
    assert "No AP for inclusion:" in html
    assert "crazing detected as inclusion (0.90)" in html and "missed scratches at [200, 200, 260, 240]" in html
    assert html.count("data:image/jpeg;base64,") == 1  # the erroneous image drawn, the clean one left out
