"""YOLO annotations: one text file per image, a `class_id cx cy w h` line per box, normalised to 0..1.

Layout (Ultralytics): ``images/SPLIT/ID.jpg`` and ``labels/SPLIT/ID.txt``; class names from ``classes.txt`` (one a
line) or else the ``names:`` entry of ``data.yaml``. An aligned template, where a set has one, is looked for under
``templates/SPLIT/`` with the image's file name (the layout `aivd.data.synthetic` writes).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from aivd.core import Detections, LabelMap
from aivd.data.box_samples import BoxSample
from aivd.data.deeppcb import DatasetError
from aivd.data.images import IMAGE_SUFFIXES

# Exporters round normalised values and some clip late, so a box may poke just past the image edge.
TOLERANCE = 1e-3
_COMMENT = re.compile(r"\s+#.*$")


def _parse_line(where: str, line: str, n_classes: int) -> tuple[int, tuple[float, float, float, float]]:
    fields = line.split()
    if len(fields) != 5:
        raise DatasetError(f"{where}: expected 'class_id cx cy w h' (5 fields), got {len(fields)}: {line!r}")
    try:
        class_value, *values = (float(field) for field in fields)
    except ValueError:
        raise DatasetError(f"{where}: non-numeric field in {line!r}") from None
    if not class_value.is_integer() or not 0 <= class_value < n_classes:
        raise DatasetError(f"{where}: class id {fields[0]} outside 0..{n_classes - 1}")
    if not all(-TOLERANCE <= value <= 1 + TOLERANCE for value in values):
        raise DatasetError(f"{where}: cx cy w h must be normalised to [0, 1], got {' '.join(fields[1:])}")
    cx, cy, w, h = values
    return int(class_value), (cx, cy, w, h)


def read_yolo_annotation(txt_path: str | Path, image_width: int, image_height: int, labels: LabelMap) -> Detections:
    """The boxes of one label file in pixels, clipped to the image, with confidence 1."""
    path = Path(txt_path)
    class_ids, cxcywh = [], []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            class_id, box = _parse_line(f"{path}:{line_no}", line, len(labels))
            class_ids.append(class_id)
            cxcywh.append(box)
    cx, cy, w, h = np.array(cxcywh, np.float64).reshape(-1, 4).T
    scale = np.array([image_width, image_height, image_width, image_height], np.float64)
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * scale
    detections = Detections(xyxy, np.ones(len(class_ids)), np.array(class_ids, np.int64), labels)
    return detections.clipped(image_width, image_height)


def format_yolo_annotation(detections: Detections, width: int, height: int) -> str:
    """The label-file body for `detections` on a `width` x `height` image."""
    xyxy = detections.xyxy.astype(np.float64) / np.array([width, height, width, height], np.float64)
    centres = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    sizes = xyxy[:, 2:] - xyxy[:, :2]
    return "".join(
        f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
        for class_id, (cx, cy), (w, h) in zip(detections.class_id.tolist(), centres, sizes)
    )


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def _flow_names(path: Path, line_no: int, value: str) -> tuple[str, ...]:
    if not (value.startswith("[") and value.endswith("]")):
        raise DatasetError(f"{path}:{line_no}: expected 'names: [a, b, ...]' or a block of 'N: name' lines")
    return tuple(_unquote(item) for item in value[1:-1].split(",") if item.strip())


def _block_names(path: Path, lines: list[str], first_line_no: int) -> tuple[str, ...]:
    names: dict[int, str] = {}
    for line_no, line in enumerate(lines, start=first_line_no):
        line = _COMMENT.sub("", line)
        if not line.strip():
            continue
        if not line[0].isspace():
            break
        key, separator, value = line.partition(":")
        if not separator or not key.strip().isdigit():
            raise DatasetError(f"{path}:{line_no}: expected '  N: name' under 'names:', got {line.strip()!r}")
        names[int(key)] = _unquote(value)
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}:{first_line_no - 1}: class ids under 'names:' must be 0..N-1, got {sorted(names)}")
    return tuple(names[class_id] for class_id in range(len(names)))


def _data_yaml_names(path: Path) -> tuple[str, ...]:
    # PyYAML is not a dependency, and only the two forms Ultralytics writes for `names` are needed.
    lines = path.read_text().splitlines()
    for line_no, line in enumerate(lines, start=1):
        key, separator, value = _COMMENT.sub("", line).partition(":")
        if separator and key == "names":
            value = value.strip()
            return _flow_names(path, line_no, value) if value else _block_names(path, lines[line_no:], line_no + 1)
    raise DatasetError(f"{path}: no top-level 'names:' entry")


def _class_names(root: Path) -> LabelMap:
    classes_txt, data_yaml = root / "classes.txt", root / "data.yaml"
    if classes_txt.is_file():
        names = tuple(line.strip() for line in classes_txt.read_text().splitlines() if line.strip())
    elif data_yaml.is_file():
        names = _data_yaml_names(data_yaml)
    else:
        raise DatasetError(f"{root}: no classes.txt or data.yaml to name the classes")
    try:
        return LabelMap(names)
    except ValueError as error:
        raise DatasetError(f"{root}: {error}") from None


def load_yolo_dataset(root: str | Path, split: str = "train") -> tuple[LabelMap, list[BoxSample]]:
    """The samples of one split of an Ultralytics-layout set, sorted by image file name."""
    root = Path(root)
    labels = _class_names(root)
    image_dir = root / "images" / split
    if not image_dir.is_dir():
        raise DatasetError(f"{root}: no images/{split} folder")
    samples = []
    for image_path in sorted(image_dir.iterdir()):
        if image_path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        template_path = root / "templates" / split / image_path.name
        samples.append(
            BoxSample(
                image_id=image_path.stem,
                image_path=image_path,
                template_path=template_path if template_path.is_file() else None,
                annotation_path=root / "labels" / split / f"{image_path.stem}.txt",
                labels=labels,
            )
        )
    return labels, samples
