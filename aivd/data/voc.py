"""Pascal VOC annotations: one XML file per image with an `<object>` (`<name>`, `<bndbox>`) per box.

Layout: ``Annotations/ID.xml``, ``JPEGImages/ID.jpg`` and optionally ``ImageSets/Main/SPLIT.txt`` (one ID a
line), as the PKU/HRIPCB PCB-defect set ships. An aligned template, where a set has one, is looked for under
``Templates/`` with the image's file name (the layout `aivd.data.synthetic` writes).

Coordinates are taken as written (no 1-based shift), so boxes written by `format_voc_annotation` read back unchanged.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aivd.core import Detections, LabelMap
from aivd.data.box_samples import BoxSample
from aivd.data.deeppcb import DatasetError
from aivd.data.images import IMAGE_SUFFIXES

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")
_SEPARATORS = re.compile(r"[-_\s]+")


def normalise_class_name(name: str) -> str:
    """The key all spellings of one class share: `Mouse_bite`, `mouse-bite` and `mouse bite` give `mouse_bite`.

    Annotators and tools disagree on case and separators, and a box must not be lost over that.
    """
    return _SEPARATORS.sub("_", name.strip().lower())


@dataclass(frozen=True)
class _VocObject:
    name: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class _VocFile:
    path: Path
    filename: str | None
    objects: tuple[_VocObject, ...]


def _parse_object(path: Path, index: int, element: ET.Element) -> _VocObject:
    where = f"{path}: object {index}"
    name = (element.findtext("name") or "").strip()
    if not name:
        raise DatasetError(f"{where}: missing <name>")
    bndbox = element.find("bndbox")
    if bndbox is None:
        raise DatasetError(f"{where} ({name}): missing <bndbox>")
    try:
        x1, y1, x2, y2 = (float(bndbox.findtext(tag)) for tag in _BOX_TAGS)
    except (TypeError, ValueError):
        raise DatasetError(f"{where} ({name}): <bndbox> needs numeric {', '.join(_BOX_TAGS)}") from None
    if not np.all(np.isfinite((x1, y1, x2, y2))):
        raise DatasetError(f"{where} ({name}): <bndbox> has a non-finite coordinate")
    if x2 < x1 or y2 < y1:
        raise DatasetError(f"{where} ({name}): box {x1:g},{y1:g},{x2:g},{y2:g} has xmax < xmin or ymax < ymin")
    return _VocObject(name, (x1, y1, x2, y2))


def _parse(path: Path) -> _VocFile:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"{path}: not well-formed XML ({error})") from None
    objects = tuple(_parse_object(path, index, element) for index, element in enumerate(root.findall("object"), start=1))
    filename = (root.findtext("filename") or "").strip() or None
    return _VocFile(path, filename, objects)


def _class_lookup(labels: LabelMap) -> dict[str, int]:
    lookup = {normalise_class_name(name): class_id for class_id, name in enumerate(labels.names)}
    if len(lookup) != len(labels):
        raise ValueError(f"class names {labels.names} are not distinct once case and separators are ignored")
    return lookup


def _class_ids(voc: _VocFile, labels: LabelMap, lookup: dict[str, int]) -> list[int]:
    class_ids = []
    for index, obj in enumerate(voc.objects, start=1):
        class_id = lookup.get(normalise_class_name(obj.name))
        if class_id is None:
            raise DatasetError(
                f"{voc.path}: object {index}: unknown class {obj.name!r}; expected one of {', '.join(labels.names)}"
            )
        class_ids.append(class_id)
    return class_ids


def _to_detections(voc: _VocFile, labels: LabelMap) -> Detections:
    class_ids = _class_ids(voc, labels, _class_lookup(labels))
    boxes = np.array([obj.box for obj in voc.objects], np.float32).reshape(-1, 4)
    return Detections(boxes, np.ones(len(class_ids)), np.array(class_ids, np.int64), labels)


def read_voc_annotation(xml_path: str | Path, labels: LabelMap) -> Detections:
    """The boxes of one VOC file with confidence 1; object numbers in error messages count from 1."""
    return _to_detections(_parse(Path(xml_path)), labels)


def format_voc_annotation(detections: Detections, filename: str, width: int, height: int, depth: int = 1) -> str:
    """A VOC XML document for one image; `read_voc_annotation` reads it back to the same boxes and names."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", depth)):
        ET.SubElement(size, tag).text = str(value)
    for box, name in zip(detections.xyxy, detections.class_names):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(_BOX_TAGS, box):
            ET.SubElement(bndbox, tag).text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _infer_labels(names: Iterable[str]) -> LabelMap:
    # One spelling per class, the first in sorted order, so the map does not depend on the order files are read.
    spelling: dict[str, str] = {}
    for name in sorted(set(names)):
        spelling.setdefault(normalise_class_name(name), name)
    return LabelMap(tuple(spelling[key] for key in sorted(spelling)))


def _annotation_paths(root: Path, split: str | None) -> list[Path]:
    annotations = root / "Annotations"
    if split is None:
        return sorted(annotations.glob("*.xml"))
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"{root}: no split list {split_file.relative_to(root)}")
    paths = []
    for line_no, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.split():
            continue
        path = annotations / f"{line.split()[0]}.xml"
        if not path.is_file():
            raise DatasetError(f"{split_file}:{line_no}: no annotation {path}")
        paths.append(path)
    return paths


def _find_image(root: Path, voc: _VocFile) -> Path:
    images = root / "JPEGImages"
    # Some tools write the full path they annotated on; only the name is meaningful here.
    if voc.filename and (images / Path(voc.filename).name).is_file():
        return images / Path(voc.filename).name
    stem = voc.path.stem
    for suffix in IMAGE_SUFFIXES:
        for candidate in (images / f"{stem}{suffix}", images / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise DatasetError(f"{voc.path}: no image {voc.filename!r} or {stem}.* in {images}")


def _sample(root: Path, voc: _VocFile, labels: LabelMap) -> BoxSample:
    image_path = _find_image(root, voc)
    template_path = root / "Templates" / image_path.name
    return BoxSample(
        image_id=voc.path.stem,
        image_path=image_path,
        template_path=template_path if template_path.is_file() else None,
        annotation_path=voc.path,
        labels=labels,
    )


def load_voc_dataset(
    root: str | Path, labels: LabelMap | None = None, split: str | None = None
) -> tuple[LabelMap, list[BoxSample]]:
    """The samples of a VOC-layout set (all annotations, or those a split lists), sorted or in list order.

    Without `labels` the classes are the sorted names found. Every file is parsed and checked here, so a bad
    annotation fails the load rather than a training run hours later.
    """
    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise DatasetError(f"{root}: not a VOC root (expected an Annotations folder)")
    files = [_parse(path) for path in _annotation_paths(root, split)]
    if labels is None:
        labels = _infer_labels(obj.name for voc in files for obj in voc.objects)
    lookup = _class_lookup(labels)
    for voc in files:
        _class_ids(voc, labels, lookup)
    return labels, [_sample(root, voc, labels) for voc in files]
