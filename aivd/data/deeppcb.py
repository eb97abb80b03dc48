"""The DeepPCB data set: aligned test/template pairs with `x1 y1 x2 y2 class_id` annotations.

Layout (as published): ``PCBData/groupG/G/NNNNNNNN_test.jpg``, ``..._temp.jpg`` and
``PCBData/groupG/G_not/NNNNNNNN.txt``; the official splits list ``groupG/G/NNNNNNNN.jpg groupG/G_not/NNNNNNNN.txt``
per line in ``PCBData/trainval.txt`` and ``PCBData/test.txt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aivd.core import DEEPPCB_CLASSES, Detections

SPLITS = ("trainval", "test")
ROOT_ENV = "AIVD_DEEPPCB_ROOT"


class DatasetError(ValueError):
    """A data set that cannot be read as laid out; the message says which file and why."""


@dataclass(frozen=True)
class DeepPCBSample:
    image_id: str
    test_path: Path
    template_path: Path
    annotation_path: Path

    def ground_truth(self) -> Detections:
        return read_annotation(self.annotation_path)


def default_root() -> Path | None:
    """The data set root from $AIVD_DEEPPCB_ROOT, else ../shared/data/deeppcb beside the checkout, if present."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data" / "deeppcb"
    return candidate if candidate.is_dir() else None


def _pcbdata_dir(root: Path) -> Path:
    root = Path(root)
    for candidate in (root / "PCBData", root):
        if (candidate / "test.txt").is_file() and (candidate / "trainval.txt").is_file():
            return candidate
    raise DatasetError(f"{root}: not a DeepPCB root (expected PCBData/test.txt and PCBData/trainval.txt)")


def load_split(root: str | Path, split: str) -> list[DeepPCBSample]:
    """The samples of an official split, in list order."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    base = _pcbdata_dir(Path(root))
    samples = []
    list_file = base / f"{split}.txt"
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetError(f"{list_file}:{line_no}: expected 'IMAGE ANNOTATION', got {line!r}")
        image_rel, annotation_rel = parts
        stem = image_rel[: -len(".jpg")] if image_rel.endswith(".jpg") else image_rel
        samples.append(
            DeepPCBSample(
                image_id=Path(stem).name,
                test_path=base / f"{stem}_test.jpg",
                template_path=base / f"{stem}_temp.jpg",
                annotation_path=base / annotation_rel,
            )
        )
    return samples


def read_annotation(path: str | Path) -> Detections:
    """Read an annotation file; see `parse_annotation`."""
    return parse_annotation(Path(path).read_text(), str(path))


def parse_annotation(text: str, path: str = "<annotation>") -> Detections:
    """Parse `x1 y1 x2 y2 class_id` lines (spaces or commas, LF or CRLF); ids 1..6 become model ids 0..5."""
    boxes, classes = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            x1, y1, x2, y2, class_id = (int(float(v)) for v in fields)
        except ValueError:
            raise DatasetError(f"{path}:{line_no}: expected 'x1 y1 x2 y2 class_id', got {line!r}") from None
        if not 1 <= class_id <= len(DEEPPCB_CLASSES):
            raise DatasetError(f"{path}:{line_no}: class id {class_id} outside 1..{len(DEEPPCB_CLASSES)}")
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{path}:{line_no}: box {x1},{y1},{x2},{y2} has x2 < x1 or y2 < y1")
        boxes.append((x1, y1, x2, y2))
        classes.append(class_id - 1)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.ones(len(classes)), np.array(classes), DEEPPCB_CLASSES)


def format_submission(detections: Detections) -> str:
    """The official result-file body: `x1,y1,x2,y2,confidence,type` per line, integer coordinates, no spaces."""
    lines = []
    for (x1, y1, x2, y2), score, name in zip(detections.xyxy, detections.confidence, detections.class_names):
        lines.append(f"{int(round(x1))},{int(round(y1))},{int(round(x2))},{int(round(y2))},{float(score):.6f},{name}")
    return "".join(line + "\n" for line in lines)


def parse_submission(text: str, source: str = "<submission>") -> Detections:
    """Read a result file written by `format_submission` (or any method following the official format)."""
    boxes, scores, classes = [], [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != 6:
            raise DatasetError(f"{source}:{line_no}: expected 'x1,y1,x2,y2,confidence,type', got {line!r}")
        try:
            box = [float(v) for v in fields[:4]]
            score = float(fields[4])
            class_id = DEEPPCB_CLASSES.id(fields[5])
        except (ValueError, KeyError) as error:
            raise DatasetError(f"{source}:{line_no}: {error}") from None
        boxes.append(box)
        scores.append(score)
        classes.append(class_id)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores), np.array(classes), DEEPPCB_CLASSES)


def holdout_split(samples: list) -> tuple[list, list]:
    """Every 10th sample of trainval (9, 19, ...) is held out to choose epochs, thresholds and settings; the
    test split is never used for a choice."""
    return [s for i, s in enumerate(samples) if i % 10 != 9], samples[9::10]
