"""A deterministic generator of DeepPCB-like test/template pairs with box-annotated defects.

DeepPCB images are binarised crops of line-scanned boards: copper black (0) on white substrate (255), 640x640,
each defective test image paired with its defect-free template. Here a procedural board is drawn as the template
and the six DeepPCB defect classes are painted into a copy. A pair depends only on (config.seed, index), so any
one pair can be regenerated alone, e.g. to look at a failure from a large run.

Defects are placed by looking at the template's pixels (distance maps, copper components, straight runs), never at
how it was drawn, so `inject_defects` works on any binarised board image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import yaml

from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.data.coco import format_coco_annotations
from aivd.data.voc import format_voc_annotation
from aivd.data.yolo import format_yolo_annotation

COPPER = 0
SUBSTRATE = 255

# Pixel steps (dy, dx) along the four line directions a router draws; axis i + 2 (mod 4) is perpendicular to axis i.
_AXES = np.array([(0, 1), (1, 1), (1, 0), (1, -1)])
_ATTEMPTS = 40  # candidate spots tried per defect before giving up on a class
_MIN_BOX = 20  # DeepPCB's annotators drew boxes of about 20..60 px even round the smallest defects
_BOX_GAP = 4  # px kept between boxes so no defect is inside, or touching, another's box
_BORDER = 8  # px: defects start this far inside the image so their probes stay in it
_BATCH = 256  # random pixels tested per candidate spot wanted


@dataclass(frozen=True)
class SyntheticConfig:
    """Board and defect parameters; every `(low, high)` range is inclusive."""

    size: int = 640
    n_defects: tuple[int, int] = (3, 10)
    trace_width: tuple[int, int] = (8, 20)
    seed: int = 0
    n_traces: tuple[int, int] = (12, 22)
    n_pours: tuple[int, int] = (0, 2)
    clearance: int = 8  # px of substrate between separate conductors on a defect-free board

    def __post_init__(self) -> None:
        for name in ("n_defects", "trace_width", "n_traces", "n_pours"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high; got {(low, high)}")
        if self.size < 128:
            raise ValueError(f"size must be at least 128 px; got {self.size}")
        if self.trace_width[0] < 4 or self.clearance < 4:
            raise ValueError("trace_width and clearance must be at least 4 px so every defect class fits")


@dataclass(frozen=True, eq=False)
class SyntheticPair:
    image_id: str
    test: np.ndarray
    template: np.ndarray
    ground_truth: Detections


def _between(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _xy(point: np.ndarray) -> tuple[int, int]:
    """A (y, x) float point as the integer (x, y) cv2 expects."""
    return round(point[1]), round(point[0])


# --- the defect-free board -------------------------------------------------------------------------------------

_HEADINGS = _unit(np.concatenate([_AXES, -_AXES]))  # the eight route directions, 45 degrees apart


def _arc_length(points: np.ndarray) -> np.ndarray:
    """Distance along a polyline to each of its points."""
    return np.concatenate([[0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])


def _along(points: np.ndarray, arc_length: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The points `at` distances along a polyline."""
    return np.stack([np.interp(at, arc_length, points[:, 0]), np.interp(at, arc_length, points[:, 1])], axis=1)


@dataclass(frozen=True)
class _Polyline:
    points: np.ndarray  # (k, 2) as (y, x)
    width: int

    def bounds(self) -> tuple[float, float, float, float]:
        (y0, x0), (y1, x1) = self.points.min(0), self.points.max(0)
        return y0 - self.width, x0 - self.width, y1 + self.width, x1 + self.width

    def draw(self, canvas: np.ndarray, origin: np.ndarray, grow: int, value: int) -> None:
        points = np.round((self.points - origin)[:, ::-1]).astype(np.int32)
        cv2.polylines(canvas, [points], False, value, self.width + 2 * grow)


@dataclass(frozen=True)
class _Disc:
    centre: np.ndarray
    radius: int

    def bounds(self) -> tuple[float, float, float, float]:
        (y, x), r = self.centre, self.radius
        return y - r, x - r, y + r, x + r

    def draw(self, canvas: np.ndarray, origin: np.ndarray, grow: int, value: int) -> None:
        cv2.circle(canvas, _xy(self.centre - origin), self.radius + grow, value, -1)


@dataclass(frozen=True)
class _Rect:
    corner: np.ndarray  # (y, x) of the top-left corner
    extent: np.ndarray  # (height, width)

    def bounds(self) -> tuple[float, float, float, float]:
        (y0, x0), (y1, x1) = self.corner, self.corner + self.extent
        return y0, x0, y1, x1

    def draw(self, canvas: np.ndarray, origin: np.ndarray, grow: int, value: int) -> None:
        top_left, bottom_right = self.corner - grow - origin, self.corner + self.extent + grow - origin
        cv2.rectangle(canvas, _xy(top_left), _xy(bottom_right), value, -1)


_Primitive = _Polyline | _Disc | _Rect


@dataclass(frozen=True)
class _Shape:
    """One conductor (copper) and the holes drilled or cut in it after it is placed."""

    copper: tuple[_Primitive, ...]
    holes: tuple[_Disc, ...] = ()


def _collides(shape: _Shape, keepout: np.ndarray) -> bool:
    # Rasterise the shape alone in its own bounding box: far cheaper than a full-board scratch image per attempt.
    bounds = np.array([primitive.bounds() for primitive in shape.copper])
    # 2 px of slack for cv2's rounding of centres and widths.
    y0, x0 = (np.floor(bounds[:, :2].min(0)).astype(int) - 2).clip(0, None)
    y1, x1 = (np.ceil(bounds[:, 2:].max(0)).astype(int) + 2).clip(0, None)
    region = keepout[y0:y1, x0:x1]
    if region.size == 0:
        return True  # entirely off the board: nothing to place
    scratch = np.zeros_like(region)
    for primitive in shape.copper:
        primitive.draw(scratch, np.array([y0, x0]), 0, 1)
    return bool((scratch & region).any())


def _place(board: np.ndarray, keepout: np.ndarray, shape: _Shape, clearance: int) -> bool:
    """Draw `shape` unless it comes within `clearance` of copper already placed."""
    if _collides(shape, keepout):
        return False
    origin = np.zeros(2)
    for primitive in shape.copper:
        primitive.draw(board, origin, 0, COPPER)
        primitive.draw(keepout, origin, clearance, 1)
    for hole in shape.holes:
        hole.draw(board, origin, 0, SUBSTRATE)
    return True


def _pour(rng: np.random.Generator, size: int) -> _Shape:
    """A large copper area with round clearance holes, as ground planes have."""
    extent = rng.uniform(0.12, 0.3, 2) * size
    corner = rng.uniform(-0.05, 0.95, 2) * size - extent / 2
    holes = tuple(
        _Disc(corner + rng.uniform(0.15, 0.85, 2) * extent, int(rng.integers(4, 13))) for _ in range(rng.integers(2, 8))
    )
    return _Shape((_Rect(corner, extent),), holes)


def _route(rng: np.random.Generator, size: int) -> np.ndarray:
    """A polyline of horizontal, vertical and 45-degree segments with 45-degree bends, as PCB routers draw."""
    segments = int(rng.integers(1, 5))
    turns = np.concatenate([[0], np.cumsum(rng.integers(0, 2, segments - 1) * 2 - 1)])
    headings = (int(rng.integers(4)) * 2 + turns) % 8  # start axis-aligned
    steps = _HEADINGS[headings] * rng.uniform(0.08, 0.4, (segments, 1)) * size
    start = rng.uniform(-0.05, 1.05, 2) * size
    return start + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])


def _truncate(points: np.ndarray, keepout: np.ndarray, back: float) -> np.ndarray | None:
    """The polyline up to `back` px before its centre line first enters the keep-out zone, None if only a stub is left.

    Stopping a route at an obstacle (where it then ends in a pad) rather than dropping it keeps most routes, so a
    dense board needs few attempts.
    """
    arc_length = _arc_length(points)
    # Every 4 px: the keep-out round any conductor is wider, so none fits between two stations.
    stations = np.append(np.arange(0, arc_length[-1], 4.0), arc_length[-1])
    spine = np.round(_along(points, arc_length, stations)).astype(int)
    on_board = np.all((spine >= 0) & (spine < keepout.shape), axis=1)
    blocked = np.zeros(len(spine), bool)
    blocked[on_board] = keepout[spine[on_board, 0], spine[on_board, 1]] > 0
    if not blocked.any():
        return points
    end = stations[np.argmax(blocked)] - back
    if end < 24:
        return None
    kept = arc_length < end
    return np.concatenate([points[kept], _along(points, arc_length, np.array([end]))])


def _offset(points: np.ndarray, distance: float) -> np.ndarray:
    """The polyline moved sideways by `distance`, mitred at the bends so a bus keeps its pitch round corners."""
    if distance == 0:
        return points
    directions = _unit(np.diff(points, axis=0))
    normals = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    vertex_normals = np.concatenate([normals[:1], normals[:-1] + normals[1:], normals[-1:]])
    vertex_normals[1:-1] /= 1 + np.sum(normals[:-1] * normals[1:], axis=1, keepdims=True)
    return points + vertex_normals * distance


def _pad(rng: np.random.Generator, centre: np.ndarray, trace_width: int) -> tuple[_Primitive | None, _Disc | None]:
    """A round or square pad (or none: traces also run off the crop), maybe drilled through."""
    if rng.random() < 0.25:
        return None, None
    radius = trace_width // 2 + int(rng.integers(3, 10))
    pad = _Disc(centre, radius) if rng.random() < 0.6 else _Rect(centre - radius, np.array([2 * radius, 2 * radius]))
    hole = _Disc(centre, int(rng.integers(2, radius - 2))) if rng.random() < 0.6 else None
    return pad, hole


def _trace(rng: np.random.Generator, points: np.ndarray, width: int) -> _Shape:
    copper: list[_Primitive] = [_Polyline(points, width)]
    holes = []
    for end in (points[0], points[-1]):
        pad, hole = _pad(rng, end, width)
        copper += [pad] if pad is not None else []
        holes += [hole] if hole is not None else []
    return _Shape(tuple(copper), tuple(holes))


def _bus_offsets(rng: np.random.Generator, width: int, clearance: int) -> np.ndarray:
    """Sideways offsets of the parallel copies of a trace: buses give the narrow gaps shorts bridge."""
    copies = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
    pitch = width + clearance + int(rng.integers(2, clearance + 1))
    side = 1 if rng.random() < 0.5 else -1
    return np.arange(copies + 1) * pitch * side


def generate_board(rng: np.random.Generator, config: SyntheticConfig = SyntheticConfig()) -> np.ndarray:
    """A defect-free binarised board: copper pours with holes, then routed traces and buses with pads."""
    board = np.full((config.size, config.size), SUBSTRATE, np.uint8)
    keepout = np.zeros_like(board)  # 1 where new copper would break the clearance rule
    for _ in range(_between(rng, config.n_pours)):
        _place(board, keepout, _pour(rng, config.size), config.clearance)
    wanted, placed = _between(rng, config.n_traces), 0
    for _ in range(2 * wanted):
        if placed == wanted:
            break
        route, width = _route(rng, config.size), _between(rng, config.trace_width)
        for copy, offset in enumerate(_bus_offsets(rng, width, config.clearance)):
            # Back off far enough from an obstacle for the largest pad `_pad` draws.
            points = _truncate(_offset(route, offset), keepout, back=width + 10)
            if points is None or not _place(board, keepout, _trace(rng, points, width), config.clearance):
                break  # a bus ends at its first copy that does not fit
            placed += copy == 0
    return board


# --- defects ----------------------------------------------------------------------------------------------------


class _BoardMaps:
    """What defect placement needs to know about a template, each computed once and only if asked for."""

    def __init__(self, template: np.ndarray, config: SyntheticConfig) -> None:
        self.copper = template == COPPER
        self.config = config

    @cached_property
    def dist_in(self) -> np.ndarray:
        """Distance of each copper pixel to the nearest substrate: half the local conductor width on a trace's axis."""
        return cv2.distanceTransform(self.copper.view(np.uint8), cv2.DIST_L2, 3)

    @cached_property
    def dist_out(self) -> np.ndarray:
        """Distance of each substrate pixel to the nearest copper."""
        return cv2.distanceTransform((~self.copper).view(np.uint8), cv2.DIST_L2, 3)

    @cached_property
    def component(self) -> np.ndarray:
        return cv2.connectedComponents(self.copper.view(np.uint8), connectivity=8)[1]

    def inside(self, y: int, x: int) -> bool:
        return 0 <= y < self.copper.shape[0] and 0 <= x < self.copper.shape[1]

    def sample(self, class_id: int, rng: np.random.Generator) -> tuple[int, int] | None:
        """A random pixel where a defect of the class might go, or None if a batch of random pixels has none.

        Testing a batch of random pixels costs far less than building each class's full candidate mask, and the
        first hit is as uniform over the candidates as a draw from the mask would be.
        """
        at = tuple(rng.integers(_BORDER, np.array(self.copper.shape)[:, None] - _BORDER, (2, _BATCH)))
        hits = np.flatnonzero(_DEFECTS[class_id].candidate(self, at))
        return (int(at[0][hits[0]]), int(at[1][hits[0]])) if len(hits) else None


def _run(mask: np.ndarray, y: int, x: int, step: np.ndarray, limit: int) -> int:
    """How many steps from (y, x) stay on `mask` pixels, up to `limit`."""
    height, width = mask.shape
    for count in range(limit):
        y, x = y + step[0], x + step[1]
        if not (0 <= y < height and 0 <= x < width and mask[y, x]):
            return count
    return limit


def _outward_normal(copper: np.ndarray, y: int, x: int, radius: int = 4) -> np.ndarray | None:
    """Unit (dy, dx) from the copper near (y, x) towards the substrate: the normal of the conductor edge there."""
    ys, xs = np.nonzero(copper[y - radius : y + radius + 1, x - radius : x + radius + 1])
    if len(ys) == 0:
        return None
    away = np.array([radius - ys.mean(), radius - xs.mean()])
    # Copper all round, or balanced on both sides (a thin line through the window): no edge direction to speak of.
    return _unit(away) if np.hypot(*away) > 0.5 else None


_Draw = Callable[[np.ndarray], object]  # paints the image in place; what it returns (cv2 returns the image) is unused


def _open(maps: _BoardMaps, y: int, x: int, rng: np.random.Generator) -> _Draw | None:
    """A full cut across a straight stretch of trace, slightly wider than the trace."""
    reach = max(16, maps.config.trace_width[1] + 4)
    runs = np.array([(_run(maps.copper, y, x, axis, reach), _run(maps.copper, y, x, -axis, reach)) for axis in _AXES])
    along = int(np.argmax(runs.sum(1) * np.hypot(*_AXES.T)))
    across = (along + 2) % 4
    if runs[along].min() < reach:
        return None  # near a bend, pad or end: a cut there might not sever the trace
    step = np.hypot(*_AXES[across])
    if (runs[across].sum() + 1) * step > maps.config.trace_width[1] + 3:
        return None  # wider than any trace: a pour or pad
    u, v = _unit(_AXES[along]), _unit(_AXES[across])
    # Symmetric about (y, x), which need not be on the trace's axis, so as wide as the larger side twice over.
    half_gap, half_span = rng.uniform(2, 5), (runs[across].max() + 3) * step
    centre = np.array([y, x], float)
    corners = [centre + su * half_gap * u + sv * half_span * v for su, sv in ((-1, -1), (-1, 1), (1, 1), (1, -1))]
    polygon = np.array([_xy(corner) for corner in corners], np.int32)
    return lambda image: cv2.fillConvexPoly(image, polygon, SUBSTRATE)


def _short(maps: _BoardMaps, y: int, x: int, rng: np.random.Generator) -> _Draw | None:
    """A thin copper bridge across the narrowest substrate gap through (y, x) between two separate conductors."""
    substrate, reach, best = ~maps.copper, 24, None
    for axis in _AXES:
        ahead, behind = _run(substrate, y, x, axis, reach), _run(substrate, y, x, -axis, reach)
        end_a, end_b = np.array([y, x]) + (ahead + 1) * axis, np.array([y, x]) - (behind + 1) * axis
        if max(ahead, behind) == reach or not (maps.inside(*end_a) and maps.inside(*end_b)):
            continue  # no copper within reach on one side
        if maps.component[tuple(end_a)] == maps.component[tuple(end_b)]:
            continue  # the same conductor: bridging it changes nothing electrically
        length = (ahead + behind + 1) * np.hypot(*axis)
        if best is None or length < best[0]:
            best = (length, end_a, end_b)
    if best is None:
        return None
    _, end_a, end_b = best
    thickness = int(rng.integers(2, 5))
    return lambda image: cv2.line(image, _xy(end_a), _xy(end_b), COPPER, thickness)


def _mousebite(maps: _BoardMaps, y: int, x: int, rng: np.random.Generator) -> _Draw | None:
    """One to three overlapping round bites out of a conductor edge, shallower than the conductor is wide."""
    normal = _outward_normal(maps.copper, y, x)
    if normal is None:
        return None
    half_width = int(maps.dist_in[y - 4 : y + 5, x - 4 : x + 5].max())  # of the conductor being bitten
    if half_width < 4:
        return None  # too thin: the bite would cut it through
    radius = int(rng.integers(2, min(6, half_width - 1) + 1))
    tangent = np.array([-normal[1], normal[0]])
    count = int(rng.integers(1, 4))
    shifts = (np.arange(count) - (count - 1) / 2) * radius * rng.uniform(0.8, 1.3)
    centres = [np.array([y, x]) + shift * tangent + rng.uniform(-1, 1) * normal for shift in shifts]

    def draw(image: np.ndarray) -> None:
        for centre in centres:
            cv2.circle(image, _xy(centre), radius, SUBSTRATE, -1)

    return draw


def _spur(maps: _BoardMaps, y: int, x: int, rng: np.random.Generator) -> _Draw | None:
    """A thin tapering copper protrusion from a conductor edge straight out into open substrate."""
    normal = _outward_normal(maps.copper, y, x)
    if normal is None:
        return None
    length = int(rng.integers(8, 19))
    probe = np.round(np.array([y, x]) + normal * (length + 4)).astype(int)
    # Nothing but the source conductor within reach of a point past the tip: the spur cannot touch other copper.
    if not maps.inside(*probe) or maps.dist_out[tuple(probe)] < length + 2:
        return None
    tangent = np.array([-normal[1], normal[0]])
    root, tip = np.array([y, x]) - 2 * normal, np.array([y, x]) + length * normal
    base, point = rng.uniform(1.5, 3.0), rng.uniform(0.5, 1.5)
    corners = [root - base * tangent, root + base * tangent, tip + point * tangent, tip - point * tangent]
    polygon = np.array([_xy(corner) for corner in corners], np.int32)
    return lambda image: cv2.fillConvexPoly(image, polygon, COPPER)


def _spurious_copper(maps: _BoardMaps, y: int, x: int, rng: np.random.Generator) -> _Draw | None:
    """An isolated blob of one to three overlapping ellipses, well clear of every conductor."""
    radius = int(rng.integers(3, 9))
    if maps.dist_out[y, x] < radius * 1.5 + maps.config.clearance:
        return None
    blobs = [
        (
            _xy(np.array([y, x]) + rng.uniform(-0.5, 0.5, 2) * radius),
            tuple(int(axis) for axis in rng.integers(radius // 2 + 1, radius + 1, 2)),
            float(rng.uniform(0, 180)),
        )
        for _ in range(rng.integers(1, 4))
    ]

    def draw(image: np.ndarray) -> None:
        for centre, axes, angle in blobs:
            cv2.ellipse(image, centre, axes, angle, 0, 360, COPPER, -1)

    return draw


def _pin_hole(maps: _BoardMaps, y: int, x: int, rng: np.random.Generator) -> _Draw | None:
    """A small round hole through a copper area, with copper all round it."""
    radius = int(rng.integers(2, min(5, int(maps.dist_in[y, x]) - 3) + 1))
    return lambda image: cv2.circle(image, (x, y), radius, SUBSTRATE, -1)


_Pixels = tuple[np.ndarray, np.ndarray]


class _DefectKind(NamedTuple):
    candidate: Callable[[_BoardMaps, _Pixels], np.ndarray]  # which of the pixels (ys, xs) are worth proposing at
    propose: Callable[[_BoardMaps, int, int, np.random.Generator], _Draw | None]
    # The change in the number of separate copper regions inside the box: what makes an open an open and a short a
    # short. A proposal with any other effect (a bridge grazing a third conductor, a bite leaving a speck) is dropped.
    regions_added: int


# Indexed by DeepPCB model class id: open, short, mousebite, spur, copper, pin-hole.
_DEFECTS = (
    _DefectKind(lambda m, at: (m.dist_in[at] >= 2) & (m.dist_in[at] <= m.config.trace_width[1] / 2 + 1), _open, +1),
    _DefectKind(lambda m, at: (m.dist_out[at] >= 2) & (m.dist_out[at] <= 12), _short, -1),
    _DefectKind(lambda m, at: m.copper[at] & (m.dist_in[at] <= 1), _mousebite, 0),
    _DefectKind(lambda m, at: (m.dist_out[at] > 0) & (m.dist_out[at] <= 1), _spur, 0),
    _DefectKind(lambda m, at: m.dist_out[at] >= 8 + m.config.clearance, _spurious_copper, +1),
    _DefectKind(lambda m, at: m.dist_in[at] >= 5, _pin_hole, 0),
)


def _copper_regions(copper: np.ndarray) -> int:
    return cv2.connectedComponents(copper.astype(np.uint8), connectivity=8)[0] - 1


def _regions_added(template_copper: np.ndarray, test: np.ndarray, box: np.ndarray) -> int:
    # Boxes never overlap, so inside a new box the test image still equals the template before the defect is drawn.
    x1, y1, x2, y2 = box
    return _copper_regions(test[y1:y2, x1:x2] == COPPER) - _copper_regions(template_copper[y1:y2, x1:x2])


def _window(y: int, x: int, reach: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    rows = slice(max(0, y - reach), min(shape[0], y + reach + 1))
    return rows, slice(max(0, x - reach), min(shape[1], x + reach + 1))


def _annotation_box(changed: np.ndarray, window: tuple[slice, slice], rng: np.random.Generator) -> np.ndarray | None:
    """A box round the changed pixels with a margin, at least `_MIN_BOX` a side, as annotators draw them.

    Columns x1 <= x < x2 (and rows likewise) are inside; every changed pixel is.
    """
    ys, xs = np.nonzero(changed)
    if len(ys) == 0:
        return None
    low = np.array([xs.min() + window[1].start, ys.min() + window[0].start])
    high = np.array([xs.max() + window[1].start, ys.max() + window[0].start]) + 1
    margin = rng.integers(2, 7, 2)
    grow = np.maximum(margin, np.ceil((_MIN_BOX - (high - low)) / 2).astype(int))
    return np.concatenate([low - grow, high + grow])


def _try_defect(
    test: np.ndarray, maps: _BoardMaps, class_id: int, rng: np.random.Generator, boxes: list[np.ndarray]
) -> np.ndarray | None:
    """Paint one defect of the class into `test` and return its box, or leave `test` as it was and return None."""
    reach = 2 * maps.config.trace_width[1] + 32  # beyond the largest defect any proposer draws
    size = np.array([test.shape[1], test.shape[0]] * 2)
    kind = _DEFECTS[class_id]
    for _ in range(_ATTEMPTS):
        spot = maps.sample(class_id, rng)
        if spot is None:
            continue
        draw = kind.propose(maps, *spot, rng)
        if draw is None:
            continue
        window = _window(*spot, reach, test.shape)
        before = test[window].copy()
        draw(test)
        box = _annotation_box(test[window] != before, window, rng)
        if box is not None:
            box = box.clip(0, size)
            clear = not any(_boxes_touch(box, other) for other in boxes)
            if clear and _regions_added(maps.copper, test, box) == kind.regions_added:
                return box
        test[window] = before
    return None


def _boxes_touch(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a[:2] < b[2:] + _BOX_GAP) and np.all(b[:2] < a[2:] + _BOX_GAP))


def inject_defects(
    template: np.ndarray, rng: np.random.Generator, config: SyntheticConfig = SyntheticConfig()
) -> tuple[np.ndarray, Detections]:
    """A copy of `template` with non-overlapping DeepPCB defects painted in, and their boxes (DeepPCB model ids)."""
    test = template.copy()
    maps = _BoardMaps(template, config)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(_between(rng, config.n_defects)):
        # The first class is drawn uniformly; the others are fall-backs for boards that lack a spot for it.
        for class_id in rng.permutation(len(DEEPPCB_CLASSES)):
            box = _try_defect(test, maps, int(class_id), rng, boxes)
            if box is not None:
                boxes.append(box)
                classes.append(int(class_id))
                break
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    return test, Detections(xyxy, np.ones(len(boxes)), np.array(classes, np.int64), DEEPPCB_CLASSES)


def generate_pair(index: int, config: SyntheticConfig = SyntheticConfig()) -> SyntheticPair:
    """Pair number `index` of the data set `config` describes; the same arguments always give the same pixels."""
    if not 0 <= index < 10**8:
        raise ValueError(f"index must be in 0..99999999 (8-digit image ids); got {index}")
    rng = np.random.default_rng([config.seed, index])
    template = generate_board(rng, config)
    test, ground_truth = inject_defects(template, rng, config)
    return SyntheticPair(f"{index:08d}", test, template, ground_truth)


# --- writing data sets ------------------------------------------------------------------------------------------


def _pairs(count: int, config: SyntheticConfig) -> Iterator[tuple[SyntheticPair, bool]]:
    """Each pair with whether it is held out: every third, giving DeepPCB's 2:1 trainval:test split."""
    for index in range(count):
        yield generate_pair(index, config), index % 3 == 2


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write image")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _lines(items: list[str]) -> str:
    return "".join(item + "\n" for item in items)


def _deeppcb_annotation(truth: Detections) -> str:
    """DeepPCB's `x1 y1 x2 y2 class_id` lines, with the official ids 1..6."""
    return _lines([f"{x1:.0f} {y1:.0f} {x2:.0f} {y2:.0f} {c + 1}" for (x1, y1, x2, y2), c in zip(truth.xyxy, truth.class_id)])


def _write_deeppcb(out: Path, pairs: Iterator[tuple[SyntheticPair, bool]]) -> None:
    base = out / "PCBData"
    split_lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for pair, held_out in pairs:
        group = pair.image_id[:5]  # DeepPCB groups ids by their first five digits: group00041/00041/00041000
        image_rel, annotation_rel = f"group{group}/{group}/{pair.image_id}", f"group{group}/{group}_not/{pair.image_id}"
        _write_image(base / f"{image_rel}_test.jpg", pair.test)
        _write_image(base / f"{image_rel}_temp.jpg", pair.template)
        _write_text(base / f"{annotation_rel}.txt", _deeppcb_annotation(pair.ground_truth))
        split_lines["test" if held_out else "trainval"].append(f"{image_rel}.jpg {annotation_rel}.txt")
    for split, lines in split_lines.items():
        _write_text(base / f"{split}.txt", _lines(lines))


def _write_voc(out: Path, pairs: Iterator[tuple[SyntheticPair, bool]]) -> None:
    split_ids: dict[str, list[str]] = {"trainval": [], "test": []}
    for pair, held_out in pairs:
        height, width = pair.test.shape
        _write_image(out / "JPEGImages" / f"{pair.image_id}.jpg", pair.test)
        _write_image(out / "Templates" / f"{pair.image_id}.jpg", pair.template)
        xml = format_voc_annotation(pair.ground_truth, f"{pair.image_id}.jpg", width, height)
        _write_text(out / "Annotations" / f"{pair.image_id}.xml", xml)
        split_ids["test" if held_out else "trainval"].append(pair.image_id)
    for split, ids in split_ids.items():
        _write_text(out / "ImageSets" / "Main" / f"{split}.txt", _lines(ids))


def _write_yolo(out: Path, pairs: Iterator[tuple[SyntheticPair, bool]]) -> None:
    # No `path`: Ultralytics and aivd then take the YAML's own folder as the root, wherever the set is moved.
    data = {"train": "images/train", "val": "images/val", "templates": "templates", "names": list(DEEPPCB_CLASSES.names)}
    _write_text(out / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    for pair, held_out in pairs:
        split = "val" if held_out else "train"
        height, width = pair.test.shape
        _write_image(out / "images" / split / f"{pair.image_id}.jpg", pair.test)
        _write_image(out / "templates" / split / f"{pair.image_id}.jpg", pair.template)
        label = format_yolo_annotation(pair.ground_truth, width, height)
        _write_text(out / "labels" / split / f"{pair.image_id}.txt", label)


def _write_coco(out: Path, pairs: Iterator[tuple[SyntheticPair, bool]]) -> None:
    # Categories numbered from 1, as COCO's are; the template is NAME_temp beside NAME_test, COCO having no place for it.
    categories = [{"id": class_id + 1, "name": name} for class_id, name in enumerate(DEEPPCB_CLASSES.names)]
    files = {split: {"images": [], "annotations": [], "categories": categories} for split in ("train", "val")}
    next_annotation_id = 1
    for pair, held_out in pairs:
        split = "val" if held_out else "train"
        height, width = pair.test.shape
        _write_image(out / "images" / split / f"{pair.image_id}_test.jpg", pair.test)
        _write_image(out / "images" / split / f"{pair.image_id}_temp.jpg", pair.template)
        coco = files[split]
        image_id = int(pair.image_id)
        coco["images"].append({"id": image_id, "file_name": f"{pair.image_id}_test.jpg", "width": width, "height": height})
        coco["annotations"] += format_coco_annotations(pair.ground_truth, image_id, next_annotation_id)
        next_annotation_id += len(pair.ground_truth)
    for split, coco in files.items():
        _write_text(out / "annotations" / f"instances_{split}.json", json.dumps(coco, indent=1))


_WRITERS = {"deeppcb": _write_deeppcb, "voc": _write_voc, "yolo": _write_yolo, "coco": _write_coco}


def write_dataset(out_dir: str | Path, count: int, config: SyntheticConfig = SyntheticConfig(), layout: str = "deeppcb") -> None:
    """Write pairs 0..count-1 in DeepPCB, VOC, YOLO (Ultralytics, with data.yaml) or COCO layout.

    Every third pair is held out (DeepPCB `test`, VOC `test`, YOLO and COCO `val`); the rest are DeepPCB/VOC
    `trainval` and YOLO/COCO `train`. Templates go beside the images: DeepPCB `_temp.jpg`, VOC `Templates/`, YOLO
    `templates/SPLIT/` (named by data.yaml), COCO `NAME_temp.jpg` beside `NAME_test.jpg` in `images/SPLIT/`.
    """
    if layout not in _WRITERS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(_WRITERS)}")
    _WRITERS[layout](Path(out_dir), _pairs(count, config))
