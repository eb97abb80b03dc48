"""Pre- and post-processing of the built-in template-aware CenterNet-style detector.

Pure numpy and OpenCV so that training (torch) and inference (ONNX Runtime) share one definition of the
model's input and output: a model trained with one and served with another cannot drift apart.

Input: 3 channels ``[test, template, template_present]`` in [0, 1], scaled by ``input_scale`` and padded to a
multiple of ``PAD_MULTIPLE``. Without a template the second and third channels are zero, a case the model is
trained on (template dropout), so it still detects from the test image alone.
Output (stride ``OUTPUT_STRIDE`` in input pixels): per-class centre heat-maps already reduced to local peaks,
box sizes and sub-cell centre offsets, both in output cells.
"""

from __future__ import annotations

import cv2
import numpy as np

from aivd.core import Detections, LabelMap

PAD_MULTIPLE = 16
OUTPUT_STRIDE = 4


def make_input(test: np.ndarray, template: np.ndarray | None, input_scale: float) -> np.ndarray:
    """Build the (1, 3, H, W) float32 network input from uint8 grey images of the same size."""
    height, width = test.shape
    scaled_h, scaled_w = round(height * input_scale), round(width * input_scale)
    padded_h = -(-scaled_h // PAD_MULTIPLE) * PAD_MULTIPLE
    padded_w = -(-scaled_w // PAD_MULTIPLE) * PAD_MULTIPLE
    planes = np.zeros((1, 3, padded_h, padded_w), np.float32)
    # Padding is white substrate (1.0) in the image planes so borders do not look like copper.
    planes[0, :2] = 1.0
    for channel, image in enumerate((test, template)):
        if image is None:
            planes[0, channel] = 0.0
            continue
        if input_scale != 1.0:
            image = cv2.resize(image, (scaled_w, scaled_h), interpolation=cv2.INTER_AREA)
        planes[0, channel, :scaled_h, :scaled_w] = image * np.float32(1 / 255)
    if template is not None:
        planes[0, 2] = 1.0
    return planes


def decode(
    peaks: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    labels: LabelMap,
    input_scale: float,
    image_size: tuple[int, int],
    min_confidence: float,
    max_detections: int = 100,
    nms_iou: float = 0.5,
) -> Detections:
    """Turn one image's outputs, shapes (C, h, w), (2, h, w), (2, h, w), into boxes in original pixels.

    Peaks of different classes at nearly the same place are one defect seen twice; the official metric pairs
    boxes class-agnostically, so a class-agnostic NMS keeps only the most confident of them.
    """
    width, height = image_size
    flat = peaks.reshape(-1)
    candidates = np.flatnonzero(flat >= min_confidence)
    if len(candidates) > 4 * max_detections:
        candidates = candidates[np.argpartition(-flat[candidates], 4 * max_detections)[: 4 * max_detections]]
    if len(candidates) == 0:
        return Detections.empty(labels)
    cell_count = peaks.shape[1] * peaks.shape[2]
    class_id, cell = np.divmod(candidates, cell_count)
    ys, xs = np.divmod(cell, peaks.shape[2])
    to_pixels = OUTPUT_STRIDE / input_scale
    centre_x = (xs + offsets[0, ys, xs]) * to_pixels
    centre_y = (ys + offsets[1, ys, xs]) * to_pixels
    half_w = sizes[0, ys, xs].clip(0) * to_pixels / 2
    half_h = sizes[1, ys, xs].clip(0) * to_pixels / 2
    xyxy = np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    scores = flat[candidates]
    keep = cv2.dnn.NMSBoxes(
        [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in xyxy],
        scores.tolist(), min_confidence, nms_iou, top_k=max_detections,
    )
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return Detections(xyxy[keep], scores[keep], class_id[keep], labels).sorted_by_confidence()
