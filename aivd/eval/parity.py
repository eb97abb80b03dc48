"""`aivd eval parity`: how closely pack B (an export) reproduces pack A (its source) on one data set.

Box level: each image's final defects of both packs (at each pack's own threshold: what a user is shown) are
paired greedily, B's boxes in order of confidence with A's, at IoU >= `MATCH_IOU` whatever their classes; a pair
whose classes differ is a class flip, and its score delta is B's confidence less A's. Metric level: every figure
`aivd eval --data` reports for each pack, and B's less A's. B passes when neither its F1 nor its mAP@0.5 (and on
DeepPCB neither the official protocol's F-score nor its AP) is lower than A's by more than the tolerance.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from aivd.core import Detections
from aivd.eval.detection_metrics import Pair, greedy_pairing

MATCH_IOU = 0.5
GUARDED = ("fscore", "map50")  # what a tolerance bounds; the DeepPCB protocol's fscore and ap too, when given


def box_agreement(a: list[Pair], b: list[Pair], a_threshold: float, b_threshold: float) -> dict:
    """Box-level agreement of B's predictions with A's, over the images both could read."""
    b_by_image = {image_id: predictions for image_id, predictions, _ in b}
    matched = flips = only_a = only_b = 0
    deltas: list[np.ndarray] = []
    for image_id, a_predictions, _ in a:
        if image_id not in b_by_image:
            continue
        reference = a_predictions.with_min_confidence(a_threshold).sorted_by_confidence()
        other = b_by_image[image_id].with_min_confidence(b_threshold).sorted_by_confidence()
        pairing = greedy_pairing(other, reference, MATCH_IOU, same_class=False)
        paired = pairing >= 0
        matched += int(paired.sum())
        flips += int((other.class_id[paired] != reference.class_id[pairing[paired]]).sum())
        deltas.append(other.confidence[paired] - reference.confidence[pairing[paired]])
        only_b += int((~paired).sum())
        only_a += len(reference) - int(paired.sum())
    delta = np.concatenate(deltas) if deltas else np.zeros(0)
    size = np.abs(delta)

    def figure(value) -> float | None:
        return round(float(value), 5) if len(delta) else None

    return {
        "iou": MATCH_IOU, "matched": matched, "class_flips": flips, "only_a": only_a, "only_b": only_b,
        "score_delta": {"mean": figure(delta.mean() if len(delta) else 0), "mean_abs": figure(size.mean() if len(delta) else 0),
                        "p95_abs": figure(np.percentile(size, 95) if len(delta) else 0), "max_abs": figure(size.max() if len(delta) else 0)},
    }


def metric_deltas(a: dict, b: dict) -> dict:
    """B's figure less A's, for every number both report (nested as they are; counts of errors and images too)."""
    deltas: dict = {}
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            nested = metric_deltas(value, other)
            if nested:
                deltas[key] = nested
        elif isinstance(value, Real) and isinstance(other, Real) and not isinstance(value, bool):
            deltas[key] = round(float(other) - float(value), 5)
    return deltas


def losses(deltas: dict) -> dict[str, float]:
    """How much B lost on each guarded metric (positive: lower than A's)."""
    found = {name: -deltas[name] for name in GUARDED if name in deltas}
    found |= {f"deeppcb_{name}": -deltas["deeppcb"][name] for name in ("fscore", "ap") if name in deltas.get("deeppcb", {})}
    return {name: round(value, 5) for name, value in found.items()}


def deeppcb_figures(pairs: list[Pair], threshold: float) -> dict:
    """The official DeepPCB protocol's figures of the predictions at `threshold`."""
    from aivd.eval.deeppcb_eval import evaluate_results

    predictions: dict[str, Detections] = {image_id: found.with_min_confidence(threshold) for image_id, found, _ in pairs}
    truth = {image_id: ground_truth for image_id, _, ground_truth in pairs}
    summary = evaluate_results(predictions, truth).summary()
    return {key: summary[key] for key in ("fscore", "ap", "precision", "recall")}
