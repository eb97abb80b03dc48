"""Ultralytics YOLO data sets: a data YAML naming the classes and each split's images; one label file per image
with a `class_id cx cy w h` line per box, normalised to 0..1.

The YAML (read with `yaml.safe_load`) has `path` (the root; relative to the YAML's folder, default that folder),
`train` / `val` / `test` (each a folder searched recursively, a .txt list of image paths relative to the root, a
list of those, or a COCO .json for that split) and `names` (a list, or a mapping from id 0..N-1 to name). Labels are
found as Ultralytics finds them: the last `/images/` in an image's path becomes `/labels/`, the suffix `.txt`; a
missing or empty label file means no defect. Templates: the optional `templates` folder (TEMPLATES/SPLIT/NAME or
TEMPLATES/NAME), else NAME_temp beside NAME_test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from aivd.core import Detections, LabelMap
from aivd.data.coco import image_folders, read_coco_split
from aivd.data.dataset import Box, DatasetError, DataSource, DataSplit, SplitBuilder, read_text
from aivd.data.images import IMAGE_SUFFIXES
from aivd.data.templates import find_template
from aivd.data.yaml_files import first_problem, read_yaml_mapping

SPLITS = ("train", "val", "test")
_IMAGES, _LABELS = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
_YAML_EXAMPLE = "'train: images/train', 'val: images/val', 'names: [scratch, dent]'"


class DataYaml(BaseModel):
    """The keys of an Ultralytics data YAML aivd reads; others (nc, download, ...) are allowed and ignored."""

    model_config = ConfigDict(extra="allow")

    path: str | None = None
    train: str | list[str] | None = None
    val: str | list[str] | None = None
    test: str | list[str] | None = None
    names: list[str] | dict[int, str]
    templates: str | None = None


def label_path(image: Path) -> Path:
    """Where Ultralytics looks for an image's labels: the last /images/ becomes /labels/, the suffix .txt."""
    head, separator, tail = str(image).rpartition(_IMAGES)
    return Path(f"{head}{_LABELS}{tail}" if separator else str(image)).with_suffix(".txt")


def parse_yolo_labels(text: str, n_classes: int) -> list[Box]:
    """The `class_id cx cy w h` lines as boxes in fractions of the image size; a bad line raises `DatasetError`
    naming it (`line N: ...`)."""
    boxes = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DatasetError(f"line {line_no}: expected 'class_id cx cy w h' (5 fields), got {len(fields)}: {line!r}")
        try:
            class_value, cx, cy, w, h = (float(field) for field in fields)
        except ValueError:
            raise DatasetError(f"line {line_no}: non-numeric field in {line!r}") from None
        if not class_value.is_integer() or not 0 <= class_value < n_classes:
            raise DatasetError(f"line {line_no}: unknown class id {fields[0]} (expected 0..{n_classes - 1})")
        boxes.append(Box(f"line {line_no}", (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), int(class_value)))
    return boxes


def format_yolo_annotation(detections: Detections, width: int, height: int) -> str:
    """The label-file body for `detections` on a `width` x `height` image."""
    xyxy = detections.xyxy.astype(np.float64) / np.array([width, height, width, height], np.float64)
    centres = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    sizes = xyxy[:, 2:] - xyxy[:, :2]
    return "".join(
        f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
        for class_id, (cx, cy), (w, h) in zip(detections.class_id.tolist(), centres, sizes)
    )


def _labels(names: list[str] | dict[int, str], yaml_path: Path) -> LabelMap:
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{yaml_path}: names: class ids must be 0..N-1, got {sorted(names)}")
        names = [names[class_id] for class_id in range(len(names))]
    try:
        return LabelMap(tuple(names))
    except ValueError as error:
        raise DatasetError(f"{yaml_path}: names: {error}") from None


def _images_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


class YoloSource(DataSource):
    format = "yolo"

    def __init__(self, yaml_path: str | Path) -> None:
        self.yaml_path = Path(yaml_path)
        try:
            config = DataYaml.model_validate(read_yaml_mapping(self.yaml_path, DatasetError, _YAML_EXAMPLE))
        except ValidationError as error:
            raise DatasetError(first_problem(error, str(self.yaml_path))) from None
        # An absolute path stays as it is: Path / absolute gives the absolute path.
        root = self.yaml_path.parent / config.path if config.path else self.yaml_path.parent
        super().__init__(root, _labels(config.names, self.yaml_path))
        self.entries = {name: [entry] if isinstance(entry, str) else entry
                        for name in SPLITS if (entry := getattr(config, name))}
        if not self.entries:
            raise DatasetError(f"{self.yaml_path}: no train, val or test entry naming the images")
        self.templates = self.root / config.templates if config.templates else None

    def split_names(self) -> list[str]:
        return list(self.entries)

    def split(self, name: str) -> DataSplit:
        if name not in self.entries:
            raise self.no_split(name)
        entries = self.entries[name]
        if any(entry.lower().endswith(".json") for entry in entries):
            if len(entries) != 1:
                raise DatasetError(f"{self.yaml_path}: {name}: a COCO .json must be the split's only entry")
            return read_coco_split(self.root / entries[0], name, image_folders(self.root, name), self.labels, self.templates)
        builder = SplitBuilder(name, self.labels)
        images: list[Path] = []
        for entry in entries:
            images += self._entry_images(name, self.root / entry, builder)
        templates = {find_template(image, self.templates, name) for image in images}
        for image in images:
            if image not in templates:  # NAME_temp beside NAME_test is the template, not a sample
                self._add(builder, image, find_template(image, self.templates, name))
        return builder.build()

    def _entry_images(self, split: str, path: Path, builder: SplitBuilder) -> list[Path]:
        """The images an entry names; for a folder under images/, its labels folder's files without an image are
        problems (a list file's folders may hold other splits' images, so those are not checked)."""
        if path.is_dir():
            images = _images_under(path)
            labels_folder = label_path(path / "x").parent
            if labels_folder != path and labels_folder.is_dir():
                expected = {label_path(image) for image in images}
                for orphan in sorted(set(labels_folder.rglob("*.txt")) - expected):
                    if orphan.name != "classes.txt":  # labelImg writes the class names beside the labels
                        builder.problem(orphan, f"label file without an image (no {orphan.stem}.* under {path})")
            return images
        if path.is_file() and path.suffix.lower() == ".txt":
            try:
                lines = read_text(path).splitlines()
            except DatasetError as error:
                raise DatasetError(f"{path}: {error}") from None
            return [self.root / line.strip() for line in lines if line.strip()]
        what = "not found" if not path.exists() else "is not a folder, a .txt list of images or a COCO .json"
        raise DatasetError(f"{self.yaml_path}: {split}: {path} {what}")

    def _add(self, builder: SplitBuilder, image: Path, template: Path | None) -> None:
        label = label_path(image)
        if not label.is_file():
            builder.add(image, [], template_path=template, normalised=True)
            return
        try:
            boxes = parse_yolo_labels(read_text(label), len(self.labels))
        except DatasetError as error:
            builder.problem(label, str(error))
            return
        builder.add(image, boxes, annotation_path=label, template_path=template, normalised=True)
