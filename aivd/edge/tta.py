"""Test-time augmentation for the built-in detector: every image seen in the eight dihedral views.

PCB defect classes do not depend on orientation, and the built-in detector and refiner are trained on all eight
rotations and mirror images of the square (`aivd.training.detector.dihedral`). At inference each view still
gives slightly different candidates and probabilities; averaging them is test-time augmentation, as Ultralytics'
`augment=True` does for YOLO with flips and scales. Here:

- the detector runs on the eight views of the image and its template, and each view's candidates are mapped back
  to the image's pixels;
- `fuse` takes the candidates that overlap as one defect, whose objectness is the mean over the views (a view
  that did not see it counts 0) and whose box is the objectness-weighted mean of the views' boxes;
- the refiner's class probabilities of each fused box are the mean over the eight views of its crop.

It is eight times the detector's and refiner's work, 5.6-6.2 times the time on DeepPCB (a square image's views run
as one batch). Its score threshold is calibrated apart, on the same
held-out pairs as the plain one (`AUGMENTED_THRESHOLD_KEY` in the detector's metadata): averaged scores are less
spread out than single-view ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aivd.core.detections import box_iou

AUGMENTED_THRESHOLD_KEY = "augmented_score_threshold"
VIEWS = tuple((turns, mirrored) for turns in range(4) for mirrored in (False, True))  # (quarter turns, then mirrored)
# A view's candidates count from this objectness, below any threshold: a defect one view sees weakly still adds its
# share to the mean instead of counting 0.
VIEW_FLOOR = 0.02
# Candidates of different views above this IoU are one defect. Above the detector's own NMS IoU (0.5), so that
# two neighbouring defects that one view keeps apart are not merged by the fusion.
FUSE_IOU = 0.55
# Both were set before the one held-out run that chose augmentation (docs/edge.md), not tuned on it.


def view(plane: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """`plane` (H, W, or ... x H x W) turned `turns` quarter turns counter-clockwise, then mirrored left-right."""
    turned = np.rot90(plane, turns, axes=(-2, -1))
    return np.ascontiguousarray(turned[..., ::-1] if mirrored else turned)


def boxes_from_view(xyxy: np.ndarray, turns: int, mirrored: bool, width: int, height: int) -> np.ndarray:
    """(N, 4) xyxy boxes found in `view(image, turns, mirrored)` as boxes in the `width` x `height` image's pixels."""
    corners = np.stack([xyxy[:, [0, 1]], xyxy[:, [2, 1]], xyxy[:, [0, 3]], xyxy[:, [2, 3]]], axis=1).astype(np.float64)
    view_width, view_height = (width, height) if turns % 2 == 0 else (height, width)
    if mirrored:
        corners[..., 0] = view_width - corners[..., 0]
    # One quarter turn counter-clockwise takes (x, y) in a W-wide image to (y, W - x); undo the turns one by one.
    for _ in range(turns):
        before_width = view_height
        x, y = corners[..., 0].copy(), corners[..., 1]
        corners[..., 0], corners[..., 1] = before_width - y, x
        view_width, view_height = view_height, view_width
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)


def fuse(per_view: list[tuple[np.ndarray, np.ndarray, np.ndarray]], min_objectness: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each view's (boxes, objectness, class probabilities), boxes in image pixels, as one such triple of at least
    `min_objectness`: greedily from the most confident candidate, the candidates overlapping it above `FUSE_IOU`
    are one defect, each view counted once by its best candidate there; the box and the class probabilities are
    the objectness-weighted means of those."""
    boxes = np.concatenate([found for found, _, _ in per_view]).reshape(-1, 4).astype(np.float64)
    objectness = np.concatenate([scores for _, scores, _ in per_view]).astype(np.float64)
    classes = np.concatenate([probs for _, _, probs in per_view]).astype(np.float64)
    source = np.concatenate([np.full(len(scores), index) for index, (_, scores, _) in enumerate(per_view)])
    order = np.argsort(-objectness, kind="stable")
    boxes, objectness, classes, source = boxes[order], objectness[order], classes[order], source[order]
    free = np.ones(len(objectness), bool)
    kept_boxes, kept_objectness, kept_classes = [], [], []
    for first in range(len(objectness)):
        if not free[first]:
            continue
        overlapping = np.flatnonzero(free & (box_iou(boxes[first], boxes)[0] > FUSE_IOU))  # `first` among them
        free[overlapping] = False  # a view's second box on the same defect is a duplicate, as in NMS
        members = overlapping[np.unique(source[overlapping], return_index=True)[1]]  # each view's best: sorted by objectness
        mean = objectness[members].sum() / len(per_view)
        if mean >= min_objectness:
            weights = objectness[members, None] / objectness[members].sum()
            kept_boxes.append((boxes[members] * weights).sum(axis=0))
            kept_classes.append((classes[members] * weights).sum(axis=0))
            kept_objectness.append(mean)
    width = classes.shape[1] if classes.ndim == 2 else 0
    return (np.asarray(kept_boxes, np.float32).reshape(-1, 4), np.asarray(kept_objectness, np.float32),
            np.asarray(kept_classes, np.float32).reshape(-1, width))


def mean_over_views(probabilities: Callable[[np.ndarray], np.ndarray], crops: np.ndarray) -> np.ndarray:
    """The mean of `probabilities` (N, C) over the eight views of (N, channels, S, S) square crops, in one run."""
    views = np.concatenate([view(crops, turns, mirrored) for turns, mirrored in VIEWS])
    return probabilities(views).reshape(len(VIEWS), len(crops), -1).mean(axis=0)
