"""`export_dataset`: the reviewed images with their human labels, as a data set `aivd train pack` and
`aivd finetune build` read.

Only reviewed images, each with its newest review's labels (verdict `good`: an image with no box, a defect-free
example). Everything is the split `train` (the readers hold a seeded tenth out for validation). Layouts, as
`aivd.data.sources.open_data` detects them:
- yolo: data.yaml, images/train/, labels/train/ and templates/train/;
- voc: Annotations/, JPEGImages/, Templates/ and ImageSets/Main/train.txt;
- coco: annotations/instances_train.json and images/train/ with each template as NAME_temp beside NAME_test.
Images are named `ROW-IMAGEID.EXT` (ROW the image's row in the database, as image ids repeat across runs; in COCO
`ROW-IMAGEID_test.EXT`), so a sample's id in the data set is `ROW-IMAGEID`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from aivd.core import LabelMap
from aivd.data.coco import format_coco_annotations
from aivd.data.images import ImageError, read_image_size
from aivd.data.templates import TEMPLATE_SUFFIX, TEST_SUFFIX
from aivd.data.voc import format_voc_annotation
from aivd.data.yolo import format_yolo_annotation
from aivd.review.store import Review, ReviewError, ReviewStore

EXPORT_FORMATS = ("yolo", "voc", "coco")
SPLIT = "train"


def _stem(review: Review) -> str:
    return f"{review.image_row_id}-{re.sub(r'[^A-Za-z0-9._-]', '_', review.image_id)}"




def export_dataset(url: str, out_dir: str | Path, fmt: str, run_id: int | None = None) -> dict:
    """Write the reviewed images of the database at `url` (of run `run_id`, or all) into `out_dir` (new or empty)
    in format `fmt`; returns what was written: format, images, boxes, classes and the path to give as `--data`."""
    if fmt not in EXPORT_FORMATS:
        raise ReviewError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReviewError(f"{out}: the export folder must be new or empty")
    with ReviewStore(url) as store:
        reviewed = store.current_reviews(run_id)
        if not reviewed:
            raise ReviewError(f"the result database {store.url} has no reviewed image{'' if run_id is None else f' in run {run_id}'} to export")
        # The runs' classes in their own order (the first run's first), so class ids match the edge model's.
        names = list(dict.fromkeys(name for run in dict.fromkeys(r.run_id for r in reviewed) for name in store.known_classes(run)))
    labels = LabelMap(tuple(names))
    out.mkdir(parents=True, exist_ok=True)
    write = _WRITERS[fmt]
    items = []
    for review in reviewed:
        try:
            width, height = read_image_size(review.image)
        except ImageError as error:
            raise ReviewError(f"image {review.image_row_id} cannot be exported: {error}") from None
        items.append((review, review.detections(labels), width, height))
    write(out, items, labels)
    return {"format": fmt, "images": len(items), "boxes": sum(len(truth) for _, truth, _, _ in items), "classes": names,
            "data": str(out)}


def _copy(source: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _image_name(review: Review, marked: bool = False) -> str:
    """ROW-IMAGEID.EXT; `marked`: ROW-IMAGEID_test.EXT, for a template beside it as ROW-IMAGEID_temp.EXT."""
    return f"{_stem(review)}{TEST_SUFFIX if marked else ''}{Path(review.image).suffix.lower()}"


def _write_yolo(out: Path, items, labels: LabelMap) -> None:
    # No `path`: the YAML's own folder is the root, wherever the set is moved.
    data = {"train": f"images/{SPLIT}", "templates": "templates", "names": list(labels.names)}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (out / "labels" / SPLIT).mkdir(parents=True)
    for review, truth, width, height in items:
        name = _image_name(review)
        _copy(review.image, out / "images" / SPLIT / name)
        if review.template:
            _copy(review.template, out / "templates" / SPLIT / name)
        (out / "labels" / SPLIT / Path(name).with_suffix(".txt")).write_text(format_yolo_annotation(truth, width, height))


def _write_voc(out: Path, items, labels: LabelMap) -> None:
    (out / "Annotations").mkdir(parents=True)
    ids = []
    for review, truth, width, height in items:
        name = _image_name(review)
        _copy(review.image, out / "JPEGImages" / name)
        if review.template:
            _copy(review.template, out / "Templates" / name)
        (out / "Annotations" / f"{Path(name).stem}.xml").write_text(format_voc_annotation(truth, name, width, height))
        ids.append(Path(name).stem)
    lists = out / "ImageSets" / "Main"
    lists.mkdir(parents=True)
    (lists / f"{SPLIT}.txt").write_text("".join(f"{image_id}\n" for image_id in ids))


def _write_coco(out: Path, items, labels: LabelMap) -> None:
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": name} for i, name in enumerate(labels.names)]}
    for review, truth, width, height in items:
        name = _image_name(review, marked=True)
        _copy(review.image, out / "images" / SPLIT / name)
        if review.template:  # COCO has no place for it: NAME_temp beside NAME_test, where the readers look
            _copy(review.template, out / "images" / SPLIT / f"{_stem(review)}{TEMPLATE_SUFFIX}{Path(review.template).suffix.lower()}")
        coco["images"].append({"id": review.image_row_id, "file_name": name, "width": width, "height": height})
        coco["annotations"] += format_coco_annotations(truth, review.image_row_id, len(coco["annotations"]) + 1)
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / f"instances_{SPLIT}.json").write_text(json.dumps(coco, indent=1))


_WRITERS = {"yolo": _write_yolo, "voc": _write_voc, "coco": _write_coco}
