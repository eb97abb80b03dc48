"""One sample type for every data set format, and the split of a data set that training and evaluation read.

Readers (DeepPCB, Pascal VOC, Ultralytics YOLO, COCO) all return `Sample`s whose ground truth is parsed and
checked when the split is loaded, so a bad annotation is found before hours of training, and a bad sample is
left out with one `DataProblem` line instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aivd.core import Detections, LabelMap


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
