"""What a human review teaches the online learner: `ReviewFeed` reads new reviews from the review store and hands
each reviewed image to an `OnlineUpdater` with top trust (`OnlineUpdater.observe_review`).

The same feed serves `aivd bench collab --review-share` and a live run, so both learn from reviews exactly as the
console stores them. A reviewed image's labels are its newest review's boxes; the machine's candidates that no
human box covers (IoU below `NEGATIVE_IOU` with all of them) are its negatives, the false alarms a refiner with
`no-defect` learns to reject, as it learns the ones the cloud rejected.

Given the pipeline it teaches, whose `trust` is a `TierTrust` (aivd.pipeline.trust), the feed also has each reviewed
image judged by both tiers as they are now, so that the merge learns which tier to believe.
"""

from __future__ import annotations

import logging

import numpy as np

from aivd.core import Detections, LabelMap
from aivd.core.detections import box_iou
from aivd.data.images import ImageError, read_pair
from aivd.review.store import Review, ReviewStore

log = logging.getLogger(__name__)

# Below the 0.5 at which the protocol counts a box found: a candidate that loosely covers a labelled defect is
# neither a positive nor a negative, as in the cloud classifier's training (aivd.training.cloud_classifier).
NEGATIVE_IOU = 0.25


class ReviewFeed:
    """Polls the review store at `url` for reviews newer than the last it read (`ReviewStore.reviewed_since`)."""

    def __init__(self, url: str, labels: LabelMap, pipeline=None) -> None:
        self.store, self.labels = ReviewStore(url), labels
        self.pipeline = pipeline  # an EdgeCloudPipeline with a TierTrust, or None
        self.last_id = 0  # the newest review read so far

    def close(self) -> None:
        self.store.close()

    def teach(self, updater, position: int | None = None) -> list[dict]:
        """Hand every review stored since the last call to `updater`; returns the records of the updates they ran."""
        newest: dict[int, Review] = {}
        for review in self.store.reviewed_since(self.last_id):
            newest[review.image_row_id] = review  # a later review of the same image supersedes the earlier
            self.last_id = review.id
        records = []
        for review in newest.values():
            try:
                image, template = read_pair(review.image, review.template)
            except ImageError as error:  # moved or deleted since it was inspected: nothing to learn from
                log.warning("review %s of image %s not learnt from: %s", review.id, review.image_row_id, error)
                continue
            labels = review.detections(self.labels)
            if self.pipeline is not None and self.pipeline.trust is not None:
                self.pipeline.trust.review(self.pipeline, image, template, review.image_id, labels)
            record = updater.observe_review(review.image_id, image, template, labels, self.negatives(review, labels), position)
            if record is not None:
                records.append(record)
        return records


    def negatives(self, review: Review, labels: Detections) -> np.ndarray:
        candidates = self.store.machine_boxes(review.image_row_id)
        if not len(candidates) or not len(labels):
            return candidates
        return candidates[box_iou(candidates, labels.xyxy).max(axis=1) < NEGATIVE_IOU]
