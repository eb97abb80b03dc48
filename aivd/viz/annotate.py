"""Draw boxes and labels on images for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from aivd.core import Detections

# Colour-blind-friendly (Okabe-Ito) BGR colours, one per class id.
PALETTE = [(0, 159, 230), (0, 0, 213), (167, 114, 0), (66, 228, 240), (115, 158, 0), (167, 121, 204), (0, 94, 213), (0, 0, 0)]
GROUND_TRUTH_COLOUR = (60, 180, 60)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    blue, green, red = background
    return (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 150 else (255, 255, 255)


def to_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()


def draw_detections(image: np.ndarray, detections: Detections, colour: tuple[int, int, int] | None = None, show_score: bool = True) -> np.ndarray:
    """A BGR copy of `image` with each box and its `class score` label; class colours unless `colour` is set."""
    canvas = to_bgr(image)
    scale = max(0.4, min(canvas.shape[:2]) / 1600)
    thickness = max(1, round(scale * 2))
    for (x1, y1, x2, y2), score, class_id, name in zip(detections.xyxy, detections.confidence, detections.class_id, detections.class_names):
        box_colour = colour or PALETTE[int(class_id) % len(PALETTE)]
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(canvas, p1, p2, box_colour, thickness)
        label = f"{name} {score:.2f}" if show_score else name
        (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = p1[1] - text_h - 4 if p1[1] - text_h - 4 >= 0 else p2[1]
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + text_w + 4, top + text_h + 4), box_colour, -1)
        cv2.putText(canvas, label, (p1[0] + 2, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, _text_colour(box_colour), 1, cv2.LINE_AA)
    return canvas
