"""`Detections`: the one typed record of boxes every part of aivd exchanges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aivd.core.labels import LabelMap


def _as_array(values, dtype, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.size == 0:
        return array.reshape((0, *shape_tail))
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise ValueError(f"{what} must have shape (N, {', '.join(map(str, shape_tail))}); got {array.shape}")
    return array


@dataclass(frozen=True)
class Detections:
    """N boxes in pixel coordinates `x1, y1, x2, y2` with a score and a model class id each.

    `data` holds extra per-box fields (one array of length N each, as supervision's `Detections.data`), such as
    which tier decided a box; selecting, clipping and merging carry them along. Immutable and cheap: filters
    return new instances sharing nothing mutable.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    labels: LabelMap = field(compare=False)
    data: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        xyxy = _as_array(self.xyxy, np.float32, (4,), "xyxy")
        confidence = _as_array(self.confidence, np.float32, (), "confidence")
        class_id = _as_array(self.class_id, np.int64, (), "class_id")
        if not (len(xyxy) == len(confidence) == len(class_id)):
            raise ValueError(
                f"xyxy, confidence and class_id lengths differ: {len(xyxy)}, {len(confidence)}, {len(class_id)}"
            )
        if len(class_id) and (class_id.min() < 0 or class_id.max() >= len(self.labels)):
            raise ValueError(f"class ids must be in [0, {len(self.labels)}); got {sorted(set(class_id.tolist()))}")
        if len(xyxy) and np.any(xyxy[:, 2:] < xyxy[:, :2]):
            raise ValueError("boxes must satisfy x2 >= x1 and y2 >= y1")
        data = {}
        for key, values in self.data.items():
            values = np.array(values)  # a copy: the caller's array stays theirs
            if values.ndim < 1 or len(values) != len(xyxy):
                raise ValueError(f"data[{key!r}] must have one entry per box ({len(xyxy)}); got shape {values.shape}")
            values.setflags(write=False)
            data[key] = values
        object.__setattr__(self, "data", data)
        for name, value in (("xyxy", xyxy), ("confidence", confidence), ("class_id", class_id)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def empty(cls, labels: LabelMap) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), labels)

    @classmethod
    def merge(cls, parts: Sequence[Detections], labels: LabelMap | None = None) -> Detections:
        """Every box of `parts`, in order. The parts must share one LabelMap (`labels`, when given, must be it
        too); an empty `parts` needs `labels` to say which vocabulary the empty result has."""
        if labels is None:
            if not parts:
                raise ValueError("merging no Detections needs labels= for the (empty) result")
            labels = parts[0].labels
        for part in parts:
            if part.labels != labels:
                raise ValueError(f"cannot merge Detections with different labels: {list(labels.names)} and {list(part.labels.names)}")
        if not parts:
            return cls.empty(labels)
        keys = set(parts[0].data)
        if any(set(part.data) != keys for part in parts):
            raise ValueError(f"cannot merge Detections with different data fields: {sorted(sorted(p.data) for p in parts)}")
        return cls(
            np.concatenate([part.xyxy for part in parts]), np.concatenate([part.confidence for part in parts]),
            np.concatenate([part.class_id for part in parts]), labels,
            {key: np.concatenate([part.data[key] for part in parts]) for key in parts[0].data},
        )

    def __len__(self) -> int:
        return len(self.class_id)

    def __getitem__(self, index) -> Detections:
        """Select by boolean mask, index array or slice."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index], self.labels,
                          {key: values[index] for key, values in self.data.items()})

    @property
    def class_names(self) -> list[str]:
        return [self.labels.name(int(i)) for i in self.class_id]

    @property
    def area(self) -> np.ndarray:
        return (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])

    def sorted_by_confidence(self) -> Detections:
        # Stable sort so equal scores keep their input order: results are reproducible.
        return self[np.argsort(-self.confidence, kind="stable")]

    def with_min_confidence(self, threshold: float) -> Detections:
        return self[self.confidence >= threshold]

    def clipped(self, width: int, height: int) -> Detections:
        xyxy = self.xyxy.copy()
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
        return Detections(xyxy, self.confidence, self.class_id, self.labels, self.data)

    def to_records(self) -> list[dict]:
        return [
            {"bbox": [round(float(v), 1) for v in box], "defect_type": self.labels.name(int(c)), "confidence": round(float(s), 4)}
            for box, s, c in zip(self.xyxy, self.confidence, self.class_id)
        ]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes with continuous areas, as the ICDAR scripts compute."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (ix2 - ix1).clip(0) * (iy2 - iy1).clip(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
