"""`aivd train refiner`: the detector's second stage, a small CNN that re-decides each box's class.

Trained on ground-truth boxes of DeepPCB trainval with jitter that imitates the detector's box noise (centre
shift and size change of up to about a fifth), the 8 flips/rotations, photometric jitter and template dropout;
one-pixel conductor thickness changes (see `change_thickness`); the same held-out tenth of trainval as the
detector chooses the epoch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from aivd.core import DEEPPCB_CLASSES
from aivd.data.deeppcb import load_split
from aivd.data.images import ImageError, read_pair
from aivd.edge.crops import crop_windows
from aivd.training.common import change_thickness, holdout_split, seed_everything, write_metadata
from aivd.training.detector_net import conv_bn

REFINER_FILE = "deeppcb_refiner.onnx"


@dataclass(frozen=True)
class RefinerTrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    jitter: float = 0.2  # largest centre shift and size change, as a fraction of the box size
    template_dropout: float = 0.1
    thickness_prob: float = 0.3
    seed: int = 0
    threads: int = 2
    limit: int | None = None


class RefinerNet(nn.Module):
    """About 18 M multiply-adds per 48x48 crop: one full-resolution layer for the thin details, then pooled stages."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            conv_bn(3, c1), nn.MaxPool2d(2),  # 24 x 24
            conv_bn(c1, c2), conv_bn(c2, c2), nn.MaxPool2d(2),  # 12 x 12
            conv_bn(c2, c3), conv_bn(c3, c3), nn.MaxPool2d(2),  # 6 x 6
            conv_bn(c3, c3),
        )
        self.head = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class ProbabilityWrapper(nn.Module):
    def __init__(self, net: RefinerNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


@dataclass
class BoxSet:
    images: list[np.ndarray]
    templates: list[np.ndarray]
    image_index: np.ndarray  # per box
    boxes: np.ndarray  # (N, 4)
    classes: np.ndarray


def load_boxes(samples) -> BoxSet:
    images, templates, owner, boxes, classes = [], [], [], [], []
    for index, sample in enumerate(samples):
        image, template = read_pair(sample.test_path, sample.template_path)
        truth = sample.ground_truth()
        images.append(image)
        templates.append(template)
        owner += [index] * len(truth)
        boxes.append(truth.xyxy)
        classes.append(truth.class_id)
    return BoxSet(images, templates, np.array(owner), np.concatenate(boxes), np.concatenate(classes))


def jittered(boxes: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.uniform(-amount, amount, size.shape) * size
    size = size * rng.uniform(1 - amount, 1 + amount, size.shape)
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def make_batch(data: BoxSet, indices: np.ndarray, rng: np.random.Generator | None, config: RefinerTrainConfig) -> np.ndarray:
    boxes = data.boxes[indices] if rng is None else jittered(data.boxes[indices], rng, config.jitter)
    crops = []
    for index, box in zip(indices, boxes):
        owner = data.image_index[index]
        image, template = data.images[owner], data.templates[owner]
        if rng is not None and rng.random() < config.thickness_prob:
            if rng.integers(2):
                image = change_thickness(image, rng)
            else:
                template = change_thickness(template, rng)
        if rng is not None and rng.random() < config.template_dropout:
            template = None
        crop = crop_windows(image, template, box[None])[0]
        if rng is not None:
            crop = np.rot90(crop, int(rng.integers(4)), axes=(1, 2))
            if rng.integers(2):
                crop = crop[:, :, ::-1]
            crop = crop.copy()
            crop[:2] = (crop[:2] * rng.uniform(0.85, 1.1) + rng.uniform(-0.08, 0.08)).clip(0, 1)
        crops.append(crop)
    return np.stack(crops)


@torch.no_grad()
def accuracy(net: RefinerNet, data: BoxSet, config: RefinerTrainConfig) -> float:
    net.eval()
    predictions = []
    for start in range(0, len(data.classes), 256):
        indices = np.arange(start, min(start + 256, len(data.classes)))
        predictions.append(net(torch.from_numpy(make_batch(data, indices, None, config))).argmax(1).numpy())
    return float((np.concatenate(predictions) == data.classes).mean())


def export_refiner(net: RefinerNet, path: Path, metadata: dict) -> None:
    net.eval()
    torch.onnx.export(
        ProbabilityWrapper(net), torch.zeros(1, 3, 48, 48), str(path), input_names=["crops"], output_names=["class_probs"],
        dynamic_axes={"crops": {0: "boxes"}}, opset_version=17, dynamo=False,
    )
    write_metadata(path, metadata)


def package_with_detector(detector_path: Path, out_dir: Path, val_samples) -> dict:
    """Write the shipped pair into `out_dir`: the detector with `refiner` and a re-calibrated `score_threshold` in
    its metadata, beside the refiner. The threshold is chosen on held-out data through the real ONNX inference."""
    import shutil

    from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector
    from aivd.eval.deeppcb_eval import detect_samples
    from aivd.eval.protocol import best_threshold, evaluate

    detector_out = out_dir / BUILTIN_MODEL.name
    shutil.copyfile(detector_path, detector_out)
    write_metadata(detector_out, {"refiner": REFINER_FILE})
    detector = TemplateDetector(detector_out, min_confidence=0.05)
    def stop(error: ImageError) -> None:
        raise error  # calibrating on an incomplete held-out set would be silently wrong

    predictions = detect_samples(detector, val_samples, on_error=stop)
    pairs = [(sample.image_id, predictions[sample.image_id], sample.ground_truth()) for sample in val_samples]
    threshold, _ = best_threshold(pairs)
    write_metadata(detector_out, {"score_threshold": threshold})
    result = evaluate([(i, d.with_min_confidence(threshold), g) for i, d, g in pairs]).summary()
    return {"threshold": threshold, "val": result, "detector": str(detector_out)}


def train_refiner(root: Path, detector_path: Path, out_dir: Path, config: RefinerTrainConfig, progress=None) -> dict:
    """Train on trainval boxes, export, and package with the detector at `detector_path` (see module doc)."""
    seed_everything(config.seed, config.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_samples, val_samples = holdout_split(load_split(root, "trainval")[: config.limit])
    train, val = load_boxes(train_samples), load_boxes(val_samples)

    rng = np.random.default_rng(config.seed)
    net = RefinerNet(len(DEEPPCB_CLASSES))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train.classes) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / total))))
    history, best = [], {"accuracy": -1.0}
    checkpoint = out_dir / "refiner_best.pt"
    started = time.time()
    for epoch in range(1, config.epochs + 1):
        net.train()
        order = rng.permutation(len(train.classes))
        losses = []
        for step in range(steps_per_epoch):
            indices = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = torch.from_numpy(make_batch(train, indices, rng, config))
            loss = F.cross_entropy(net(x), torch.from_numpy(train.classes[indices]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "accuracy": accuracy(net, val, config), "elapsed_s": round(time.time() - started, 1)}
        history.append(record)
        if record["accuracy"] > best["accuracy"]:
            best = record
            torch.save(net.state_dict(), checkpoint)
        if progress:
            progress(record)
    net.load_state_dict(torch.load(checkpoint))
    onnx_path = out_dir / REFINER_FILE
    export_refiner(net, onnx_path, {"aivd_model": "crop-refiner", "labels": list(DEEPPCB_CLASSES.names), "train_config": asdict(config), "best_epoch": best["epoch"]})
    pipeline = package_with_detector(detector_path, out_dir, val_samples)
    record = {"config": asdict(config), "best": best, "history": history, "onnx": str(onnx_path), "pipeline": pipeline}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record
