"""Measurements taken from a region's pixels, whatever backend classified it.

Copper is found by Otsu's threshold on the template and test crops together (DeepPCB's copper is dark). Inside
the box, test and template copper are compared pixel by pixel; over the whole crop, connected copper pieces
are compared: a test piece that touches two template pieces joins conductors (a short), a template piece that
falls into two test pieces is split (an open). Comparing the two crops, rather than counting pieces in one,
keeps conductors that merely leave and re-enter the crop from reading as defects. Pieces smaller than
`MIN_PIECE_PX` (binarisation specks, a one-pixel thickness difference at a corner) are ignored.
"""

from __future__ import annotations

import cv2
import numpy as np

from aivd.cloud.schema import Measurements
from aivd.core import Region

MIN_PIECE_PX = 12
BOX_MARGIN_PX = 2  # a defect's copper can sit just outside a tight box


def copper_masks(region: Region, copper_dark: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    planes = region.image if region.template is None else np.concatenate([region.image, region.template], axis=1)
    threshold, _ = cv2.threshold(planes, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    def copper(plane: np.ndarray) -> np.ndarray:
        return plane <= threshold if copper_dark else plane > threshold
    return copper(region.image), None if region.template is None else copper(region.template)


def _pieces(mask: np.ndarray) -> np.ndarray:
    """Connected 8-neighbour pieces, with pieces under MIN_PIECE_PX relabelled 0."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < MIN_PIECE_PX)
    labels[np.isin(labels, small)] = 0
    return labels


def _touches_several(labels_a: np.ndarray, labels_b: np.ndarray, window: np.ndarray) -> bool:
    """Does any piece of `a` that reaches into `window` overlap two or more pieces of `b`?"""
    in_window = np.unique(labels_a[window])
    in_window = in_window[in_window > 0]
    if not len(in_window):
        return False
    both = (labels_a > 0) & (labels_b > 0)
    pairs = np.unique(labels_a[both].astype(np.int64) * (int(labels_b.max()) + 1) + labels_b[both])
    partners = np.bincount(pairs // (int(labels_b.max()) + 1), minlength=int(labels_a.max()) + 1)
    return bool((partners[in_window] >= 2).any())


def measure(region: Region, copper_dark: bool = True) -> Measurements:
    x1, y1, x2, y2 = region.box
    width_px, height_px = x2 - x1, y2 - y1
    scale = region.pixels_per_mm
    values: dict = {"width_px": round(width_px, 1), "height_px": round(height_px, 1)}
    if scale:
        values |= {"width_mm": round(width_px / scale, 3), "height_mm": round(height_px / scale, 3)}
    if region.template is None:
        return Measurements(**values)
    test, template = copper_masks(region, copper_dark)
    height, width = test.shape
    window = np.zeros_like(test)
    window[
        max(0, int(y1) - BOX_MARGIN_PX) : min(height, int(np.ceil(y2)) + BOX_MARGIN_PX),
        max(0, int(x1) - BOX_MARGIN_PX) : min(width, int(np.ceil(x2)) + BOX_MARGIN_PX),
    ] = True
    extra = int(np.count_nonzero(test & ~template & window))
    missing = int(np.count_nonzero(template & ~test & window))
    test_pieces, template_pieces = _pieces(test), _pieces(template)
    values |= {
        "extra_copper_px": extra,
        "missing_copper_px": missing,
        "changed_area_px": extra + missing,
        "joins_conductors": _touches_several(test_pieces, template_pieces, window),
        "splits_conductor": _touches_several(template_pieces, test_pieces, window),
    }
    if scale:
        values["changed_area_mm2"] = round((extra + missing) / scale**2, 4)
    return Measurements(**values)
