"""The score threshold at which a model is operated on a data set other than DeepPCB: the best F1 on held-out data.

Detections are matched per image in descending confidence, each to the unmatched ground-truth box of the same
class with the highest IoU at or above `iou` (COCO's rule). A detection's match does not depend on the
detections below it, so one matching at the lowest score gives precision and recall at every threshold.
"""

from __future__ import annotations

import numpy as np

from aivd.core import Detections
from aivd.core.detections import box_iou

Predictions = list[tuple[str, Detections, Detections]]  # (image id, detections, ground truth) per image


def matched_detections(detections: Detections, truth: Detections, iou: float = 0.5) -> np.ndarray:
    """Per detection, in `detections.sorted_by_confidence()` order: does it match a ground-truth box?"""
    detections = detections.sorted_by_confidence()
    overlaps = box_iou(detections.xyxy, truth.xyxy)
    overlaps[detections.class_id[:, None] != truth.class_id[None, :]] = -1.0
    taken = np.zeros(len(truth), bool)
    matched = np.zeros(len(detections), bool)
    for index in range(len(detections)):
        candidates = np.where(taken, -1.0, overlaps[index]) if len(truth) else np.zeros(0)
        if len(candidates) and candidates.max() >= iou:
            taken[int(candidates.argmax())] = True
            matched[index] = True
    return matched


def best_f1_threshold(predictions: Predictions, iou: float = 0.5) -> tuple[float, float]:
    """The score threshold with the highest F1 over all images pooled, and that F1; ties go to the lower threshold."""
    scores, hits = [], []
    for _, detections, truth in predictions:
        scores.append(detections.sorted_by_confidence().confidence)
        hits.append(matched_detections(detections, truth, iou))
    truths = sum(len(truth) for _, _, truth in predictions)
    scores, hits = np.concatenate(scores or [np.zeros(0)]), np.concatenate(hits or [np.zeros(0, bool)])
    if not len(scores) or not truths:
        return 0.5, 0.0
    order = np.argsort(-scores, kind="stable")
    scores, true_positives = scores[order], np.cumsum(hits[order])
    # Only the last detection of a run of equal scores is a threshold that can be set.
    cut = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    precision = true_positives[cut] / (cut + 1)
    recall = true_positives[cut] / truths
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.argmax(f1[::-1]))  # last maximum in score order: the lowest threshold reaching it
    index = len(f1) - 1 - best
    return float(scores[cut[index]]), float(f1[index])
