"""Context-expanded crops around boxes, shared by the class refiner's training and inference.

Each crop is a square of side ``context * max(w, h)`` (at least ``min_side`` pixels) centred on the box,
taken at full resolution from the test image and the template and resized to ``size`` x ``size``; the third
channel says whether a template was given. Thin defects (a mousebite that leaves a sliver of copper versus
an open that cuts it) are decided by a few pixels, which the detector sees only at half resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 48
CONTEXT = 1.5
MIN_SIDE = 32


def crop_windows(
    image: np.ndarray, template: np.ndarray | None, boxes: np.ndarray,
    size: int = CROP_SIZE, context: float = CONTEXT, min_side: int = MIN_SIDE,
) -> np.ndarray:
    """(N, 3, size, size) float32 crops in [0, 1] for (N, 4) xyxy boxes in pixels of `image`."""
    crops = np.zeros((len(boxes), 3, size, size), np.float32)
    for index, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        side = max(min_side, context * max(x2 - x1, y2 - y1))
        scale = size / side
        # Maps the window's centre to the crop's centre; pixels outside the image repeat the border.
        matrix = np.array([[scale, 0, size / 2 - scale * (x1 + x2) / 2], [0, scale, size / 2 - scale * (y1 + y2) / 2]])
        for channel, plane in enumerate((image, template)):
            if plane is not None:
                crops[index, channel] = cv2.warpAffine(plane, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crops[index, :2] *= np.float32(1 / 255)
        crops[index, 2] = 1.0 if template is not None else 0.0
    return crops
