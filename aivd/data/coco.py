"""COCO detection annotations: one JSON file per split with `images`, `annotations` and `categories`.

Accepted as a single ``.json`` file (split "train"), as a folder with ``annotations/instances_SPLIT.json`` (or
``annotations/SPLIT.json``), or as a split of an Ultralytics data YAML. Category ids may be any numbers: classes are
numbered 0..N-1 in category-id order. Boxes are ``[x, y, width, height]`` in pixels; ``iscrowd`` boxes (regions of
many objects, not one defect) are skipped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ValidationError

from aivd.core import Detections, LabelMap
from aivd.data.dataset import Box, DatasetError, DataSource, DataSplit, SplitBuilder, read_text
from aivd.data.templates import find_template, image_id_of
from aivd.data.yaml_files import first_problem

SPLIT_ORDER = ("train", "val", "test")  # whose categories name the classes: the first present


class _Category(BaseModel):
    id: int
    name: str


class _Image(BaseModel):
    id: int | str
    file_name: str


class _Annotation(BaseModel):
    image_id: int | str
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0


class _CocoFile(BaseModel):
    # Images and annotations are checked one by one, so one bad entry leaves out one image, not the split.
    images: list[dict]
    annotations: list[dict] = []
    categories: list[_Category]


def _problem(error: ValidationError) -> str:
    return first_problem(error, "").removeprefix(": ")


def load_coco_file(path: Path) -> _CocoFile:
    """The file's top level checked; `DatasetError` naming the file when it is not a COCO detection file."""
    try:
        data = json.loads(read_text(path))
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO object with images, annotations and categories")
    try:
        return _CocoFile.model_validate(data)
    except ValidationError as error:
        raise DatasetError(first_problem(error, str(path))) from None


def coco_labels(coco: _CocoFile, path: Path) -> tuple[LabelMap, dict[int, int]]:
    """The classes in category-id order, and each category id's class id."""
    categories = sorted(coco.categories, key=lambda category: category.id)
    if len({category.id for category in categories}) != len(categories):
        raise DatasetError(f"{path}: categories: a category id is used twice")
    try:
        labels = LabelMap(tuple(category.name for category in categories))
    except ValueError as error:
        raise DatasetError(f"{path}: categories: {error}") from None
    return labels, {category.id: class_id for class_id, category in enumerate(categories)}


def format_coco_annotations(detections: Detections, image_id: int, first_id: int) -> list[dict]:
    """The COCO annotations of one image's boxes, numbered from `first_id`; categories are class id + 1, as COCO's
    start at 1."""
    return [
        {"id": first_id + index, "image_id": image_id, "category_id": int(class_id) + 1,
         "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)], "area": round(float((x2 - x1) * (y2 - y1)), 2),
         "iscrowd": 0}
        for index, ((x1, y1, x2, y2), class_id) in enumerate(zip(detections.xyxy, detections.class_id))
    ]


def image_folders(base: Path, split: str) -> list[Path]:
    """Where an image's `file_name` is looked for, in order."""
    return [base / "images" / split, base / split, base / "images", base]


def read_coco_split(
    path: Path, split: str, folders: list[Path], labels: LabelMap | None = None, templates: Path | None = None,
) -> DataSplit:
    """Split `split` from the COCO file `path`, images looked for in `folders`; the categories must give `labels`
    when they are given (the classes another split or a data YAML names)."""
    coco = load_coco_file(path)
    found, class_of = coco_labels(coco, path)
    if labels is not None and found != labels:
        raise DatasetError(f"{path}: categories {list(found.names)} differ from the data set's classes {list(labels.names)}")
    builder = SplitBuilder(split, found)
    images: dict[int | str, _Image] = {}
    for index, item in enumerate(coco.images):
        try:
            image = _Image.model_validate(item)
        except ValidationError as error:
            builder.problem(path, f"images[{index}]: {_problem(error)}")
            continue
        images[image.id] = image
    boxes: dict[int | str, list[Box]] = defaultdict(list)
    bad: set[int | str] = set()
    for index, item in enumerate(coco.annotations):
        where = f"annotation {item.get('id', f'[{index}]')}" if isinstance(item, dict) else f"annotations[{index}]"
        try:
            annotation = _Annotation.model_validate(item)
        except ValidationError as error:
            builder.problem(path, f"{where}: {_problem(error)}")
            image_id = item.get("image_id") if isinstance(item, dict) else None
            if isinstance(image_id, (int, str)) and image_id in images:
                bad.add(image_id)
            continue
        if annotation.image_id not in images:
            builder.problem(path, f"{where}: unknown image_id {annotation.image_id!r}")
        elif annotation.category_id not in class_of:
            builder.problem(path, f"{where} (image {images[annotation.image_id].file_name!r}): unknown category_id {annotation.category_id}")
            bad.add(annotation.image_id)
        elif not annotation.iscrowd:
            x, y, width, height = annotation.bbox
            boxes[annotation.image_id].append(Box(where, (x, y, x + width, y + height), class_of[annotation.category_id]))
    for image in images.values():
        if image.id in bad:
            continue
        image_path = next((folder / image.file_name for folder in folders if (folder / image.file_name).is_file()), None)
        if image_path is None:
            shown = ", ".join(str(folder) for folder in folders)
            builder.problem(path, f"image {image.file_name!r} (id {image.id}) not found in {shown}")
            continue
        builder.add(image_path, boxes[image.id], annotation_path=path, template_path=find_template(image_path, templates, split),
                    image_id=image_id_of(Path(image.file_name)))
    return builder.build()


class CocoSource(DataSource):
    """A single COCO file (split "train") or a folder of per-split files under annotations/."""

    format = "coco"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file():
            self.files, base = {"train": path}, path.parent
        else:
            self.files, base = _split_files(path / "annotations"), path
            if not self.files:
                raise DatasetError(f"{path}: not a COCO folder (expected annotations/instances_SPLIT.json or annotations/SPLIT.json)")
        self.single_file = path.is_file()
        first = next(name for name in (*SPLIT_ORDER, *sorted(self.files)) if name in self.files)
        labels, _ = coco_labels(load_coco_file(self.files[first]), self.files[first])
        super().__init__(base, labels)

    def split_names(self) -> list[str]:
        return sorted(self.files, key=lambda name: (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name))

    def split(self, name: str) -> DataSplit:
        if name not in self.files:
            if self.single_file:
                raise DatasetError(f"{self.files['train']}: a single COCO file is split 'train'; for a {name!r} split give a "
                                   f"folder with annotations/instances_{name}.json")
            raise self.no_split(name)
        return read_coco_split(self.files[name], name, image_folders(self.root, name), self.labels)


def _split_files(annotations: Path) -> dict[str, Path]:
    # instances_*.json when there are any: COCO folders also hold captions_*.json and person_keypoints_*.json.
    files = sorted(annotations.glob("instances_*.json")) or sorted(annotations.glob("*.json"))
    return {path.stem.removeprefix("instances_"): path for path in files}
