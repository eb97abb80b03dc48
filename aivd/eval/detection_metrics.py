"""Detection metrics for any labelled data set: COCO mAP, precision/recall/F1 per class at a score threshold,
and a confusion matrix.

mAP is computed by `faster-coco-eval` (a maintained, faster drop-in for pycocotools' COCOeval) on COCO
dictionaries built in memory. Its conventions hold: 101-point interpolated precision, IoU >= threshold counts,
at most `MAX_DETECTIONS_PER_IMAGE` detections per image and class (COCO's maxDets, the most confident kept), and
a class without ground truth has no AP (COCO's -1) and is left out of the mean.

At the score threshold, precision/recall/F1 pair each image's detections, by descending confidence, with the
unmatched ground truth of the same class with the highest IoU >= `iou`. The confusion matrix pairs the same way
whatever the classes, so that a box found with the wrong class shows as a confusion rather than as a false
positive plus a miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from aivd.core import Detections, LabelMap
from aivd.core.detections import box_iou
from aivd.eval.metrics import confusion_matrix, per_class
from aivd.eval.protocol import ImageMatch, f_score

Pair = tuple[str, Detections, Detections]  # image id, predictions, ground truth

MAX_DETECTIONS_PER_IMAGE = 100  # COCO's default maxDets, so that figures compare with published ones
IOU_50 = 0  # index of IoU 0.5 in COCO's thresholds 0.50:0.05:0.95
AREA_ALL = 0  # index of COCO's "all" area range


def _check_labels(pairs: list[Pair], labels: LabelMap) -> None:
    """Class ids only mean something against one label map: a pair labelled otherwise is a caller's mistake."""
    for image_id, predictions, truth in pairs:
        for what, detections in (("predictions", predictions), ("ground truth", truth)):
            if detections.labels != labels:
                raise ValueError(f"{image_id}: {what} use classes {', '.join(detections.labels.names)}; expected {', '.join(labels.names)}")


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _silent(*args, **kwargs) -> None:
    """The library reports every step through its print function; evaluation is a library call here."""


def _coco_eval(pairs: list[Pair], labels: LabelMap) -> COCOeval_faster:
    """COCOeval run on the pairs; COCO ids are positive integers, so image k is k + 1 and class c is c + 1."""
    images: list[dict] = []
    annotations: list[dict] = []
    results: list[dict] = []
    for number, (_, predictions, truth) in enumerate(pairs, start=1):
        images.append({"id": number})
        for box, class_id in zip(truth.xyxy, truth.class_id):
            xywh = _xywh(box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": number, "category_id": int(class_id) + 1, "bbox": xywh,
                "area": xywh[2] * xywh[3], "iscrowd": 0,
            })
        for box, class_id, score in zip(predictions.xyxy, predictions.class_id, predictions.confidence):
            results.append({"image_id": number, "category_id": int(class_id) + 1, "bbox": _xywh(box), "score": float(score)})
    categories = [{"id": class_id + 1, "name": name} for class_id, name in enumerate(labels.names)]
    truth_api = COCO({"images": images, "annotations": annotations, "categories": categories}, print_function=_silent)
    evaluation = COCOeval_faster(truth_api, truth_api.loadRes(results), "bbox", print_function=_silent)
    evaluation.params.maxDets = [MAX_DETECTIONS_PER_IMAGE]
    evaluation.evaluate()
    evaluation.accumulate()
    return evaluation


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 5)


def _average_precision(precision: np.ndarray) -> float | None:
    """COCO's average: the mean of the entries that are not -1 (-1: no ground truth), None if all are."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def coco_map(pairs: list[Pair], labels: LabelMap) -> dict:
    """`{"map50", "map50_95", "ap50": {class name: AP@0.5}}`: `predictions` unfiltered, as COCO ranks them all.
    A class without ground truth has AP None; a mean is None when no class has ground truth."""
    _check_labels(pairs, labels)
    # precision[iou threshold, recall point, class, area range, maxDets]
    precision = _coco_eval(pairs, labels).eval["precision"][:, :, :, AREA_ALL, -1]
    return {
        "map50": _rounded(_average_precision(precision[IOU_50])),
        "map50_95": _rounded(_average_precision(precision)),
        "ap50": {name: _rounded(_average_precision(precision[IOU_50, :, c])) for c, name in enumerate(labels.names)},
    }


def greedy_pairing(detections: Detections, ground_truth: Detections, iou: float, same_class: bool) -> np.ndarray:
    """Per detection (in the given order), the index of the ground truth it takes, or -1: each takes the still
    unpaired ground truth (of its own class when `same_class`) with the highest IoU, if that IoU is >= `iou`."""
    overlap = box_iou(detections.xyxy, ground_truth.xyxy)
    if same_class:
        overlap[detections.class_id[:, None] != ground_truth.class_id[None, :]] = -1.0
    det_gt = np.full(len(detections), -1, np.int64)
    taken = np.zeros(len(ground_truth), bool)
    for det_index in range(len(detections) if len(ground_truth) else 0):
        candidates = np.where(taken, -1.0, overlap[det_index])
        best = int(np.argmax(candidates))
        if candidates[best] >= iou:
            det_gt[det_index] = best
            taken[best] = True
    return det_gt


def match_at_threshold(image_id: str, predictions: Detections, truth: Detections, threshold: float, iou: float, same_class: bool) -> ImageMatch:
    """One image's detections at or above `threshold`, sorted by confidence and paired greedily with its truth."""
    detections = predictions.with_min_confidence(threshold).sorted_by_confidence()
    det_gt = greedy_pairing(detections, truth, iou, same_class)
    paired = det_gt >= 0
    correct = np.zeros(len(detections), bool)
    correct[paired] = detections.class_id[paired] == truth.class_id[det_gt[paired]]
    return ImageMatch(image_id, detections, truth, det_gt, correct)


def _pooled(matches: list[ImageMatch]) -> dict:
    correct = sum(m.correct for m in matches)
    detections = sum(len(m.detections) for m in matches)
    truth = sum(len(m.ground_truth) for m in matches)
    precision = correct / detections if detections else 0.0
    recall = correct / truth if truth else 0.0
    return {
        "precision": round(precision, 5), "recall": round(recall, 5), "fscore": round(f_score(precision, recall), 5),
        "ground_truth": truth, "detections": detections, "correct": correct,
    }


def threshold_metrics(pairs: list[Pair], labels: LabelMap, threshold: float, iou: float = 0.5) -> dict:
    """At the score threshold: pooled `precision`, `recall`, `fscore` (and the counts behind them), `per_class`
    (precision, recall, f1, ground_truth, detections, correct), the `confusion` matrix, and `matches`: the
    class-agnostic pairing behind the matrix, per image, for the report."""
    _check_labels(pairs, labels)
    same_class = [match_at_threshold(image_id, p, t, threshold, iou, same_class=True) for image_id, p, t in pairs]
    any_class = [match_at_threshold(image_id, p, t, threshold, iou, same_class=False) for image_id, p, t in pairs]
    return {
        **_pooled(same_class), "threshold": threshold, "iou": iou, "per_class": per_class(same_class, labels),
        "confusion": confusion_matrix(any_class, labels), "matches": any_class,
    }


@dataclass(frozen=True)
class DatasetEval:
    """A data set's evaluation: COCO mAP over all predictions, the rest at the score threshold."""

    map50: float | None
    map50_95: float | None
    precision: float
    recall: float
    fscore: float
    per_class: dict[str, dict]  # name -> ap50, precision, recall, f1, ground_truth, detections, correct
    confusion: dict
    threshold: float
    iou: float
    images: int
    errors: int  # samples that could not be evaluated (unreadable image or annotation), reported by the caller
    ground_truth: int
    detections: int
    correct: int
    matches: list[ImageMatch]  # class-agnostic pairing at the threshold, as the confusion matrix counts

    def to_json(self) -> dict:
        return {
            "map50": self.map50, "map50_95": self.map50_95, "precision": self.precision, "recall": self.recall,
            "fscore": self.fscore,
            "per_class": {name: {key: row[key] for key in ("ap50", "precision", "recall", "f1")} for name, row in self.per_class.items()},
            "images": self.images, "errors": self.errors, "confusion": self.confusion, "threshold": self.threshold,
        }

    def summary(self) -> dict:
        """The headline figures and counts, as `write_report` shows them."""
        return {
            "map50": self.map50, "map50_95": self.map50_95, "fscore": self.fscore, "precision": self.precision,
            "recall": self.recall, "images": self.images, "errors": self.errors, "ground_truth": self.ground_truth,
            "detections": self.detections, "correct": self.correct, "threshold": self.threshold,
        }

    @property
    def protocol(self) -> str:
        """How the figures were computed, in words, for the report."""
        return (
            f"mAP: COCO evaluation of all predictions (101-point interpolation, at most {MAX_DETECTIONS_PER_IMAGE} per image and "
            f"class; a class without ground truth has no AP and is left out of the mean). At score threshold {self.threshold:g}, "
            f"detections by descending confidence each take the unmatched ground truth of their class with the highest "
            f"IoU ≥ {self.iou:g}; the confusion matrix and the images below pair the same way whatever the classes."
        )


def evaluate_detections(pairs: list[Pair], labels: LabelMap, threshold: float, errors: int = 0) -> DatasetEval:
    """Evaluate `(image id, predictions, ground truth)` for every image of a data set: `predictions` unfiltered
    (mAP ranks them all), `threshold` the pack's score threshold for the rest; `errors` counts the samples the
    caller could not evaluate."""
    coco = coco_map(pairs, labels)
    at_threshold = threshold_metrics(pairs, labels, threshold)
    classes = {name: {"ap50": coco["ap50"][name], **row} for name, row in at_threshold["per_class"].items()}
    return DatasetEval(
        map50=coco["map50"], map50_95=coco["map50_95"], precision=at_threshold["precision"], recall=at_threshold["recall"],
        fscore=at_threshold["fscore"], per_class=classes, confusion=at_threshold["confusion"], threshold=threshold,
        iou=at_threshold["iou"], images=len(pairs), errors=errors, ground_truth=at_threshold["ground_truth"],
        detections=at_threshold["detections"], correct=at_threshold["correct"], matches=at_threshold["matches"],
    )
