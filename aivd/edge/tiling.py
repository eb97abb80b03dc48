"""Images much larger than a detector's input, inspected in overlapping tiles whose detections are merged.

The edge detectors are fully convolutional and trained on images of a few hundred pixels (DeepPCB: 640 x 640).
A 3034 x 1586 board or a 9000 x 9000 scan is cut into `tile_size` tiles that overlap by at least the largest
defect expected, so that every defect lies whole inside some tile. Tiles are detected one after another (one
tile's input in memory at a time), their boxes moved back to image pixels and merged:

1. A box cut by an inner tile edge (touching a tile border that is not an image border) is a piece of a defect
   that the neighbouring tile sees whole; it gives way to that tile's box where the latter covers it.
2. Pieces left over belong to defects no tile saw whole (larger than the overlap): overlapping pieces from
   different tiles are joined into their union, with the best piece's score and class.
3. A class-agnostic NMS removes the duplicates of a defect that two overlapping tiles both see whole.

This is SAHI's slicing with a smaller merge: SAHI's greedy NMM unions every pair of overlapping boxes; here a
whole view wins, so a defect keeps the extent and class decided by a tile that saw all of it, and only pieces
are unioned.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from aivd.core import Detections, LabelMap
from aivd.edge.detector import Detector, detect_batch

# An image whose longer side is at most this many tiles goes to the detector whole: a fully convolutional model
# is as good on an input somewhat larger than the ones it was trained on, and cutting such an image would run it
# on two to four mostly overlapping tiles (twice the work or more) and add seams for nothing. Memory stays
# bounded: 1.5 tiles a side is 2.25 tiles of pixels.
WHOLE_IMAGE_FACTOR = 1.5
DEFAULT_OVERLAP_FRACTION = 0.25
MERGE_NMS_IOU = 0.5
# A box within this many pixels of an inner tile edge counts as cut. Generous on purpose: a box wrongly taken
# for cut only gives way to another tile's box that covers it, i.e. to a whole view of the same defect.
CUT_MARGIN = 4.0
CUT_COVERED = 0.5  # the share of a cut box another tile's whole box must cover to replace it
MIN_TILE_SIZE = 32  # the smallest image side aivd accepts (ImageLimits.min_side)


def tile_origins(length: int, tile_size: int, overlap: int) -> list[int]:
    """Where the tiles start along one axis of `length` px: every `tile_size - overlap` px, the last one shifted
    inwards so that it ends at the image's edge and every tile is full size (one tile when the axis fits in one)."""
    if length <= tile_size:
        return [0]
    return [*range(0, length - tile_size, tile_size - overlap), length - tile_size]


class TiledDetector:
    """Wraps a `Detector` so that large images are detected in overlapping tiles; a `Detector` itself.

    `overlap` (px, default a quarter of the tile) must be at least the largest defect expected: a defect larger
    than it may be cut by every tile that contains part of it and is then reported in pieces.
    """

    def __init__(self, detector: Detector, tile_size: int, overlap: int | None = None):
        overlap = int(tile_size * DEFAULT_OVERLAP_FRACTION) if overlap is None else overlap
        if tile_size < MIN_TILE_SIZE:
            raise ValueError(f"tile size must be at least {MIN_TILE_SIZE} px; got {tile_size}")
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must be 0..{tile_size - 1} px for {tile_size} px tiles; got {overlap}")
        self.detector = detector
        self.tile_size = tile_size
        self.overlap = overlap

    # Delegated, not copied, so that a hot-swapping detector's current model shows through. The name gets no
    # suffix: records and the database name the model, and tiling does not change which model it is.
    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def labels(self) -> LabelMap:
        return self.detector.labels

    @property
    def uses_template(self) -> bool:
        return self.detector.uses_template

    @property
    def min_confidence(self) -> float:
        return self.detector.min_confidence

    def tiles(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The windows `(left, top, right, bottom)` detected for a `width` x `height` image, row by row."""
        if max(width, height) <= self.tile_size * WHOLE_IMAGE_FACTOR:
            return [(0, 0, width, height)]
        xs = tile_origins(width, self.tile_size, self.overlap)
        ys = tile_origins(height, self.tile_size, self.overlap)
        return [(x, y, min(x + self.tile_size, width), min(y + self.tile_size, height)) for y in ys for x in xs]

    def detect_batch(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None],
                     min_confidence: float | None = None) -> list[Detections]:
        """`detect` of each image, in order: the images detected whole go to the inner detector as one batch."""
        for image, template in zip(images, templates):
            _check_template(image, template)
        whole = [i for i, image in enumerate(images) if len(self.tiles(image.shape[1], image.shape[0])) == 1]
        found: list = [None] * len(images)
        for index, detections in zip(whole, detect_batch(self.detector, [images[i] for i in whole], [templates[i] for i in whole], min_confidence)):
            found[index] = detections
        return [self.detect(image, template, min_confidence) if detections is None else detections
                for image, template, detections in zip(images, templates, found)]

    def detect(self, image: np.ndarray, template: np.ndarray | None = None, min_confidence: float | None = None) -> Detections:
        _check_template(image, template)
        height, width = image.shape[:2]
        tiles = self.tiles(width, height)
        if len(tiles) == 1:
            return self.detector.detect(image, template, min_confidence)
        parts, cut, tile_of_box = [], [], []
        for index, (left, top, right, bottom) in enumerate(tiles):
            window = (slice(top, bottom), slice(left, right))
            found = self.detector.detect(image[window], None if template is None else template[window], min_confidence)
            xyxy = found.xyxy + np.array([left, top, left, top], np.float32)
            parts.append(Detections(xyxy, found.confidence, found.class_id, found.labels))
            cut.append(_cut_by_inner_edge(xyxy, (left, top, right, bottom), width, height))
            tile_of_box.append(np.full(len(found), index))
        found = Detections.merge(parts, labels=self.labels)
        return _merge_tiles(found, np.concatenate(cut), np.concatenate(tile_of_box))


def _check_template(image: np.ndarray, template: np.ndarray | None) -> None:
    if template is not None and template.shape != image.shape:
        raise ValueError(f"template shape {template.shape} differs from image {image.shape}")


def _cut_by_inner_edge(xyxy: np.ndarray, tile: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """Which boxes touch a border of `tile` that is not a border of the image."""
    left, top, right, bottom = tile
    x1, y1, x2, y2 = xyxy.T
    return (
        ((left > 0) & (x1 <= left + CUT_MARGIN)) | ((top > 0) & (y1 <= top + CUT_MARGIN))
        | ((right < width) & (x2 >= right - CUT_MARGIN)) | ((bottom < height) & (y2 >= bottom - CUT_MARGIN))
    )


def _covered_share(pieces: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, M): the share of each of N `pieces` lying inside each of M `boxes` (xyxy)."""
    width = (np.minimum(pieces[:, None, 2], boxes[None, :, 2]) - np.maximum(pieces[:, None, 0], boxes[None, :, 0])).clip(0)
    height = (np.minimum(pieces[:, None, 3], boxes[None, :, 3]) - np.maximum(pieces[:, None, 1], boxes[None, :, 1])).clip(0)
    area = (pieces[:, 2] - pieces[:, 0]) * (pieces[:, 3] - pieces[:, 1])
    return width * height / np.maximum(area, 1e-6)[:, None]


def _join_pieces(pieces: Detections, tile_of_piece: np.ndarray) -> Detections:
    """Pieces that overlap across tiles, transitively (a long defect is cut into a chain), as one box each: their
    union, scored and classed as the best piece of the group."""
    linked = (_covered_share(pieces.xyxy, pieces.xyxy) > 0) & (tile_of_piece[:, None] != tile_of_piece[None, :])
    np.fill_diagonal(linked, True)
    group = np.arange(len(pieces))
    while True:  # each piece takes the smallest group id among its links until nothing changes: connected components
        joined = np.where(linked, group[None, :], len(pieces)).min(axis=1, initial=len(pieces))
        if np.array_equal(joined, group):
            break
        group = joined
    groups = [np.flatnonzero(group == g) for g in np.unique(group)]
    best = np.array([members[np.argmax(pieces.confidence[members])] for members in groups], np.int64)
    union = [[*pieces.xyxy[members, :2].min(axis=0), *pieces.xyxy[members, 2:].max(axis=0)] for members in groups]
    return Detections(np.array(union, np.float32).reshape(-1, 4), pieces.confidence[best], pieces.class_id[best], pieces.labels)


def _merge_tiles(found: Detections, cut: np.ndarray, tile_of_box: np.ndarray) -> Detections:
    """All tiles' boxes (image pixels) as one set: cut pieces give way to whole views or are joined, then NMS."""
    cut_index, whole_index = np.flatnonzero(cut), np.flatnonzero(~cut)
    covered = _covered_share(found.xyxy[cut_index], found.xyxy[whole_index]) >= CUT_COVERED
    from_other_tile = tile_of_box[cut_index][:, None] != tile_of_box[whole_index][None, :]
    left_over = cut_index[~(covered & from_other_tile).any(axis=1)]
    found = Detections.merge([found[whole_index], _join_pieces(found[left_over], tile_of_box[left_over])])
    if not len(found):
        return found
    # The tiles' detector has applied its threshold already; NMSBoxes wants one >= 0 and keeps the scores above it,
    # so only boxes scored exactly 0 (no evidence at all) go here.
    kept = cv2.dnn.NMSBoxes(
        [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in found.xyxy],
        found.confidence.tolist(), 0.0, MERGE_NMS_IOU,
    )
    return found[np.asarray(kept, np.int64).reshape(-1)].sorted_by_confidence()
