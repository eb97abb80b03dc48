"""What the two crop classifiers share: boxes with their images, augmented crop batches, the training loop.

The edge's class refiner (`aivd train refiner`) and the cloud's crop classifier (`aivd train classifier`)
learn the same task at different strengths: from a context-expanded crop of the test image and its template
around a box, say what the box holds. Both train on DeepPCB trainval boxes with jitter that imitates the
detector's box noise, the 8 flips/rotations, photometric jitter, one-pixel conductor thickness changes (see
`change_thickness`) and template dropout; the held-out tenth of trainval chooses the epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from aivd.core.detections import box_iou
from aivd.data.images import read_pair
from aivd.edge.crops import crop_windows
from aivd.edge.detector import Detector
from aivd.training.common import change_thickness, epochs_for_budget, write_metadata

REJECT_LABEL = "no-defect"
MINING_THRESHOLD = 0.03  # below any threshold the edge or the pipeline would use


@dataclass(frozen=True)
class CropRecipe:
    """How crops are cut: side `size` pixels, the window `context` times the box's longer side (a random
    factor in `context_range` at training time), never smaller than `min_side` pixels of the image."""

    size: int
    context: float
    context_range: tuple[float, float]
    min_side: int


@dataclass(frozen=True)
class AugmentConfig:
    jitter: float  # largest centre shift and size change, as a fraction of the box size
    template_dropout: float
    thickness_prob: float


@dataclass
class BoxSet:
    images: list[np.ndarray]
    templates: list[np.ndarray | None]  # None: an image without one
    image_index: np.ndarray  # per box
    boxes: np.ndarray  # (N, 4)
    classes: np.ndarray


def load_boxes(samples, extra_boxes: Callable | None = None) -> BoxSet:
    """Ground-truth boxes of `samples`; `extra_boxes(image, template, truth)` may add (boxes, classes) per sample."""
    images, templates, owner, boxes, classes = [], [], [], [], []
    for index, sample in enumerate(samples):
        image, template = read_pair(sample.image_path, sample.template_path)
        truth = sample.ground_truth()
        sample_boxes, sample_classes = [truth.xyxy], [truth.class_id]
        if extra_boxes is not None:
            more_boxes, more_classes = extra_boxes(image, template, truth)
            sample_boxes.append(np.asarray(more_boxes, np.float32).reshape(-1, 4))
            sample_classes.append(np.asarray(more_classes, np.int64))
        images.append(image)
        templates.append(template)
        for part in sample_boxes:
            owner += [index] * len(part)
        boxes += sample_boxes
        classes += sample_classes
    return BoxSet(images, templates, np.array(owner, np.int64), np.concatenate(boxes), np.concatenate(classes))


def edge_candidates(detector: Detector, positives: bool = True):
    """A `load_boxes` hook: the detector's candidates on a sample, labelled by their overlap with the truth;
    without `positives` only the false alarms are kept. False alarms get the id after the detector's classes."""
    reject = len(detector.labels)

    def extra(image, template, truth):
        found = detector.detect(image, template)
        if not len(found):
            return np.zeros((0, 4)), np.zeros(0, np.int64)
        if len(truth):
            iou = box_iou(found.xyxy, truth.xyxy)
            best, owner = iou.max(axis=1), iou.argmax(axis=1)
        else:
            best, owner = np.zeros(len(found)), np.zeros(len(found), np.int64)
        positive, negative = best >= 0.5, best < 0.25
        classes = np.where(positive, truth.class_id[owner] if len(truth) else reject, reject)
        keep = (positive | negative) if positives else negative
        return found.xyxy[keep], classes[keep]

    return extra


def jittered(boxes: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.uniform(-amount, amount, size.shape) * size
    size = size * rng.uniform(1 - amount, 1 + amount, size.shape)
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def make_batch(data: BoxSet, indices: np.ndarray, rng: np.random.Generator | None, recipe: CropRecipe, augment: AugmentConfig) -> np.ndarray:
    """Crops for `indices`; augmented when `rng` is given, as at inference when it is None."""
    boxes = data.boxes[indices] if rng is None else jittered(data.boxes[indices], rng, augment.jitter)
    random_context = recipe.context_range[0] != recipe.context_range[1]
    crops = []
    for index, box in zip(indices, boxes):
        owner = data.image_index[index]
        image, template = data.images[owner], data.templates[owner]
        context = recipe.context
        if rng is not None and template is not None and rng.random() < augment.thickness_prob:
            if rng.integers(2):
                image = change_thickness(image, rng)
            else:
                template = change_thickness(template, rng)
        if rng is not None and rng.random() < augment.template_dropout:
            template = None
        if rng is not None and random_context:
            context = rng.uniform(*recipe.context_range)
        crop = crop_windows(image, template, box[None], recipe.size, context, recipe.min_side)[0]
        if rng is not None:
            crop = np.rot90(crop, int(rng.integers(4)), axes=(1, 2))
            if rng.integers(2):
                crop = crop[:, :, ::-1]
            crop = crop.copy()
            crop[:2] = (crop[:2] * rng.uniform(0.85, 1.1) + rng.uniform(-0.08, 0.08)).clip(0, 1)
        crops.append(crop)
    return np.stack(crops)


@torch.no_grad()
def predict_classes(net: nn.Module, data: BoxSet, recipe: CropRecipe, augment: AugmentConfig) -> np.ndarray:
    net.eval()
    predictions = []
    for start in range(0, len(data.classes), 256):
        indices = np.arange(start, min(start + 256, len(data.classes)))
        predictions.append(net(torch.from_numpy(make_batch(data, indices, None, recipe, augment))).argmax(1).numpy())
    return np.concatenate(predictions) if predictions else np.zeros(0, np.int64)


def accuracy(net: nn.Module, data: BoxSet, recipe: CropRecipe, augment: AugmentConfig) -> float:
    return float((predict_classes(net, data, recipe, augment) == data.classes).mean())


class ProbabilityWrapper(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def export_probabilities(net: nn.Module, path: Path, size: int, metadata: dict) -> None:
    """ONNX with input `crops` (N, 3, size, size) and output `class_probs` (N, classes)."""
    net.eval()
    torch.onnx.export(
        ProbabilityWrapper(net), (torch.zeros(1, 3, size, size),), str(path), input_names=["crops"], output_names=["class_probs"],
        dynamic_axes={"crops": {0: "boxes"}}, opset_version=17, dynamo=False,
    )
    write_metadata(path, metadata)


@dataclass(frozen=True)
class Distillation:
    """Soft labels from a teacher (Hinton et al., 2015): the loss is `weight` x T^2 x KL(teacher || student), both
    softened by temperature T, plus (1 - `weight`) x the hard-label cross-entropy. T^2 keeps the soft term's
    gradients at the hard term's scale whatever T is. The teacher sees the student's own augmented crops, so it
    judges exactly what the student is shown."""

    teacher: Callable[[np.ndarray], np.ndarray]  # (N, 3, H, W) crops -> (N, classes) probabilities, the student's order
    weight: float
    temperature: float

    def loss(self, logits: torch.Tensor, crops: np.ndarray, targets: torch.Tensor) -> torch.Tensor:
        hard = F.cross_entropy(logits, targets)
        # log p is the teacher's logits up to a per-row constant, which the softmax ignores; the floor keeps a
        # probability that underflowed to 0 finite.
        teacher_logits = torch.from_numpy(self.teacher(crops)).clamp_min(1e-12).log()
        soft_targets = torch.softmax(teacher_logits / self.temperature, dim=1)
        soft = F.kl_div(F.log_softmax(logits / self.temperature, dim=1), soft_targets, reduction="batchmean")
        return (1 - self.weight) * hard + self.weight * self.temperature**2 * soft


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    time_budget_s: float | None = None  # when set, the first epoch is timed and the epoch count fitted to this
    max_epochs: int = 100


def train_loop(
    net: nn.Module, train: BoxSet, val: BoxSet, recipe: CropRecipe, augment: AugmentConfig, loop: LoopConfig,
    rng: np.random.Generator, checkpoint: Path, progress=None, distill: Distillation | None = None,
) -> tuple[dict, list[dict]]:
    """AdamW with a cosine schedule; keeps the epoch with the best held-out crop accuracy in `net`. The loss is the
    cross-entropy to the labels, or `distill`'s mix of it with a teacher's soft labels.

    With `loop.time_budget_s` the epoch count is what the budget allows after timing the first epoch (at most
    `loop.max_epochs`); the cosine schedule spans that count and the first epoch runs at the full rate.
    """
    optimizer = torch.optim.AdamW(net.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    steps_per_epoch = math.ceil(len(train.classes) / loop.batch_size)
    epochs = None if loop.time_budget_s else loop.epochs

    def learning_rate(step: int) -> float:
        total = steps_per_epoch * (epochs or 1_000_000)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)
    history, best = [], {"accuracy": -1.0}
    started = time.time()
    epoch = 1
    while epochs is None or epoch <= epochs:
        net.train()
        order = rng.permutation(len(train.classes))
        losses = []
        for step in range(steps_per_epoch):
            indices = order[step * loop.batch_size : (step + 1) * loop.batch_size]
            crops = make_batch(train, indices, rng, recipe, augment)
            logits, targets = net(torch.from_numpy(crops)), torch.from_numpy(train.classes[indices])
            loss = F.cross_entropy(logits, targets) if distill is None else distill.loss(logits, crops, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "accuracy": accuracy(net, val, recipe, augment), "elapsed_s": round(time.time() - started, 1)}
        if epochs is None:
            assert loop.time_budget_s is not None  # the epoch count is left open only for a time budget
            epochs = epochs_for_budget(loop.time_budget_s, record["elapsed_s"], loop.max_epochs)
        record["epochs"] = epochs
        history.append(record)
        if record["accuracy"] > best["accuracy"]:
            best = record
            torch.save(net.state_dict(), checkpoint)
        if progress:
            progress(record)
        epoch += 1
    net.load_state_dict(torch.load(checkpoint))
    return best, history
