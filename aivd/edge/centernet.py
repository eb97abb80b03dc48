"""Pre- and post-processing of the built-in template-aware CenterNet-style detector.

Pure numpy and OpenCV so that training (torch) and inference (ONNX Runtime) share one definition of the
model's input and output: a model trained with one and served with another cannot drift apart.

Input: 3 channels ``[test, template, template_present]`` in [0, 1], scaled by ``input_scale`` and padded to a
multiple of ``PAD_MULTIPLE``. Without a template the second and third channels are zero, a case the model is
trained on (template dropout), so it still detects from the test image alone.
Output (stride ``OUTPUT_STRIDE`` in input pixels): a class-agnostic objectness map already reduced to local
peaks, per-class probabilities, box sizes and sub-cell centre offsets (both in output cells). A detection's
confidence is objectness times the probability of its most likely class.
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


def candidates(
    peaks: np.ndarray,
    class_probs: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    input_scale: float,
    image_size: tuple[int, int],
    min_objectness: float,
    max_detections: int = 100,
    nms_iou: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs, shapes (1, h, w), (C, h, w), (2, h, w), (2, h, w), as candidate boxes in original
    pixels: (N, 4) xyxy, (N,) objectness and (N, C) class probabilities.

    Peaks are 3x3 local maxima already; a class-agnostic NMS removes what is left of one defect seen twice at
    neighbouring cells, since the official metric pairs boxes class-agnostically.
    """
    width, height = image_size
    ys, xs = np.nonzero(peaks[0] >= min_objectness)
    objectness = peaks[0, ys, xs]
    to_pixels = OUTPUT_STRIDE / input_scale
    centre_x = (xs + offsets[0, ys, xs]) * to_pixels
    centre_y = (ys + offsets[1, ys, xs]) * to_pixels
    half_w = sizes[0, ys, xs].clip(0) * to_pixels / 2
    half_h = sizes[1, ys, xs].clip(0) * to_pixels / 2
    xyxy = np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    keep = np.asarray(cv2.dnn.NMSBoxes(
        [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in xyxy],
        objectness.tolist(), min_objectness, nms_iou, top_k=max_detections,
    ), dtype=np.int64).reshape(-1)
    return xyxy[keep], objectness[keep], class_probs[:, ys[keep], xs[keep]].T


def score(xyxy: np.ndarray, objectness: np.ndarray, class_probs: np.ndarray, labels: LabelMap, min_confidence: float) -> Detections:
    """Each candidate takes its most likely class; confidence = objectness x that class's probability."""
    class_id = class_probs.argmax(axis=1) if len(class_probs) else np.zeros(0, np.int64)
    confidence = objectness * class_probs[np.arange(len(class_id)), class_id]
    return Detections(xyxy, confidence, class_id, labels).with_min_confidence(min_confidence).sorted_by_confidence()


def decode(peaks, class_probs, sizes, offsets, labels: LabelMap, input_scale: float, image_size: tuple[int, int], min_confidence: float) -> Detections:
    """`candidates` then `score`, for the detector alone."""
    boxes, objectness, probs = candidates(peaks, class_probs, sizes, offsets, input_scale, image_size, min_confidence)
    return score(boxes, objectness, probs, labels, min_confidence)
