"""Measurements taken from a region's pixels, whatever backend classified it.

Every region gets the facts any image has: the box's size and area in pixels (and in millimetres when the
imaging scale is usable) and its contrast with its surroundings, the mean grey level inside the box minus the
mean grey level of a ring `RING_PX` wide around it (clipped to the crop), so positive when the defect is
brighter than what surrounds it. A scale that is not a finite positive number, or one so extreme that a size
in millimetres would overflow, is treated as unknown: the millimetre values are left out.

The PCB facts need a template and are taken only when asked for (`pcb_facts`; other domains' "copper" is
meaningless). Copper is found by Otsu's threshold on the template and test crops together (DeepPCB's copper
is dark). Inside the box, test and template copper are compared pixel by pixel; over the whole crop, connected
copper pieces are compared: a test piece that touches two template pieces joins conductors (a short), a
template piece that falls into two test pieces is split (an open). Comparing the two crops, rather than
counting pieces in one, keeps conductors that merely leave and re-enter the crop from reading as defects.
Pieces smaller than `MIN_PIECE_PX` (binarisation specks, a one-pixel thickness difference at a corner) are
ignored.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from aivd.core import Region
from aivd.schema.analysis import Measurements

MIN_PIECE_PX = 12
BOX_MARGIN_PX = 2  # a defect's copper can sit just outside a tight box
RING_PX = 3  # the surroundings a box's contrast is taken against: a few pixels, so that nearby structure counts little


def copper_masks(region: Region, copper_dark: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    planes = region.image if region.template is None else np.concatenate([region.image, region.template], axis=1)
    threshold, _ = cv2.threshold(planes, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    def copper(plane: np.ndarray) -> np.ndarray:
        return plane <= threshold if copper_dark else plane > threshold
    return copper(region.image), None if region.template is None else copper(region.template)


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected 8-neighbour pieces, with pieces under MIN_PIECE_PX relabelled 0, and the number of labels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    relabel = np.arange(count, dtype=labels.dtype)
    relabel[stats[:, cv2.CC_STAT_AREA] < MIN_PIECE_PX] = 0
    return relabel[labels], count


def _joined_and_split(test: tuple[np.ndarray, int], template: tuple[np.ndarray, int], window: tuple[slice, slice]) -> tuple[bool, bool]:
    """Does a test piece reaching into `window` overlap two or more template pieces (conductors joined), and does
    a template piece reaching into it overlap two or more test pieces (a conductor split)?"""
    (test_labels, test_count), (template_labels, template_count) = test, template
    overlap = np.zeros((test_count, template_count), bool)  # which test piece overlaps which template piece
    overlap[test_labels.ravel(), template_labels.ravel()] = True
    overlap[0, :] = overlap[:, 0] = False  # label 0: no copper, or a piece too small to count
    test_in_window = np.zeros(test_count, bool)
    test_in_window[test_labels[window].ravel()] = True
    template_in_window = np.zeros(template_count, bool)
    template_in_window[template_labels[window].ravel()] = True
    joins = bool((overlap[test_in_window].sum(axis=1) >= 2).any())
    splits = bool((overlap[:, template_in_window].sum(axis=0) >= 2).any())
    return joins, splits


def _usable_scale(pixels_per_mm: float | None) -> float | None:
    """The scale when it is a finite positive number, else None (unknown)."""
    if pixels_per_mm is None or not math.isfinite(pixels_per_mm) or pixels_per_mm <= 0:
        return None
    return float(pixels_per_mm)


def _box_slices(box: tuple[float, float, float, float], shape: tuple[int, int], margin: int) -> tuple[slice, slice]:
    """The rows and columns the box covers (at least one of each), grown by `margin` on every side and clipped to
    `shape`."""
    x1, y1, x2, y2 = box
    height, width = shape
    top, left = int(y1), int(x1)
    bottom, right = max(int(np.ceil(y2)), top + 1), max(int(np.ceil(x2)), left + 1)
    return slice(max(0, top - margin), min(height, bottom + margin)), slice(max(0, left - margin), min(width, right + margin))


def contrast(image: np.ndarray, box: tuple[float, float, float, float]) -> float | None:
    """Mean grey level inside `box` minus that of the ring `RING_PX` wide around it, clipped to the image, in grey
    levels (-255..255); None when the box covers the whole image, leaving no ring."""
    inside, outer = image[_box_slices(box, image.shape, 0)], image[_box_slices(box, image.shape, RING_PX)]
    ring_px = outer.size - inside.size
    if not inside.size or not ring_px:
        return None
    inside_sum = int(inside.sum(dtype=np.int64))
    ring_mean = (int(outer.sum(dtype=np.int64)) - inside_sum) / ring_px
    return round(inside_sum / inside.size - ring_mean, 2)


def _in_mm(values: dict, scale: float | None) -> dict:
    """The millimetre versions of the pixel sizes in `values`, or {} when the scale is unknown or so extreme that
    one of them is not a finite number."""
    if scale is None:
        return {}
    in_mm = {"width_mm": round(values["width_px"] / scale, 3), "height_mm": round(values["height_px"] / scale, 3),
             "area_mm2": round(values["area_px"] / scale / scale, 4)}  # scale**2 can underflow to 0
    if "changed_area_px" in values:
        in_mm["changed_area_mm2"] = round(values["changed_area_px"] / scale / scale, 4)
    return in_mm if all(math.isfinite(value) for value in in_mm.values()) else {}


def measure(region: Region, copper_dark: bool = True, pcb_facts: bool = True) -> Measurements:
    """The region's measurements; the PCB facts (copper added and missing, joined and split conductors) only when
    `pcb_facts` is true and the region has a template."""
    x1, y1, x2, y2 = region.box
    width_px, height_px = x2 - x1, y2 - y1
    values: dict = {
        "width_px": round(width_px, 1), "height_px": round(height_px, 1), "area_px": round(width_px * height_px, 1),
        "contrast": contrast(region.image, region.box),
    }
    if pcb_facts and region.template is not None:
        values |= _copper_facts(region, copper_dark)
    values |= _in_mm(values, _usable_scale(region.pixels_per_mm))
    return Measurements(**values)


def _copper_facts(region: Region, copper_dark: bool) -> dict:
    test, template = copper_masks(region, copper_dark)
    assert template is not None  # measured only for a region with a template
    window = _box_slices(region.box, test.shape, BOX_MARGIN_PX)
    extra = int(np.count_nonzero(test[window] & ~template[window]))
    missing = int(np.count_nonzero(template[window] & ~test[window]))
    joins, splits = _joined_and_split(_pieces(test), _pieces(template), window)
    return {
        "extra_copper_px": extra,
        "missing_copper_px": missing,
        "changed_area_px": extra + missing,
        "joins_conductors": joins,
        "splits_conductor": splits,
    }
