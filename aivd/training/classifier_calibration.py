"""Choose the built-in classifier's two thresholds on held-out data, through the real inference path.

The data are the held-out pairs as `HeldOutScoring` gives them (DeepPCB: and their perturbed copies).

The edge proposes every candidate scoring at least the proposal threshold; the cloud keeps those whose defect
probability reaches the score threshold. A lower proposal threshold finds more defects but sends more regions
(each costs cloud time and bytes): the highest proposal threshold whose best F-score on the held-out samples
is within `F_TOLERANCE` of the best of all wins, with the score threshold that gives that F-score. Proposal
thresholds above the edge's own score threshold are not tried (see `calibrate_classifier`).

The region's score blends the edge's and the classifier's (`CropClassifier.decide`); its weight is chosen with
the thresholds, from a coarse grid since the held-out pairs cannot tell finer weights apart. Among the weights
that reach the chosen proposal threshold's best F-score (within `F_TOLERANCE`), the one whose scores rank the
held-out defects best (AP) wins: F alone does not see the ranking the blend is for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aivd.cloud.builtin import CropClassifier
from aivd.core import Detections, cut_regions
from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector
from aivd.training.common import write_metadata
from aivd.training.held_out import DeepPCBScoring, HeldOutScoring

PROPOSAL_CANDIDATES = (0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
F_TOLERANCE = 0.001  # about one defect in a thousand: below what the held-out tenth of trainval can resolve
# The classifier alone, the geometric mean (ranks as the product edge x classifier does), the edge's score alone
# with the classifier's class. On the shipped pair 0.25 to 0.75 differed by less than 0.0001 in held-out AP.
EDGE_WEIGHTS = (0.0, 0.5, 1.0)


def cloud_detections(edge: Detections, names: list[str], confidence: np.ndarray) -> Detections:
    """The edge's boxes with the cloud's classes and scores."""
    class_id = np.array([edge.labels.id(n) for n in names], np.int64)
    return Detections(edge.xyxy, confidence, class_id, edge.labels).sorted_by_confidence()


def calibrate_classifier(classifier_path: Path, detector_path: Path | None, samples, scoring: HeldOutScoring = DeepPCBScoring()) -> dict:
    detector = TemplateDetector(detector_path or BUILTIN_MODEL)
    # The cloud must see at least every region the edge would report by itself: with a proposal threshold above
    # the edge's own, the pipeline would drop the edge's defects in between without anyone looking at them.
    edge_threshold = detector.min_confidence
    proposals = [p for p in PROPOSAL_CANDIDATES if p <= edge_threshold] or [min(PROPOSAL_CANDIDATES)]
    classifier = CropClassifier(classifier_path)
    scored = []  # per pair: edge detections, the classifier's probabilities for all of them, ground truth
    for image_id, image, template, truth in scoring.pairs(samples):
        edge = detector.detect(image, template, min(PROPOSAL_CANDIDATES))
        scored.append((image_id, edge, classifier.probabilities(cut_regions(image, template, edge, image_id)), truth))
    table = []
    for weight in EDGE_WEIGHTS:
        decided = [(image_id, edge, *classifier.decide(probs, edge.confidence, edge_weight=weight)[:2], truth)
                   for image_id, edge, probs, truth in scored]
        for proposal in proposals:
            pairs = []
            for image_id, edge, names, confidence, truth in decided:
                keep = np.flatnonzero(edge.confidence >= proposal)
                pairs.append((image_id, cloud_detections(edge[keep], [names[i] for i in keep], confidence[keep]), truth))
            threshold, fscore = scoring.threshold(pairs)
            ranking = scoring.ranking([(i, d.with_min_confidence(threshold), g) for i, d, g in pairs])
            regions = sum(len(p[1]) for p in pairs)
            table.append({"edge_weight": weight, "proposal_threshold": proposal, "score_threshold": threshold, "fscore": round(fscore, 4),
                          "ap": round(ranking, 4), "regions_per_image": round(regions / len(pairs), 2)})
    top = max(row["fscore"] for row in table)
    proposal = max(row["proposal_threshold"] for row in table if row["fscore"] >= top - F_TOLERANCE)
    at_proposal = [row for row in table if row["proposal_threshold"] == proposal]
    best_f = max(row["fscore"] for row in at_proposal)
    best = max((row for row in at_proposal if row["fscore"] >= best_f - F_TOLERANCE), key=lambda row: row["ap"])
    write_metadata(classifier_path, {"proposal_threshold": str(best["proposal_threshold"]), "score_threshold": str(best["score_threshold"]),
                                     "edge_weight": str(best["edge_weight"])})
    return {"chosen": best, "table": table, "edge_threshold": edge_threshold}
