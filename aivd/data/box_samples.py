"""`BoxSample`: one image of a box-annotated data set, whatever format its annotation file is in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2

from aivd.core import Detections, LabelMap
from aivd.data.deeppcb import DatasetError


@dataclass(frozen=True)
class BoxSample:
    """An image, its optional aligned template and its annotation file; boxes are read on demand."""

    image_id: str
    image_path: Path
    template_path: Path | None
    annotation_path: Path
    labels: LabelMap

    def ground_truth(self) -> Detections:
        """The annotated boxes, read by the reader the annotation file's suffix names."""
        # Imported here because the readers build BoxSamples themselves.
        from aivd.data.voc import read_voc_annotation
        from aivd.data.yolo import read_yolo_annotation

        suffix = self.annotation_path.suffix.lower()
        if suffix == ".xml":
            return read_voc_annotation(self.annotation_path, self.labels)
        if suffix != ".txt":
            raise DatasetError(f"{self.annotation_path}: unsupported annotation format (expected .xml or .txt)")
        if not self.annotation_path.exists():
            # The YOLO convention: an image without a label file shows no objects.
            return Detections.empty(self.labels)
        width, height = self._image_size()
        return read_yolo_annotation(self.annotation_path, width, height, self.labels)

    def _image_size(self) -> tuple[int, int]:
        # Only YOLO's normalised boxes need the size, so the image is decoded here rather than at load time.
        image = cv2.imread(str(self.image_path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DatasetError(f"{self.image_path}: cannot read the image to scale the boxes of {self.annotation_path}")
        height, width = image.shape[:2]
        return width, height
