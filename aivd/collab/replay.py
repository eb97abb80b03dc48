"""The replay buffer: hard images with the labels the edge-cloud pipeline gave them, for updating the edge.

An image is hard when at least one of its regions went to the cloud. Its labels are the pipeline's final
answer: the cloud's decision on each region it was sent, the edge's own on the regions kept at the edge; the
regions the cloud called no defect are kept too, as the edge's false alarms to unlearn. They
are the only supervision an online update has (ground truth never reaches a production line), so the edge
learns what the cloud tells it, above all on the regions it was unsure of. The buffer keeps the newest
`capacity` images: under drift the recent past is the best guide to what comes next.

One hard image in `validation_every` is held out to validate an update, and only a fully labelled one (every
candidate decided by the cloud): its labels must not be the parent model's own decisions, or the gate would
favour the parent. A due validation that arrives partly labelled is trained on and the next fully labelled hard
image takes its place. In a synchronous loop (`aivd bench collab`) the pipeline sends every region of the image
the buffer asks for (`next_is_validation`), so every `validation_every`-th image is one; in a live run images are
in flight between the question and the answer, and the place moves to the next one that came fully labelled.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from aivd.core import Detections


@dataclass(frozen=True)
class LabelledImage:
    image_id: str
    image: np.ndarray  # uint8 grey, as the camera saw it
    template: np.ndarray | None
    labels: Detections  # the pipeline's final defects: boxes, classes
    cloud_regions: int  # how many regions of the image the cloud decided
    rejected: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (N, 4) boxes the cloud called no defect
    validation: bool = False  # held out to validate updates, for good


class ReplayBuffer:
    def __init__(self, capacity: int = 400, validation_every: int = 5) -> None:
        if capacity < 2 or validation_every < 2:
            raise ValueError(f"capacity and validation_every must be at least 2, got {capacity} and {validation_every}")
        self.items: deque[LabelledImage] = deque(maxlen=capacity)
        self.validation_every = validation_every
        self.added = 0  # hard images ever added
        self.validations = 0  # of them, those held out for validation

    def __len__(self) -> int:
        return len(self.items)

    def add(self, image_id: str, image: np.ndarray, template: np.ndarray | None, labels: Detections, cloud_regions: int,
            rejected: np.ndarray | None = None, fully_labelled: bool = True) -> bool:
        """Keep the image if the cloud decided any of its regions; returns whether it was kept. `fully_labelled`:
        the cloud decided every candidate of the image (else it cannot be a validation image)."""
        if cloud_regions <= 0:
            return False
        rejected = np.zeros((0, 4), np.float32) if rejected is None else np.asarray(rejected, np.float32).reshape(-1, 4)
        validation = self.next_is_validation and fully_labelled
        self.items.append(LabelledImage(image_id, image, template, labels, cloud_regions, rejected, validation))
        self.added += 1
        self.validations += validation
        return True

    @property
    def next_is_validation(self) -> bool:
        """Whether a validation image is due: the next hard image, if fully labelled, will be one (so its regions
        should all go to the cloud)."""
        return self.validations < (self.added + 1) // self.validation_every

    def since(self, count: int) -> list[LabelledImage]:
        """The newest `count` images (fewer if the buffer holds fewer)."""
        return list(self.items)[-count:] if count > 0 else []

    def split(self) -> tuple[list[LabelledImage], list[LabelledImage]]:
        """Training and validation images, in the order they were added."""
        train: list[LabelledImage] = []
        validation: list[LabelledImage] = []
        for item in self.items:
            (validation if item.validation else train).append(item)
        return train, validation
