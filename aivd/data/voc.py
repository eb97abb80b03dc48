"""Pascal VOC annotations: one XML file per image with an `<object>` (`<name>`, `<bndbox>`) per box.

Layout: ``Annotations/ID.xml``, ``JPEGImages/ID.jpg`` and optionally ``ImageSets/Main/SPLIT.txt`` (one ID a
line), as the PKU/HRIPCB PCB-defect set and NEU-DET ship. An aligned template, where a set has one, is looked for
under ``Templates/`` with the image's file name (the layout `aivd.data.synthetic` writes), else by DeepPCB's
NAME_test / NAME_temp naming.

Coordinates are taken as written (no 1-based shift), so boxes written by `format_voc_annotation` read back unchanged.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aivd.core import Detections, LabelMap
from aivd.data.dataset import Box, DatasetError, DataSource, DataSplit, SplitBuilder, read_text
from aivd.data.images import IMAGE_SUFFIXES
from aivd.data.templates import find_template

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")
_SEPARATORS = re.compile(r"[-_\s]+")
SPLITS = ("train", "val", "test")


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
class VocFile:
    """One parsed annotation file."""

    path: Path
    filename: str | None
    objects: tuple[_VocObject, ...]


def _parse_object(index: int, element: ET.Element) -> _VocObject:
    where = f"object {index}"
    name = (element.findtext("name") or "").strip()
    if not name:
        raise DatasetError(f"{where}: missing <name>")
    bndbox = element.find("bndbox")
    if bndbox is None:
        raise DatasetError(f"{where} ({name}): missing <bndbox>")
    try:
        x1, y1, x2, y2 = (float(bndbox.findtext(tag) or "") for tag in _BOX_TAGS)  # a missing tag: float("") fails
    except ValueError:
        raise DatasetError(f"{where} ({name}): <bndbox> needs numeric {', '.join(_BOX_TAGS)}") from None
    return _VocObject(name, (x1, y1, x2, y2))


def parse_voc_file(path: Path) -> VocFile:
    """Parse one annotation file; `DatasetError` (without the path: the caller names the file) when it is bad."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"not well-formed XML ({error})") from None
    except OSError as error:
        raise DatasetError(f"cannot read ({error.strerror or error})") from None
    objects = tuple(_parse_object(index, element) for index, element in enumerate(root.findall("object"), start=1))
    filename = (root.findtext("filename") or "").strip() or None
    return VocFile(path, filename, objects)


def format_voc_annotation(detections: Detections, filename: str, width: int, height: int, depth: int = 1) -> str:
    """A VOC XML document for one image; `VocSource` reads it back to the same boxes and names."""
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


def infer_labels(names: Iterable[str]) -> LabelMap:
    """The sorted classes named, one per spelling-insensitive key (`normalise_class_name`)."""
    # One spelling per class, the first in sorted order, so the map does not depend on the order files are read.
    spelling: dict[str, str] = {}
    for name in sorted(set(names)):
        spelling.setdefault(normalise_class_name(name), name)
    return LabelMap(tuple(spelling[key] for key in sorted(spelling)))


def _find_image(images: Path, voc: VocFile) -> Path | None:
    # Some tools write the full path they annotated on; only the name is meaningful here.
    if voc.filename:
        name = voc.filename.replace("\\", "/").rsplit("/", 1)[-1]
        if (images / name).is_file():
            return images / name
    stem = voc.path.stem
    for suffix in IMAGE_SUFFIXES:
        for candidate in (images / f"{stem}{suffix}", images / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


class VocSource(DataSource):
    """Splits from ImageSets/Main/SPLIT.txt ("train" is train.txt, else trainval.txt less val.txt), or every
    annotation as "train" without split lists. The classes are the sorted names found in all annotations, so every
    split of the set has the same."""

    format = "voc"

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        annotations = root / "Annotations"
        if not annotations.is_dir():
            raise DatasetError(f"{root}: not a VOC root (expected an Annotations folder)")
        self._parsed: dict[Path, VocFile | DatasetError] = {}
        for path in sorted(annotations.glob("*.xml")):
            try:
                self._parsed[path] = parse_voc_file(path)
            except DatasetError as error:
                self._parsed[path] = error
        names = [obj.name for voc in self._parsed.values() if isinstance(voc, VocFile) for obj in voc.objects]
        super().__init__(root, infer_labels(names))
        self._class_of = {normalise_class_name(name): class_id for class_id, name in enumerate(self.labels.names)}
        self.lists = root / "ImageSets" / "Main"

    def _list(self, name: str) -> Path:
        return self.lists / f"{name}.txt"

    def _has_lists(self) -> bool:
        return any(self._list(name).is_file() for name in (*SPLITS, "trainval"))

    def _train_from_trainval(self) -> bool:
        return not self._list("train").is_file() and self._list("trainval").is_file()

    def split_names(self) -> list[str]:
        if not self._has_lists():
            return ["train"]
        return [name for name in SPLITS if self._list(name).is_file() or (name == "train" and self._train_from_trainval())]

    def _listed(self, name: str) -> list[tuple[Path, int, str]]:
        """(list file, line number, id) per entry of ImageSets/Main/NAME.txt."""
        list_file = self._list(name)
        try:
            lines = read_text(list_file).splitlines()
        except DatasetError as error:
            raise DatasetError(f"{list_file}: {error}") from None
        return [(list_file, line_no, line.split()[0]) for line_no, line in enumerate(lines, start=1) if line.split()]

    def split(self, name: str) -> DataSplit:
        builder = SplitBuilder(name, self.labels)
        if not self._has_lists() and name == "train":
            for path in self._parsed:
                self._add(builder, path)
            return builder.build()
        if name == "train" and self._train_from_trainval():
            # VOC's trainval is train + val: without train.txt, train is trainval less what val lists.
            val = {image_id for _, _, image_id in self._listed("val")} if self._list("val").is_file() else set()
            listed = [entry for entry in self._listed("trainval") if entry[2] not in val]
        elif self._list(name).is_file():
            listed = self._listed(name)
        else:
            raise self.no_split(name)
        annotations = self.root / "Annotations"
        for list_file, line_no, image_id in listed:
            path = annotations / f"{image_id}.xml"
            if path in self._parsed:
                self._add(builder, path)
            else:
                builder.problem(list_file, f"line {line_no}: no annotation {path}")
        return builder.build()

    def _add(self, builder: SplitBuilder, path: Path) -> None:
        voc = self._parsed[path]
        if isinstance(voc, DatasetError):
            builder.problem(path, str(voc))
            return
        image_path = _find_image(self.root / "JPEGImages", voc)
        if image_path is None:
            builder.problem(path, f"annotation without an image: no {voc.filename!r} or {path.stem}.* in {self.root / 'JPEGImages'}")
            return
        boxes = [Box(f"object {index} ({obj.name})", obj.box, self._class_of[normalise_class_name(obj.name)])
                 for index, obj in enumerate(voc.objects, start=1)]
        template = find_template(image_path, self.root / "Templates")
        builder.add(image_path, boxes, annotation_path=path, template_path=template, image_id=path.stem)
