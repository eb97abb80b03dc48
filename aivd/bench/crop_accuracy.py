"""How well the cloud's crop classifier names defects, apart from the detector's recall.

- ground-truth boxes: every annotated defect of the split, cropped as the edge would crop it. `accuracy` counts
  a crop right when the classifier calls it a defect of the annotated class; `class_accuracy` only asks whether
  the most likely defect class is the annotated one (the paper's crop-accuracy setting).
- edge boxes: the detector's candidates at the proposal threshold. A candidate overlapping a defect
  (IoU > 0.33, the DeepPCB pairing rule) should get that defect's class; one overlapping none should be
  rejected as no-defect.

The verdict is the analyzer's: the classifier's score blended with the edge's score of the box (see
`aivd.cloud.builtin`). A ground-truth box carries the score 1, as if the edge were sure of it.
"""

from __future__ import annotations

import numpy as np

from aivd.cloud.builtin import CropClassifier, edge_scores
from aivd.core import Detections, cut_regions
from aivd.core.detections import box_iou
from aivd.data.images import read_pair
from aivd.edge.detector import Detector
from aivd.eval.protocol import IOU_THRESHOLD


def _score(classifier: CropClassifier, image, template, boxes: Detections, image_id: str):
    regions = cut_regions(image, template, boxes, image_id)
    names, _, is_defect = classifier.decide(classifier.probabilities(regions), edge_scores(regions))
    return np.array(names, dtype=object), is_defect


def crop_accuracy(classifier: CropClassifier, detector: Detector, samples, proposal_threshold: float | None = None) -> dict:
    proposal = classifier.proposal_threshold if proposal_threshold is None else proposal_threshold
    names = classifier.class_names
    confusion = np.zeros((len(names), len(names) + 1), np.int64)  # truth x (predicted class, no-defect)
    gt_strict = gt_class = gt_total = 0
    edge_right = edge_matched = edge_rejected = edge_background = 0
    for sample in samples:
        image, template = read_pair(sample.image_path, sample.template_path)
        truth = sample.ground_truth()
        truth_names = np.array(truth.class_names, dtype=object)
        predicted, is_defect = _score(classifier, image, template, truth, sample.image_id)
        gt_total += len(truth)
        gt_class += int((predicted == truth_names).sum())
        gt_strict += int(((predicted == truth_names) & is_defect).sum())
        for true_name, name, defect in zip(truth_names, predicted, is_defect):
            confusion[names.index(true_name), names.index(name) if defect else len(names)] += 1
        candidates = detector.detect(image, template, proposal)
        if not len(candidates):
            continue
        predicted, is_defect = _score(classifier, image, template, candidates, sample.image_id)
        iou = box_iou(candidates.xyxy, truth.xyxy) if len(truth) else np.zeros((len(candidates), 1))
        matched = iou.max(axis=1) > IOU_THRESHOLD
        owner = iou.argmax(axis=1)
        edge_matched += int(matched.sum())
        edge_right += int((matched & is_defect & (predicted == truth_names[owner] if len(truth) else False)).sum())
        edge_background += int((~matched).sum())
        edge_rejected += int((~matched & ~is_defect).sum())
    return {
        "ground_truth_boxes": {
            "crops": gt_total, "accuracy": round(gt_strict / gt_total, 4), "class_accuracy": round(gt_class / gt_total, 4),
            "confusion": {"rows": names, "columns": [*names, classifier.reject_label], "counts": confusion.tolist()},
        },
        "edge_boxes": {
            "proposal_threshold": proposal,
            "on_defects": edge_matched, "accuracy_on_defects": round(edge_right / max(1, edge_matched), 4),
            "on_background": edge_background, "rejected_background": round(edge_rejected / max(1, edge_background), 4),
        },
        "score_threshold": classifier.score_threshold,
        "model": str(classifier.path),
    }
