"""The DeepPCB evaluation protocol, as its published ICDAR-2015-derived script computes it.

Per image, detections are sorted by confidence; each ground-truth box in turn is paired with the first
still-unpaired detection whose IoU with it exceeds 0.33, whatever either's class (class-agnostic pairing). A
pair counts as correct only if the classes agree. Precision = correct / detections, recall = correct / ground
truths, F-score = 2PR / (P + R), all pooled over the split. AP is one global figure: all detections of all
images ranked by confidence, precision summed at each correct detection, divided by the number of ground truths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aivd.core import Detections
from aivd.core.detections import box_iou

IOU_THRESHOLD = 0.33
PROTOCOL_DESCRIPTION = (
    "DeepPCB protocol: detections sorted by confidence are paired with ground truth class-agnostically at IoU > 0.33; "
    "a pair is correct when the classes agree. mAP, where shown, is COCO's on the same detections."
)


@dataclass(frozen=True)
class ImageMatch:
    """Outcome of pairing one image's detections (sorted by confidence) with its ground truth."""

    image_id: str
    detections: Detections  # sorted by confidence, the order `det_gt` refers to
    ground_truth: Detections
    det_gt: np.ndarray  # per detection: index of its paired ground truth, or -1
    det_correct: np.ndarray  # per detection: paired and same class

    @property
    def correct(self) -> int:
        return int(self.det_correct.sum())

    @property
    def false_positives(self) -> int:
        return len(self.detections) - self.correct

    @property
    def missed(self) -> int:
        return len(self.ground_truth) - self.correct


def match_image(image_id: str, detections: Detections, ground_truth: Detections, iou_threshold: float = IOU_THRESHOLD) -> ImageMatch:
    detections = detections.sorted_by_confidence()
    iou = box_iou(ground_truth.xyxy, detections.xyxy)
    det_gt = np.full(len(detections), -1, np.int64)
    gt_taken = np.zeros(len(ground_truth), bool)
    for gt_index in range(len(ground_truth)):
        for det_index in range(len(detections)):
            if det_gt[det_index] < 0 and not gt_taken[gt_index] and iou[gt_index, det_index] > iou_threshold:
                det_gt[det_index] = gt_index
                gt_taken[gt_index] = True
                break
    paired = det_gt >= 0
    det_correct = np.zeros(len(detections), bool)
    det_correct[paired] = detections.class_id[paired] == ground_truth.class_id[det_gt[paired]]
    return ImageMatch(image_id, detections, ground_truth, det_gt, det_correct)


def average_precision(confidences: np.ndarray, correct: np.ndarray, num_ground_truth: int) -> float:
    """The script's AP: mean over ground truths of the precision at each correct detection (no interpolation)."""
    if len(confidences) == 0 or num_ground_truth == 0:
        return 0.0
    order = np.argsort(-np.asarray(confidences), kind="stable")
    hits = np.asarray(correct, bool)[order]
    precision_at_rank = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at_rank[hits].sum() / num_ground_truth)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def f_score(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


@dataclass
class ProtocolResult:
    precision: float
    recall: float
    fscore: float
    ap: float
    num_images: int
    num_ground_truth: int
    num_detections: int
    num_correct: int
    matches: list[ImageMatch] = field(repr=False)

    def summary(self) -> dict:
        return {
            "precision": round(self.precision, 5),
            "recall": round(self.recall, 5),
            "fscore": round(self.fscore, 5),
            "ap": round(self.ap, 5),
            "images": self.num_images,
            "ground_truth": self.num_ground_truth,
            "detections": self.num_detections,
            "correct": self.num_correct,
        }


def evaluate(pairs: list[tuple[str, Detections, Detections]], iou_threshold: float = IOU_THRESHOLD) -> ProtocolResult:
    """Evaluate `(image_id, detections, ground_truth)` triples with the official protocol."""
    matches = [match_image(image_id, det, gt, iou_threshold) for image_id, det, gt in pairs]
    num_gt = sum(len(m.ground_truth) for m in matches)
    num_det = sum(len(m.detections) for m in matches)
    num_correct = sum(m.correct for m in matches)
    precision = _ratio(num_correct, num_det)
    recall = _ratio(num_correct, num_gt)
    confidences = np.concatenate([m.detections.confidence for m in matches]) if matches else np.zeros(0)
    correct = np.concatenate([m.det_correct for m in matches]) if matches else np.zeros(0, bool)
    return ProtocolResult(
        precision=precision,
        recall=recall,
        fscore=f_score(precision, recall),
        ap=average_precision(confidences, correct, num_gt),
        num_images=len(matches),
        num_ground_truth=num_gt,
        num_detections=num_det,
        num_correct=num_correct,
        matches=matches,
    )


def best_threshold(pairs: list[tuple[str, Detections, Detections]], candidates=None) -> tuple[float, float]:
    """The score threshold maximising the F-score on these pairs (for calibrating on a validation split)."""
    candidates = np.round(np.arange(0.05, 0.96, 0.01), 2) if candidates is None else candidates
    best = (0.0, -1.0)
    for threshold in candidates:
        result = evaluate([(i, d.with_min_confidence(float(threshold)), g) for i, d, g in pairs])
        if result.fscore > best[1]:
            best = (float(threshold), result.fscore)
    return best
