"""What the edge sends the cloud tier: a full-resolution crop around each candidate box.

Sending crops instead of whole images is what makes offloading cheap: a DeepPCB image is 640x640, a region
around a 30-pixel defect at twice its size is about 64x64. The crop is wide enough (`TRANSPORT_CONTEXT` times
the box's longer side) for any cloud model to re-crop it at its own context factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aivd.core.detections import Detections

TRANSPORT_CONTEXT = 2.2  # the classifier trains with context up to 2.0; a little more leaves room for interpolation
MIN_SIDE = 40


# The imaging scales aivd accepts, in pixels per mm: from a 1 m field of view on a 1-megapixel sensor to an
# optical microscope. Outside them a scale is a mistake, and mm figures computed from it would overflow or vanish.
PIXELS_PER_MM_RANGE = (1e-3, 1e5)


@dataclass(frozen=True)
class Region:
    region_id: str  # "<image_id>#<index of the candidate in the image>"
    image: np.ndarray  # uint8 (h, w) crop of the test image
    template: np.ndarray | None  # the same window of the aligned template, when there is one
    box: tuple[float, float, float, float]  # the candidate box, x1 y1 x2 y2 in crop pixels
    origin: tuple[int, int]  # the crop's top-left corner in the full image
    edge_class: str
    edge_confidence: float
    pixels_per_mm: float | None = None  # the imaging scale, when known (DeepPCB: about 48)

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.dtype != np.uint8:
            raise ValueError(f"region {self.region_id}: image must be a 2-D uint8 array, got {self.image.dtype} {self.image.shape}")
        if self.template is not None and self.template.shape != self.image.shape:
            raise ValueError(f"region {self.region_id}: template shape {self.template.shape} differs from image {self.image.shape}")
        x1, y1, x2, y2 = self.box
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError(f"region {self.region_id}: box must satisfy x2 >= x1 and y2 >= y1, got {self.box}")

    @property
    def image_box(self) -> tuple[float, float, float, float]:
        """The box in full-image pixels."""
        x1, y1, x2, y2 = self.box
        ox, oy = self.origin
        return (x1 + ox, y1 + oy, x2 + ox, y2 + oy)


def cut_regions(
    image: np.ndarray, template: np.ndarray | None, detections: Detections, image_id: str,
    pixels_per_mm: float | None = None, context: float = TRANSPORT_CONTEXT, min_side: int = MIN_SIDE,
) -> list[Region]:
    """One region per detection: a square window of side max(min_side, context * longer side), clipped to the image."""
    height, width = image.shape[:2]
    regions = []
    for index, ((x1, y1, x2, y2), score, name) in enumerate(zip(detections.xyxy, detections.confidence, detections.class_names)):
        half = max(min_side, context * max(x2 - x1, y2 - y1)) / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = max(0, int(np.floor(cx - half))), max(0, int(np.floor(cy - half)))
        right, bottom = min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))
        window = (slice(top, bottom), slice(left, right))
        regions.append(Region(
            region_id=f"{image_id}#{index}",
            image=np.ascontiguousarray(image[window]),
            template=None if template is None else np.ascontiguousarray(template[window]),
            box=(float(x1 - left), float(y1 - top), float(x2 - left), float(y2 - top)),
            origin=(left, top), edge_class=name, edge_confidence=float(score), pixels_per_mm=pixels_per_mm,
        ))
    return regions
