"""One sample type for every data set format, the split of a data set that training and evaluation read, and
what every format's reader shares: checking a sample against its image, and the seeded hold-out.

Readers (DeepPCB, Pascal VOC, Ultralytics YOLO, COCO) all return `Sample`s whose ground truth is parsed and
checked when the split is loaded, so a bad annotation is found before hours of training, and a bad sample is
left out with one `DataProblem` line instead of stopping the run.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from aivd.core import Detections, LabelMap
from aivd.core.errors import AivdError
from aivd.data.images import ImageError, read_image_size
from aivd.data.templates import image_id_of

# Pixel formats: annotators' off-by-one (inclusive VOC corners, xmax == width). Normalised formats: exporters round
# and some clip late, so a box may poke just past the edge by a rounding step.
PIXEL_TOLERANCE = 1.0
NORMALISED_TOLERANCE = 1e-3


class DatasetError(AivdError, ValueError):
    """A data set that cannot be read as laid out; the message says which file and why."""


@dataclass(frozen=True)
class Sample:
    """An image, its optional aligned defect-free template, and its annotated boxes (confidence 1)."""

    image_id: str
    image_path: Path
    template_path: Path | None
    truth: Detections
    annotation_path: Path | None = None  # where the boxes were read from, for messages

    @property
    def labels(self) -> LabelMap:
        return self.truth.labels

    def ground_truth(self) -> Detections:
        return self.truth


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a data set: the file it is in and what is wrong, printed as one line."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class DataSplit:
    """The usable samples of one split, and every problem found while reading it (bad samples are left out)."""

    name: str
    labels: LabelMap
    samples: list[Sample]
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def has_templates(self) -> bool:
        """Every sample has a template: only then is a template-aware model trained."""
        return bool(self.samples) and all(sample.template_path is not None for sample in self.samples)


def read_text(path: Path) -> str:
    """An annotation or list file's text, or `DatasetError` saying why not (without the path: the caller names it)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError("file not found") from None
    except UnicodeDecodeError:
        raise DatasetError("not UTF-8 text") from None
    except OSError as error:
        raise DatasetError(f"cannot read ({error.strerror or error})") from None


class Box(NamedTuple):
    """One annotated box as a reader found it, before it is checked against its image."""

    where: str  # names the box in messages: "line 3", "object 2", "annotation 17"
    xyxy: tuple[float, float, float, float]  # pixels, or fractions of the image size for normalised formats
    class_id: int


def _box_problem(box: Box, xyxy: np.ndarray, width: int, height: int, tolerance: tuple[float, float]) -> str | None:
    x1, y1, x2, y2 = xyxy
    shown = f"{box.where}: box {x1:g},{y1:g},{x2:g},{y2:g}"
    if not np.all(np.isfinite(xyxy)):
        return f"{shown} has a non-finite coordinate"
    tol_x, tol_y = tolerance
    if x1 < -tol_x or y1 < -tol_y or x2 > width + tol_x or y2 > height + tol_y:
        return f"{shown} is outside the {width}x{height} image"
    x1, x2 = np.clip((x1, x2), 0, width)
    y1, y2 = np.clip((y1, y2), 0, height)
    if x2 <= x1 or y2 <= y1:
        return f"{shown} has no area (x2 <= x1 or y2 <= y1)"
    return None


class SplitBuilder:
    """Collects the samples of one split, checking each against its image; a sample with any problem is left out
    whole (not just its bad box), so no image is trained on with a defect left unlabelled."""

    def __init__(self, name: str, labels: LabelMap) -> None:
        self.name, self.labels = name, labels
        self.samples: list[Sample] = []
        self.problems: list[DataProblem] = []
        self._first_of: dict[str, Path] = {}

    def problem(self, path: str | Path, message: str) -> None:
        self.problems.append(DataProblem(str(path), message))

    def add(
        self, image_path: Path, boxes: Sequence[Box], *, annotation_path: Path | None = None,
        template_path: Path | None = None, image_id: str | None = None, normalised: bool = False,
    ) -> None:
        """Check a sample (its image's header gives the size) and keep it, or record why it is left out."""
        image_id = image_id or image_id_of(image_path)
        if image_id in self._first_of:
            self.problem(image_path, f"duplicate image id {image_id!r} in split {self.name} "
                                     f"(also {self._first_of[image_id]}); left out")
            return
        self._first_of[image_id] = image_path
        try:
            width, height = read_image_size(image_path)
        except ImageError as error:
            self.problem(error.path, error.reason)
            return
        xyxy = np.array([box.xyxy for box in boxes], np.float64).reshape(-1, 4)
        if normalised:
            xyxy *= (width, height, width, height)
        tolerance = (NORMALISED_TOLERANCE * width, NORMALISED_TOLERANCE * height) if normalised else (PIXEL_TOLERANCE,) * 2
        box_problems = [_box_problem(box, row, width, height, tolerance) for box, row in zip(boxes, xyxy)]
        for message in filter(None, box_problems):
            self.problem(annotation_path or image_path, message)
        if any(box_problems):
            return
        truth = Detections(xyxy, np.ones(len(boxes)), np.array([box.class_id for box in boxes], np.int64), self.labels)
        self.samples.append(Sample(image_id, image_path, template_path, truth.clipped(width, height), annotation_path))

    def build(self) -> DataSplit:
        return DataSplit(self.name, self.labels, self.samples, self.problems)


def _holdout_key(seed: int, image_id: str) -> int:
    return int(hashlib.sha1(f"{seed}:{image_id}".encode()).hexdigest(), 16)


def hold_out(split: DataSplit, seed: int = 0) -> tuple[DataSplit, DataSplit]:
    """(train, val): an image is held out when sha1("SEED:IMAGE_ID") % 10 == 0, about a tenth, and the same image
    whatever other images are added. At least one is held out, and one kept, when there are two or more."""
    samples = split.samples
    held = [sample for sample in samples if _holdout_key(seed, sample.image_id) % 10 == 0]
    if len(samples) >= 2 and not 0 < len(held) < len(samples):
        held = [min(samples, key=lambda sample: _holdout_key(seed, sample.image_id))]
    held_ids = {sample.image_id for sample in held}
    train = [sample for sample in samples if sample.image_id not in held_ids]
    return DataSplit("train", split.labels, train, split.problems), DataSplit("val", split.labels, held)


class DataSource(ABC):
    """A data set on disk in one of the formats `aivd.data.sources.open_data` detects."""

    format: ClassVar[str]

    def __init__(self, root: Path, labels: LabelMap) -> None:
        self.root, self.labels = root, labels

    @abstractmethod
    def split_names(self) -> list[str]:
        """The splits this data set has."""

    @abstractmethod
    def split(self, name: str) -> DataSplit:
        """The usable samples of split `name` and the problems of those left out; `DatasetError` when the split
        itself cannot be read."""

    def training_splits(self, seed: int = 0) -> tuple[DataSplit, DataSplit]:
        """(train, val): the val split when there is one, else a seeded tenth of train held out (`hold_out`)."""
        train = self.split("train")
        if "val" in self.split_names():
            return train, self.split("val")
        return hold_out(train, seed)

    def no_split(self, name: str) -> DatasetError:
        return DatasetError(f"{self.root}: no split {name!r} in this {self.format} data set "
                            f"(it has: {', '.join(self.split_names()) or 'none'})")
