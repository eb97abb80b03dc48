"""The score threshold at which a model is operated on a data set other than DeepPCB: the best F1 on held-out data.

Detections are paired per image as `threshold_metrics` pairs them (`greedy_pairing`: descending confidence, each to
the unpaired ground truth of its class with the highest IoU >= `iou`). A detection's pairing does not depend on
the detections below it, so one pairing at the lowest score gives precision and recall at every threshold.
"""

from __future__ import annotations

import numpy as np

from aivd.core import Detections
from aivd.eval.detection_metrics import greedy_pairing

Predictions = list[tuple[str, Detections, Detections]]  # (image id, detections, ground truth) per image


def best_f1_threshold(predictions: Predictions, iou: float = 0.5) -> tuple[float, float]:
    """The score threshold with the highest F1 over all images pooled, and that F1; ties go to the lower threshold."""
    image_scores, image_hits = [], []
    for _, detections, truth in predictions:
        ranked = detections.sorted_by_confidence()
        image_scores.append(ranked.confidence)
        image_hits.append(greedy_pairing(ranked, truth, iou, same_class=True) >= 0)
    truths = sum(len(truth) for _, _, truth in predictions)
    scores, hits = np.concatenate(image_scores or [np.zeros(0)]), np.concatenate(image_hits or [np.zeros(0, bool)])
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
