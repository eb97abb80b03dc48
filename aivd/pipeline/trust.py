"""Which tier decides the regions sent to the cloud, learnt from human reviews (`TierTrust`).

The merge (`aivd.pipeline.engine.merge_tiers`) lets the cloud decide every region it is sent, on the assumption
that the cloud is the stronger tier. A drift can break that: under a strong blur the DeepPCB cloud classifier
(F 0.865 with every region sent) is weaker than the edge (0.898), and a pipeline that sends it half the regions
scores below its own edge. Only a human can tell which tier is right, so each reviewed image is run through both
tiers again and, for every candidate the cloud could be sent, each tier's decision is scored against the
reviewer's boxes (`region_verdicts`). Over the newest `window` of those regions, a one-sided sign test on the ones
where exactly one tier is right says whether the cloud is measurably worse than the edge; while it is, the merge
keeps the edge's decisions (the cloud is still asked, so the drift monitor and the learner keep its answers), and
as newer reviews push the evidence out of the window, the cloud decides again. A sign test with `alpha` 0.05 needs
at least 5 such regions, all of them won by the edge: a handful of reviews cannot flip the merge by chance.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import numpy as np

from aivd.cloud.analyzer import AnalyzerError
from aivd.core import Detections
from aivd.core.detections import box_iou
from aivd.pipeline.engine import CloudAnswers, EdgeCloudPipeline

log = logging.getLogger(__name__)

# The protocol's match: a box is found when a detection of its class overlaps it by IoU >= 0.5 (aivd.eval.protocol).
MATCH_IOU = 0.5


def region_verdicts(boxes: np.ndarray, keeps: np.ndarray, class_id: np.ndarray, truth: Detections) -> np.ndarray:
    """Per region, whether one tier's decision on it is the reviewer's: a kept region is right when a reviewed box
    of its class overlaps it by `MATCH_IOU`, a dropped one when no reviewed box does."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(truth):
        return ~np.asarray(keeps, bool)
    overlaps = box_iou(boxes, truth.xyxy) >= MATCH_IOU
    same_class = overlaps & (np.asarray(class_id)[:, None] == truth.class_id[None, :])
    return np.where(keeps, same_class.any(axis=1), ~overlaps.any(axis=1))


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of `wins` or more of `wins + losses` fair coin tosses (the exact binomial tail)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


class TierTrust:
    """Whether the cloud decides the regions it is sent (`cloud_decides`), from the reviewed regions (`observe`,
    `review`). One thread observes; any may read `cloud_decides`."""

    def __init__(self, window: int = 200, alpha: float = 0.05) -> None:
        if window < 1 or not 0 < alpha < 1:
            raise ValueError(f"window must be at least 1 and alpha in (0, 1), got {window} and {alpha}")
        self.alpha = alpha
        self.verdicts: deque[tuple[bool, bool]] = deque(maxlen=window)  # (edge right, cloud right), newest last
        # Published as a plain bool after each observation: in a live run the merge reads it on the inspecting
        # thread while the learner's thread observes, and must neither wait nor iterate a changing window.
        self.cloud_decides = True

    def observe(self, edge_right: np.ndarray, cloud_right: np.ndarray) -> None:
        """Record, per reviewed region the cloud could be sent, whether each tier's decision was the reviewer's."""
        self.verdicts.extend(zip(np.asarray(edge_right, bool).tolist(), np.asarray(cloud_right, bool).tolist()))
        # False while the reviewed regions show the cloud wrong more often than the edge, at level `alpha`.
        self.cloud_decides = sign_test(self.edge_wins, self.cloud_wins) >= self.alpha

    def review(self, pipeline: EdgeCloudPipeline, image: np.ndarray, template: np.ndarray | None, image_id: str,
               truth: Detections) -> None:
        """Run a reviewed image through both tiers of `pipeline` as they are now, every candidate the cloud could be
        sent sent to it (not through the pipeline's own offloader, whose budget must not count it), and record how
        each tier's decisions compare with the reviewer's boxes `truth`."""
        if pipeline.analyzer is None:
            return
        proposal = pipeline.sending_all().propose(image, template, image_id)
        if not proposal.regions:
            return
        try:
            analyses = list(pipeline.analyzer.analyze(proposal.regions))
        except AnalyzerError as error:  # the cloud is down: the review still teaches the learner, not the trust
            log.warning("reviewed image %s not judged: %s", image_id, error)
            return
        sent = proposal.decision.sent
        cloud = CloudAnswers.of(analyses, sent, pipeline.labels)
        candidates = proposal.candidates[sent]
        edge_keeps = candidates.confidence >= proposal.edge_threshold
        self.observe(region_verdicts(candidates.xyxy, edge_keeps, candidates.class_id, truth),
                     region_verdicts(candidates.xyxy, cloud.keeps[sent], cloud.class_id[sent], truth))

    @property
    def edge_wins(self) -> int:
        return sum(edge and not cloud for edge, cloud in self.verdicts)

    @property
    def cloud_wins(self) -> int:
        return sum(cloud and not edge for edge, cloud in self.verdicts)

    def summary(self) -> dict:
        return {"cloud_decides": self.cloud_decides, "regions": len(self.verdicts), "edge_wins": self.edge_wins,
                "cloud_wins": self.cloud_wins}
