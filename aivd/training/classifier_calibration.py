"""Choose the built-in classifier's two thresholds on held-out data, through the real inference path.

The data are the held-out pairs as `HeldOutScoring` gives them (DeepPCB: and their perturbed copies).

The edge proposes every candidate scoring at least the proposal threshold; the cloud keeps those whose defect
probability reaches the score threshold. A lower proposal threshold finds more defects but sends more regions
(each costs cloud time and bytes): the highest proposal threshold whose best F-score on the held-out samples
is within `F_TOLERANCE` of the best of all wins, with the score threshold that gives that F-score. Proposal
thresholds above the edge's own score threshold are not tried (see `calibrate_classifier`).
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
    scored = []  # per pair: edge detections, cloud classes and scores for all of them, ground truth
    for image_id, image, template, truth in scoring.pairs(samples):
        edge = detector.detect(image, template, min(PROPOSAL_CANDIDATES))
        names, confidence, _ = classifier.decide(classifier.probabilities(cut_regions(image, template, edge, image_id)))
        scored.append((image_id, edge, names, confidence, truth))
    table = []
    for proposal in proposals:
        pairs = []
        for image_id, edge, names, confidence, truth in scored:
            keep = np.flatnonzero(edge.confidence >= proposal)
            pairs.append((image_id, cloud_detections(edge[keep], [names[i] for i in keep], confidence[keep]), truth))
        threshold, fscore = scoring.threshold(pairs)
        regions = sum(len(p[1]) for p in pairs)
        table.append({"proposal_threshold": proposal, "score_threshold": threshold, "fscore": round(fscore, 4), "regions_per_image": round(regions / len(pairs), 2)})
    top = max(row["fscore"] for row in table)
    best = [row for row in table if row["fscore"] >= top - F_TOLERANCE][-1]
    write_metadata(classifier_path, {"proposal_threshold": str(best["proposal_threshold"]), "score_threshold": str(best["score_threshold"])})
    return {"chosen": best, "table": table, "edge_threshold": edge_threshold}
