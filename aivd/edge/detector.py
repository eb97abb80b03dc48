"""Edge detectors behind one small interface, run with ONNX Runtime or OpenVINO (`aivd.edge.runtimes`).

- `TemplateDetector`: the built-in template-aware model (`aivd train detector`); its ONNX metadata carries
  labels, input scale, the score threshold calibrated on held-out data and, optionally, the file name of a
  second-stage class refiner beside it (`aivd train refiner`) that re-decides each box's class from a
  full-resolution crop.
- `YoloOnnxDetector`: a user's own detector exported by Ultralytics (`yolo export format=onnx`), whose output
  is (1, 4 + classes, anchors) with centre-x, centre-y, width, height and per-class scores.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from aivd.core import Detections, LabelMap
from aivd.edge import centernet, tta
from aivd.edge.crops import crop_windows
from aivd.edge.runtimes import ModelError, ModelSession, open_session
from aivd.edge.tta import AUGMENTED_THRESHOLD_KEY

BUILTIN_MODEL = Path(__file__).parent / "models" / "deeppcb_centernet.onnx"
BUILTIN_OUTPUTS = ("peaks", "class_probs", "sizes", "offsets")
BUILTIN_TILE_SIZE = 640  # the built-in model is trained on DeepPCB's 640 x 640 images; larger ones are tiled


class Detector(Protocol):
    # Read-only properties, not attributes: wrappers (tiling, hot swap) expose their inner detector's values.
    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> LabelMap: ...

    @property
    def uses_template(self) -> bool: ...

    @property
    def min_confidence(self) -> float:
        """The calibrated (or user's) threshold for decisions made at the edge."""
        ...

    def detect(self, image: np.ndarray, template: np.ndarray | None = None, min_confidence: float | None = None) -> Detections:
        """Defects in `image`; `min_confidence` overrides the detector's threshold for this call (the edge-cloud
        pipeline proposes lower-scoring candidates for the cloud to verify)."""
        ...


def detect_batch(detector: Detector, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None],
                 min_confidence: float | None = None) -> list[Detections]:
    """`detector.detect` of each image, in order: in one batch where the detector has `detect_batch`, else one by one."""
    batched = getattr(detector, "detect_batch", None)
    if batched is not None:
        return batched(images, templates, min_confidence)
    return [detector.detect(image, template, min_confidence) for image, template in zip(images, templates)]


def _stackable(inputs: Sequence[np.ndarray]) -> list[list[int]]:
    """The indices of `inputs` grouped by shape, each group in order: the inputs one model run can take together."""
    groups: dict[tuple, list[int]] = {}
    for index, array in enumerate(inputs):
        groups.setdefault(array.shape, []).append(index)
    return list(groups.values())


class TemplateDetector:
    """The built-in CenterNet-style detector; uses an aligned template when one is given."""

    uses_template = True

    def __init__(self, path: str | Path = BUILTIN_MODEL, min_confidence: float | None = None, threads: int = 2, session=None,
                 use_refiner: bool = True, augment: bool = False):
        """`augment`: test-time augmentation over the eight dihedral views (`aivd.edge.tta`), with the threshold
        calibrated for it; about six times slower."""
        self.path = Path(path)
        self.session = session or open_session(self.path, threads)
        meta = self.session.metadata
        if meta.get("aivd_model") != "centernet-lite":
            raise ModelError(f"{self.path}: not an aivd built-in detector (metadata aivd_model missing)")
        outputs = self.session.output_names
        if outputs != list(BUILTIN_OUTPUTS):
            raise ModelError(f"{self.path}: outputs {outputs}, expected {list(BUILTIN_OUTPUTS)}; retrain it with this version of aivd")
        self.labels = LabelMap(tuple(json.loads(meta["labels"])))
        self.input_scale = float(meta["input_scale"])
        self.augment = augment
        threshold_key = AUGMENTED_THRESHOLD_KEY if augment else "score_threshold"
        if min_confidence is None and threshold_key not in meta:
            raise ModelError(f"{self.path}: no {threshold_key} in its metadata; it was packaged before aivd calibrated one for "
                             "test-time augmentation: give a score threshold (--min-confidence), or package it again with this version")
        self.min_confidence = float(meta[threshold_key]) if min_confidence is None else min_confidence
        self.refiner_path = self.path.parent / meta["refiner"] if meta.get("refiner") and use_refiner else None
        self.refiner = open_session(self.refiner_path, threads) if self.refiner_path else None
        self.refiner_reject = self._refiner_reject_index(self.refiner) if self.refiner is not None else None
        self.name = f"builtin:{self.path.stem}"

    def detect(self, image: np.ndarray, template: np.ndarray | None = None, min_confidence: float | None = None) -> Detections:
        return self.detect_batch([image], [template], min_confidence)[0]

    def detect_batch(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None],
                     min_confidence: float | None = None) -> list[Detections]:
        """`detect` of each image, in order, with one detector run per input size (images of the same padded size
        and template presence stack) and one refiner run for the crops of all of them."""
        threshold = self.min_confidence if min_confidence is None else min_confidence
        if self.augment:
            found = [self._augmented_candidates(image, template, threshold) for image, template in zip(images, templates)]
        else:
            outputs = self._run([centernet.make_input(image, template, self.input_scale) for image, template in zip(images, templates)])
            found = []
            for image, (peaks, class_probs, sizes, offsets) in zip(images, outputs):
                height, width = image.shape[:2]
                found.append(centernet.candidates(peaks, class_probs, sizes, offsets, self.input_scale, (width, height), threshold))
        if self.refiner is not None and any(len(boxes) for boxes, _, _ in found):
            crops = np.concatenate([crop_windows(image, template, boxes) for image, template, (boxes, _, _) in zip(images, templates, found)])
            refiner = self.refiner

            def refine(batch: np.ndarray) -> np.ndarray:
                return refiner.run(None, {"crops": batch})[0]

            probs = tta.mean_over_views(refine, crops) if self.augment else refine(crops)
            if self.refiner_reject is not None:
                # The mass the refiner gives `no-defect` is taken from every class, which lowers the confidence
                # of a box it thinks is a false alarm.
                probs = np.delete(probs, self.refiner_reject, axis=1)
            per_image = np.split(probs, np.cumsum([len(boxes) for boxes, _, _ in found])[:-1])
            found = [(boxes, objectness, refined) for (boxes, objectness, _), refined in zip(found, per_image)]
        return [centernet.score(boxes, objectness, probs, self.labels, threshold) for boxes, objectness, probs in found]

    def _run(self, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
        """The model's outputs for each input, in order, with one run per input size."""
        outputs: list = [None] * len(inputs)
        for same_size in _stackable(inputs):
            stacked = self.session.run(None, {"input": np.concatenate([inputs[i] for i in same_size])})
            for row, index in enumerate(same_size):
                outputs[index] = [output[row] for output in stacked]
        return outputs

    def _augmented_candidates(self, image: np.ndarray, template: np.ndarray | None, threshold: float):
        """`centernet.candidates` of the eight views of `image` (and `template`), fused (`aivd.edge.tta`)."""
        height, width = image.shape[:2]
        inputs = [centernet.make_input(tta.view(image, turns, mirrored), None if template is None else tta.view(template, turns, mirrored),
                                       self.input_scale) for turns, mirrored in tta.VIEWS]
        per_view = []
        for (turns, mirrored), (peaks, class_probs, sizes, offsets) in zip(tta.VIEWS, self._run(inputs)):
            view_size = (width, height) if turns % 2 == 0 else (height, width)
            boxes, objectness, probs = centernet.candidates(peaks, class_probs, sizes, offsets, self.input_scale, view_size,
                                                            min(tta.VIEW_FLOOR, threshold))
            per_view.append((tta.boxes_from_view(boxes, turns, mirrored, width, height), objectness, probs))
        return tta.fuse(per_view, threshold)

    def _refiner_reject_index(self, refiner: ModelSession) -> int | None:
        """Where the refiner's `no-defect` output is, if it has one; its other labels must be the detector's."""
        meta = refiner.metadata
        labels = json.loads(meta.get("labels", "[]"))
        reject = meta.get("reject_label")
        defect_labels = [name for name in labels if name != reject]
        if defect_labels != list(self.labels.names):
            raise ModelError(f"{self.refiner_path}: refiner labels {labels} do not match the detector's {list(self.labels.names)}")
        return labels.index(reject) if reject in labels else None


def _yolo_names(meta: dict[str, str], path: Path) -> LabelMap:
    raw = meta.get("names")
    if not raw:
        raise ModelError(f"{path}: no 'names' metadata; is this an Ultralytics ONNX export?")
    try:
        names = ast.literal_eval(raw)  # Ultralytics writes a Python dict literal, e.g. "{0: 'open', ...}"
    except (ValueError, SyntaxError):
        raise ModelError(f"{path}: unreadable 'names' metadata {raw[:80]!r}") from None
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return LabelMap(tuple(str(n) for n in names))


class YoloOnnxDetector:
    """A user-supplied Ultralytics YOLO (v8/11 layout) ONNX detector; sees the test image only."""

    uses_template = False

    def __init__(self, path: str | Path, min_confidence: float = 0.25, nms_iou: float = 0.5, threads: int = 2, session=None):
        self.path = Path(path)
        self.session = session or open_session(self.path, threads)
        self.labels = _yolo_names(self.session.metadata, self.path)
        input_name, shape = self.session.inputs[0]
        height, width = shape[2:]
        if not (isinstance(height, int) and isinstance(width, int)):
            height = width = 640  # dynamic exports: Ultralytics' default size
        self.input_size = (int(width), int(height))
        self.input_name = input_name
        self.min_confidence = min_confidence
        self.nms_iou = nms_iou
        self.name = f"yolo:{self.path.stem}"

    def detect(self, image: np.ndarray, template: np.ndarray | None = None, min_confidence: float | None = None) -> Detections:
        threshold = self.min_confidence if min_confidence is None else min_confidence
        height, width = image.shape[:2]
        in_w, in_h = self.input_size
        # Letterbox as Ultralytics does: keep the aspect ratio, pad with grey 114 centred.
        gain = min(in_w / width, in_h / height)
        new_w, new_h = round(width * gain), round(height * gain)
        pad_x, pad_y = (in_w - new_w) / 2, (in_h - new_h) / 2
        canvas = np.full((in_h, in_w), 114, np.uint8)
        left, top = int(round(pad_x - 0.1)), int(round(pad_y - 0.1))
        canvas[top : top + new_h, left : left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        x = np.repeat(canvas[None, None].astype(np.float32) / 255, 3, axis=1)
        output = self.session.run(None, {self.input_name: x})[0][0]  # (4 + classes, anchors)
        if output.shape[0] != 4 + len(self.labels):
            raise ModelError(f"{self.path}: output has {output.shape[0]} rows, expected 4 + {len(self.labels)} classes")
        scores = output[4:]
        class_id = scores.argmax(axis=0)
        confidence = scores[class_id, np.arange(scores.shape[1])]
        keep = confidence >= threshold
        cx, cy, w, h = output[:4, keep]
        xyxy = np.stack([cx - w / 2 - left, cy - h / 2 - top, cx + w / 2 - left, cy + h / 2 - top], axis=1) / gain
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
        confidence, class_id = confidence[keep], class_id[keep]
        # Ultralytics' default NMS is per class.
        boxes = [[float(a), float(b), float(c - a), float(d - b)] for a, b, c, d in xyxy]
        kept = np.asarray(
            cv2.dnn.NMSBoxesBatched(boxes, confidence.tolist(), class_id.tolist(), threshold, self.nms_iou) if len(boxes) else [], np.int64,
        ).reshape(-1)
        return Detections(xyxy[kept], confidence[kept], class_id[kept], self.labels).sorted_by_confidence()


def load_detector(path: str | Path | None = None, min_confidence: float | None = None, threads: int = 2, augment: bool = False) -> Detector:
    """The built-in detector, or the ONNX file at `path` (aivd built-in or Ultralytics YOLO layout); `augment`:
    test-time augmentation, for aivd's own detectors (`aivd.edge.tta`)."""
    if path is None:
        return TemplateDetector(BUILTIN_MODEL, min_confidence, threads, augment=augment)
    session = open_session(Path(path), threads)
    if session.metadata.get("aivd_model") == "centernet-lite":
        return TemplateDetector(path, min_confidence, threads, session, augment=augment)
    if augment:
        raise ModelError(f"{path}: test-time augmentation is for aivd's own detectors; a YOLO export has its own (Ultralytics' augment)")
    return YoloOnnxDetector(path, 0.25 if min_confidence is None else min_confidence, threads=threads, session=session)
