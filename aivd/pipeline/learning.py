"""Online learning from the pipeline's own results: what an image's result teaches the `OnlineUpdater`.

The same function feeds the updater in `aivd bench collab`'s online pass and in a live run, so both learn from
exactly the same labels: the final defects as the image's labels (the cloud's, where a `TierTrust` kept the edge's), the edge's agreement with the cloud on the
regions sent, and the boxes the cloud rejected as negatives.
"""

from __future__ import annotations

import numpy as np

from aivd.pipeline.engine import BELOW_PROPOSAL, ImageResult


def cloud_rejected_boxes(result: ImageResult) -> np.ndarray:
    """(N, 4) boxes of the candidates the cloud judged not to be defects."""
    boxes = [record.bbox for record in result.rejected if record.source != "edge" and record.offload is not None and record.offload.sent]
    return np.array(boxes, np.float32).reshape(-1, 4)


def regions_sent(result: ImageResult) -> int:
    return sum(1 for record in [*result.defects, *result.rejected] if record.offload is not None and record.offload.sent)


def fully_labelled(result: ImageResult) -> bool:
    """Whether the cloud decided every candidate it could be sent (those at the proposal threshold)."""
    return all(record.offload is None or record.offload.sent or record.offload.reason == BELOW_PROPOSAL
               for record in [*result.defects, *result.rejected])


def learn_from(updater, image_id: str, image: np.ndarray, template: np.ndarray | None, result: ImageResult,
               position: int | None = None) -> dict | None:
    """Give `updater` (an `OnlineUpdater`) one inspected image; returns the update's record when one ran."""
    if result.cloud_error is not None:
        return None  # without the cloud's answers the image teaches nothing
    agrees = result.edge_agrees if result.edge_agrees is not None else np.zeros(0, bool)
    # Where the trust kept the edge's decisions, the learner is still taught the cloud's answers: an edge taught its
    # own decisions learns nothing, and the gate, on reviewed images, rejects a candidate that copies the cloud's errors.
    labels, rejected = result.cloud_labels or (result.detections, cloud_rejected_boxes(result))
    return updater.observe(image_id, image, template, labels, regions_sent(result), agrees, position,
                           rejected=rejected, fully_labelled=fully_labelled(result))
