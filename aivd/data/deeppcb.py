"""The DeepPCB data set: aligned test/template pairs with `x1 y1 x2 y2 class_id` annotations.

Layout (as published): ``PCBData/groupG/G/NNNNNNNN_test.jpg``, ``..._temp.jpg`` and
``PCBData/groupG/G_not/NNNNNNNN.txt``; the official splits list ``groupG/G/NNNNNNNN.jpg groupG/G_not/NNNNNNNN.txt``
per line in ``PCBData/trainval.txt`` and ``PCBData/test.txt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aivd.core import DEEPPCB_CLASSES, Detections

# DatasetError lives in aivd.data.dataset with the other shared types; callers still import it from here too.
from aivd.data.dataset import Box, DatasetError, DataSource, DataSplit, Sample, SplitBuilder, read_text

SPLITS = ("trainval", "test")
ROOT_ENV = "AIVD_DEEPPCB_ROOT"
SPLIT_ALIASES = {"train": "trainval"}  # what `DataSource.training_splits` and users call the training split


def default_root() -> Path | None:
    """The data set root from $AIVD_DEEPPCB_ROOT, else ../shared/data/deeppcb beside the checkout, if present."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data" / "deeppcb"
    return candidate if candidate.is_dir() else None


def pcbdata_dir(root: Path) -> Path | None:
    """The folder holding trainval.txt and test.txt (ROOT/PCBData, or ROOT itself), or None if neither does."""
    for candidate in (root / "PCBData", root):
        if (candidate / "test.txt").is_file() and (candidate / "trainval.txt").is_file():
            return candidate
    return None


class DeepPCBSource(DataSource):
    """The official splits trainval and test (train is trainval); every test image has its template beside it."""

    format = "deeppcb"

    def __init__(self, root: str | Path) -> None:
        super().__init__(Path(root), DEEPPCB_CLASSES)
        base = pcbdata_dir(self.root)
        if base is None:
            raise DatasetError(f"{root}: not a DeepPCB root (expected PCBData/test.txt and PCBData/trainval.txt)")
        self.base = base

    def split_names(self) -> list[str]:
        return list(SPLITS)

    def split(self, name: str) -> DataSplit:
        name = SPLIT_ALIASES.get(name, name)
        if name not in SPLITS:
            raise self.no_split(name)
        builder = SplitBuilder(name, self.labels)
        list_file = self.base / f"{name}.txt"
        try:
            lines = read_text(list_file).splitlines()
        except DatasetError as error:
            raise DatasetError(f"{list_file}: {error}") from None
        for line_no, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                builder.problem(list_file, f"line {line_no}: expected 'IMAGE ANNOTATION', got {line!r}")
                continue
            image_rel, annotation_rel = parts
            stem = image_rel[: -len(".jpg")] if image_rel.endswith(".jpg") else image_rel
            image_path, template_path = self.base / f"{stem}_test.jpg", self.base / f"{stem}_temp.jpg"
            annotation_path = self.base / annotation_rel
            if not template_path.is_file():
                builder.problem(image_path, f"template {template_path} not found")
                continue
            try:
                boxes = annotation_boxes(read_text(annotation_path))
            except DatasetError as error:
                builder.problem(annotation_path, str(error))
                continue
            builder.add(image_path, boxes, annotation_path=annotation_path, template_path=template_path, image_id=Path(stem).name)
        return builder.build()

    def training_splits(self, seed: int = 0) -> tuple[DataSplit, DataSplit]:
        """trainval less every 10th sample, and those: the rule the shipped models were trained with (`seed` unused)."""
        trainval = self.split("trainval")
        train, val = holdout_split(trainval.samples)
        return DataSplit("train", self.labels, train, trainval.problems), DataSplit("val", self.labels, val)


def load_split(root: str | Path, split: str) -> list[Sample]:
    """The samples of an official split, in list order.

    The official splits are fixed lists, and a sample left out would change what is measured, so a split with
    any problem is refused here; `DeepPCBSource(root).split(name)` gives the usable samples and the problems.
    """
    loaded = DeepPCBSource(root).split(split)
    if loaded.problems:
        more = len(loaded.problems) - 1
        extra = f" (and {more} more problems; `aivd data check {root}` lists them)" if more else ""
        raise DatasetError(f"{loaded.problems[0]}{extra}")
    return loaded.samples


def read_annotation(path: str | Path) -> Detections:
    """Read an annotation file; see `parse_annotation`."""
    return parse_annotation(Path(path).read_text(), str(path))


def annotation_boxes(text: str) -> list[Box]:
    """The `x1 y1 x2 y2 class_id` lines (spaces or commas, LF or CRLF) as boxes with model ids (official 1..6 -> 0..5);
    a bad line raises `DatasetError` naming it (`line N: ...`)."""
    boxes = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            x1, y1, x2, y2, class_id = (int(float(v)) for v in fields)
        except ValueError:
            raise DatasetError(f"line {line_no}: expected 'x1 y1 x2 y2 class_id', got {line!r}") from None
        if not 1 <= class_id <= len(DEEPPCB_CLASSES):
            raise DatasetError(f"line {line_no}: unknown class id {class_id} (expected 1..{len(DEEPPCB_CLASSES)})")
        boxes.append(Box(f"line {line_no}", (x1, y1, x2, y2), class_id - 1))
    return boxes


def parse_annotation(text: str, path: str = "<annotation>") -> Detections:
    """The boxes of an annotation file's text (see `annotation_boxes`); errors name `path`."""
    try:
        boxes = annotation_boxes(text)
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None
    for box in boxes:
        x1, y1, x2, y2 = box.xyxy
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{path}: {box.where}: box {x1},{y1},{x2},{y2} has x2 < x1 or y2 < y1")
    xyxy = np.array([box.xyxy for box in boxes], np.float32).reshape(-1, 4)
    return Detections(xyxy, np.ones(len(boxes)), np.array([box.class_id for box in boxes]), DEEPPCB_CLASSES)


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
