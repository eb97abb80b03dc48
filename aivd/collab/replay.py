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

Human labels rank above the cloud's (`add_reviewed`): a reviewed image replaces the pipeline's labelling of the
same image, is kept apart so that the stream of cloud-labelled images never pushes it out, and one reviewed image
in `validation_every` is held out too. Once there are human validation images the gate validates on them alone:
under a drift that misleads the cloud, its labels would favour a model that copies its errors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from aivd.core import Detections

PIPELINE, HUMAN = 0, 1  # trust: the pipeline's own answer (the cloud's where it decided), a human reviewer's label


@dataclass(frozen=True)
class LabelledImage:
    image_id: str
    image: np.ndarray  # uint8 grey, as the camera saw it
    template: np.ndarray | None
    labels: Detections  # the pipeline's final defects: boxes, classes
    cloud_regions: int  # how many regions of the image the cloud decided
    rejected: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (N, 4) boxes the cloud called no defect
    validation: bool = False  # held out to validate updates, for good
    trust: int = PIPELINE


class ReplayBuffer:
    def __init__(self, capacity: int = 400, validation_every: int = 5) -> None:
        if capacity < 2 or validation_every < 2:
            raise ValueError(f"capacity and validation_every must be at least 2, got {capacity} and {validation_every}")
        self.items: deque[LabelledImage] = deque(maxlen=capacity)
        self.reviewed: deque[LabelledImage] = deque(maxlen=capacity)  # human-labelled, newest last
        self.validation_every = validation_every
        self.added = 0  # hard images ever added
        self.validations = 0  # of them, those held out for validation
        self.reviewed_added = self.reviewed_validations = 0

    def __len__(self) -> int:
        return len(self.items) + len(self.reviewed)

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

    def add_reviewed(self, image_id: str, image: np.ndarray, template: np.ndarray | None, labels: Detections,
                     rejected: np.ndarray | None = None) -> None:
        """Keep a human-labelled image (`rejected`: the machine's boxes the reviewer called no defect). It replaces
        the pipeline's labelling of the same image; a newer review of an image replaces the older in its place."""
        rejected = np.zeros((0, 4), np.float32) if rejected is None else np.asarray(rejected, np.float32).reshape(-1, 4)
        self.items = deque((item for item in self.items if item.image_id != image_id), maxlen=self.items.maxlen)
        earlier = next((item for item in self.reviewed if item.image_id == image_id), None)
        if earlier is not None:
            validation = earlier.validation
            self.reviewed.remove(earlier)
        else:
            validation = self.reviewed_validations < (self.reviewed_added + 1) // self.validation_every
            self.reviewed_added += 1
            self.reviewed_validations += validation
        self.reviewed.append(LabelledImage(image_id, image, template, labels, 0, rejected, validation, HUMAN))

    @property
    def next_is_validation(self) -> bool:
        """Whether a validation image is due: the next hard image, if fully labelled, will be one (so its regions
        should all go to the cloud)."""
        return self.validations < (self.added + 1) // self.validation_every

    def since(self, count: int) -> list[LabelledImage]:
        """The newest `count` images (fewer if the buffer holds fewer)."""
        return list(self.items)[-count:] if count > 0 else []

    def split(self) -> tuple[list[LabelledImage], list[LabelledImage]]:
        """Training and validation images: the pipeline's in the order they were added, then the reviewed ones (last,
        so that a window of the newest keeps them). Validation: the reviewed ones held out when there are any, else
        the pipeline's."""
        train = [item for item in self.items if not item.validation] + [item for item in self.reviewed if not item.validation]
        human = [item for item in self.reviewed if item.validation]
        return train, human or [item for item in self.items if item.validation]
