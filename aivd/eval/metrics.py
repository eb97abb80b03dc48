"""Per-class precision/recall/F1 and a confusion matrix, from any pairing of detections with ground truth.

Both read `ImageMatch`es, so the DeepPCB protocol's pairing and the IoU-greedy pairing of
`aivd.eval.detection_metrics` share them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from aivd.core import LabelMap
from aivd.eval.protocol import ImageMatch, f_score

BACKGROUND = "background"  # a detection paired with no ground truth
MISSED = "missed"  # a ground truth paired with no detection


def per_class(matches: Iterable[ImageMatch], labels: LabelMap) -> dict[str, dict]:
    """For each class: detections of it, ground truths of it, correct ones, precision, recall, F1."""
    n = len(labels)
    detected = np.zeros(n, np.int64)
    truth = np.zeros(n, np.int64)
    correct = np.zeros(n, np.int64)
    for match in matches:
        detected += np.bincount(match.detections.class_id, minlength=n)
        truth += np.bincount(match.ground_truth.class_id, minlength=n)
        correct += np.bincount(match.detections.class_id[match.det_correct], minlength=n)
    table = {}
    for class_id, name in enumerate(labels.names):
        precision = correct[class_id] / detected[class_id] if detected[class_id] else 0.0
        recall = correct[class_id] / truth[class_id] if truth[class_id] else 0.0
        table[name] = {
            "precision": round(float(precision), 5),
            "recall": round(float(recall), 5),
            "f1": round(f_score(precision, recall), 5),
            "ground_truth": int(truth[class_id]),
            "detections": int(detected[class_id]),
            "correct": int(correct[class_id]),
        }
    return table


def confusion_matrix(matches: Iterable[ImageMatch], labels: LabelMap) -> dict:
    """Rows: ground-truth class, then `background`; columns: detected class, then `missed`."""
    n = len(labels)
    matrix = np.zeros((n + 1, n + 1), np.int64)
    for match in matches:
        paired = match.det_gt >= 0
        np.add.at(matrix, (match.ground_truth.class_id[match.det_gt[paired]], match.detections.class_id[paired]), 1)
        np.add.at(matrix[n], match.detections.class_id[~paired], 1)  # a row (and below, a column): views into matrix
        unpaired_gt = np.setdiff1d(np.arange(len(match.ground_truth)), match.det_gt[paired])
        np.add.at(matrix[:, n], match.ground_truth.class_id[unpaired_gt], 1)
    return {"rows": [*labels.names, BACKGROUND], "columns": [*labels.names, MISSED], "counts": matrix.tolist()}
