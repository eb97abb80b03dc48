"""`open_data`: a labelled defect image set as its users have it, in whichever format it is in.

`--data` accepts an Ultralytics data YAML (or a folder holding data.yaml), a Pascal VOC root, a COCO .json file or
folder, and a DeepPCB root; every format gives the same `DataSource` (`aivd.data.dataset`), whose splits are
`DataSplit`s of `Sample`s.
"""

from __future__ import annotations

from pathlib import Path

from aivd.data.coco import CocoSource
from aivd.data.dataset import DatasetError, DataSource, DataSplit, Sample
from aivd.data.deeppcb import DeepPCBSource, pcbdata_dir
from aivd.data.voc import VocSource
from aivd.data.yolo import YoloSource

__all__ = ["open_data", "DataSource", "DataSplit", "Sample", "DatasetError", "FORMATS"]

FORMATS = ("yolo", "voc", "coco", "deeppcb")
_YAML_SUFFIXES = (".yaml", ".yml")


def open_data(path: str | Path) -> DataSource:
    """The data set at `path`, its format detected; `DatasetError` with one line when it is none aivd reads."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in _YAML_SUFFIXES:
            return YoloSource(path)
        if path.suffix.lower() == ".json":
            return CocoSource(path)
        raise DatasetError(f"{path}: not a data set file (expected an Ultralytics data .yaml or a COCO .json)")
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    for name in ("data.yaml", "data.yml"):
        if (path / name).is_file():
            return YoloSource(path / name)
    if pcbdata_dir(path) is not None:
        return DeepPCBSource(path)
    if any((path / "Annotations").glob("*.xml")):
        return VocSource(path)
    if any((path / "annotations").glob("*.json")):
        return CocoSource(path)
    hint = ""
    if (path / "images").is_dir():
        hint = "; a YOLO folder needs a data.yaml naming its classes and splits (names, train, val)"
    raise DatasetError(
        f"{path}: not a data set aivd reads (expected data.yaml for Ultralytics YOLO, Annotations/*.xml for Pascal VOC, "
        f"annotations/*.json or a .json file for COCO, or PCBData/ for DeepPCB){hint}"
    )
