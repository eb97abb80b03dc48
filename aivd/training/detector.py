"""The built-in edge detector's training: `aivd train detector` on DeepPCB, and the detector stage of
`aivd train pack` on any data set (template-aware when every image has a template, template-free otherwise).

Recipe (the model card records the exact command and numbers):
- inputs built by `aivd.edge.centernet.make_input`, the function inference uses;
- random crops of the scaled image (the network is fully convolutional, so inference sees whole images);
- the 8 flips/rotations of the square (PCB defect classes do not depend on orientation), mild photometric
  jitter and noise; with templates also misalignment of up to 2 px and one-pixel conductor thickness changes of
  either image (see `change_thickness`), all at full resolution, and template dropout so the model also works
  alone;
- CenterNet losses: focal loss on a class-agnostic Gaussian centre heat-map, L1 on sizes and offsets, and
  cross-entropy for the class head on the cells near each centre, weighted by the Gaussian;
- a held-out part of the training data (DeepPCB: every 10th trainval sample) chooses the epoch and calibrates
  the score threshold; the test split is never looked at.

`fit_detector` is the loop both use. It checkpoints after every epoch (`detector_last.pt`, the model, optimiser,
schedule and random states), so a run stopped by Ctrl-C continues where it stopped, and it can choose its epoch
count from a time budget after timing its first epoch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from aivd.core import DEEPPCB_CLASSES, Detections, LabelMap
from aivd.data.dataset import Sample
from aivd.data.deeppcb import holdout_split, load_split
from aivd.data.images import read_pair
from aivd.edge.centernet import OUTPUT_STRIDE, PAD_MULTIPLE, decode, make_input
from aivd.training.common import change_thickness, epochs_for_budget, seed_everything, write_metadata
from aivd.training.detector_net import CenterNetLite, ExportWrapper
from aivd.training.held_out import DeepPCBScoring


@dataclass(frozen=True)
class DetectorTrainConfig:
    epochs: int = 40
    batch_size: int = 16
    crop: int = 224  # in network-input pixels (448 px of a DeepPCB image at input_scale 0.5)
    crops_per_image: int = 1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    input_scale: float = 0.5
    template_dropout: float = 0.1
    misalign_prob: float = 0.5
    max_misalign_px: int = 2  # full-resolution pixels
    thickness_prob: float = 0.5
    size_loss_weight: float = 0.1
    seed: int = 0
    threads: int = 2
    limit: int | None = None  # use only the first N trainval samples (smoke tests)
    init_from: str | None = None  # a checkpoint (detector_best.pt) to fine-tune from
    widths: tuple[int, int, int, int] = (24, 48, 96, 128)
    neck: int = 64

    def without_templates(self) -> DetectorTrainConfig:
        """The recipe for a data set without templates: the template augmentations have nothing to act on."""
        return replace(self, template_dropout=1.0, misalign_prob=0.0, thickness_prob=0.0)


@dataclass
class LoadedSample:
    image_id: str
    planes: np.ndarray  # (2, H, W) uint8: test and template at input scale (template plane 0 without one)
    originals: np.ndarray  # (2, H', W') uint8: test and template at full resolution
    boxes: np.ndarray  # (N, 4) at input scale
    classes: np.ndarray
    full_size: tuple[int, int]
    ground_truth: Detections
    has_template: bool = True


def load_samples(samples: list[Sample], input_scale: float) -> list[LoadedSample]:
    """`Sample`s read into memory; a sample's template is used when it has one."""
    return [loaded_sample(s.image_id, *read_pair(s.image_path, s.template_path), s.ground_truth(), input_scale) for s in samples]


def loaded_sample(image_id: str, test: np.ndarray, template: np.ndarray | None, labels: Detections, input_scale: float) -> LoadedSample:
    """One training image from arrays: a data set's pair with its ground truth, or an online update's with its labels."""
    planes = make_input(test, template, input_scale)[0, :2]
    originals = np.stack([test, template if template is not None else np.zeros_like(test)])
    return LoadedSample(image_id, np.round(planes * 255).astype(np.uint8), originals, labels.xyxy * input_scale,
                        labels.class_id.copy(), (test.shape[1], test.shape[0]), labels, template is not None)


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest centre shift that keeps IoU >= min_overlap (smallest of its 3 cases)."""
    b1, c1 = height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def dihedral(planes: np.ndarray, boxes: np.ndarray, k: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rotate square planes by k*90 degrees (counter-clockwise) and optionally flip left-right, boxes too."""
    size = planes.shape[-1]
    boxes = boxes.copy()
    for _ in range(k):
        planes = np.rot90(planes, 1, axes=(1, 2))
        x1, y1, x2, y2 = boxes.T
        boxes = np.stack([y1, size - x2, y2, size - x1], axis=1)
    if flip:
        planes = planes[:, :, ::-1]
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)
    return np.ascontiguousarray(planes), boxes


class CropSampler:
    """Makes augmented training crops and their CenterNet targets."""

    def __init__(self, config: DetectorTrainConfig, num_classes: int, rng: np.random.Generator):
        self.config = config
        self.num_classes = num_classes
        self.rng = rng

    def __call__(self, sample: LoadedSample) -> tuple[np.ndarray, ...]:
        cfg, rng = self.config, self.rng
        # The planes are padded to PAD_MULTIPLE; a crop stays inside the image itself and keeps the network's stride.
        height, width = (round(side * cfg.input_scale) for side in sample.originals.shape[1:])
        crop = min(cfg.crop, height // PAD_MULTIPLE * PAD_MULTIPLE, width // PAD_MULTIPLE * PAD_MULTIPLE)
        y0 = int(rng.integers(0, height - crop + 1)) // OUTPUT_STRIDE * OUTPUT_STRIDE
        x0 = int(rng.integers(0, width - crop + 1)) // OUTPUT_STRIDE * OUTPUT_STRIDE
        planes = self._window(sample.originals, y0, x0, crop)
        boxes = sample.boxes - np.array([x0, y0, x0, y0], np.float32)
        planes, boxes = dihedral(planes, boxes, int(rng.integers(4)), bool(rng.integers(2)))
        image = planes.astype(np.float32) / 255
        x = np.zeros((3, crop, crop), np.float32)
        x[0] = self._photometric(image[0])
        if sample.has_template and rng.random() >= cfg.template_dropout:
            x[1] = self._photometric(image[1])
            x[2] = 1.0
        return (x, *self._targets(boxes, sample.classes, crop // OUTPUT_STRIDE))

    def _window(self, originals: np.ndarray, y0: int, x0: int, crop: int) -> np.ndarray:
        """The crop at full resolution, augmented there (misalignment, thickness), then scaled like `make_input`."""
        cfg, rng = self.config, self.rng
        full = round(crop / cfg.input_scale)
        top, left = round(y0 / cfg.input_scale), round(x0 / cfg.input_scale)
        shift_y = shift_x = 0
        if rng.random() < cfg.misalign_prob:
            shift_y, shift_x = (int(v) for v in rng.integers(-cfg.max_misalign_px, cfg.max_misalign_px + 1, size=2))
        bottom_limit, right_limit = originals.shape[1] - full, originals.shape[2] - full
        t_top, t_left = min(max(top + shift_y, 0), bottom_limit), min(max(left + shift_x, 0), right_limit)
        windows = [originals[0, top : top + full, left : left + full], originals[1, t_top : t_top + full, t_left : t_left + full]]
        if rng.random() < cfg.thickness_prob:
            which = int(rng.integers(2))
            windows[which] = change_thickness(windows[which], rng)
        if full != crop:
            windows = [cv2.resize(w, (crop, crop), interpolation=cv2.INTER_AREA) for w in windows]
        return np.stack(windows)

    def _photometric(self, plane: np.ndarray) -> np.ndarray:
        rng = self.rng
        plane = plane * rng.uniform(0.85, 1.1) + rng.uniform(-0.08, 0.08)
        if rng.random() < 0.3:
            plane = plane + rng.normal(0, 0.03, plane.shape).astype(np.float32)
        return plane.clip(0, 1)

    def _targets(self, boxes: np.ndarray, classes: np.ndarray, out: int):
        heat = np.zeros((1, out, out), np.float32)
        class_target = np.zeros((out, out), np.int64)
        class_weight = np.zeros((out, out), np.float32)
        size = np.zeros((2, out, out), np.float32)
        offset = np.zeros((2, out, out), np.float32)
        mask = np.zeros((out, out), np.float32)
        yy, xx = np.mgrid[0:out, 0:out]
        for (x1, y1, x2, y2), class_id in zip(boxes / OUTPUT_STRIDE, classes):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            if not (0 <= cx < out and 0 <= cy < out):
                continue  # centre outside this crop: the object is another crop's to learn
            ix, iy = int(cx), int(cy)
            radius = max(0, int(gaussian_radius(y2 - y1, x2 - x1)))
            sigma = (2 * radius + 1) / 6
            gaussian = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma**2))
            # Class supervision near the centre; where two objects' Gaussians meet, the nearer one owns the cell.
            owned = (gaussian >= CLASS_SUPPORT) & (gaussian > heat[0])
            class_target[owned] = class_id
            class_weight[owned] = gaussian[owned]
            heat[0] = np.maximum(heat[0], gaussian)
            size[:, iy, ix] = (x2 - x1, y2 - y1)
            offset[:, iy, ix] = (cx - ix, cy - iy)
            mask[iy, ix] = 1.0
        return heat, class_target, class_weight, size, offset, mask


CLASS_SUPPORT = 0.3  # cells whose centre Gaussian is at least this train the class head


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of centres."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    negative_weight = torch.pow(1 - target, 4)
    pos_loss = torch.log(pred) * torch.pow(1 - pred, 2) * positive
    neg_loss = torch.log(1 - pred) * torch.pow(pred, 2) * negative_weight * (1 - positive)
    return -(pos_loss.sum() + neg_loss.sum()) / positive.sum().clamp(min=1)


def detection_loss(outputs, targets, size_weight: float) -> tuple[torch.Tensor, dict]:
    logits, class_logits, size, offset = outputs
    heat_t, class_t, class_w, size_t, offset_t, mask = targets
    mask = mask.unsqueeze(1)
    count = mask.sum().clamp(min=1)
    heat_loss = focal_loss(logits, heat_t)
    class_loss = (F.cross_entropy(class_logits, class_t, reduction="none") * class_w).sum() / class_w.sum().clamp(min=1)
    size_loss = (F.l1_loss(size, size_t, reduction="none") * mask).sum() / count
    offset_loss = (F.l1_loss(offset, offset_t, reduction="none") * mask).sum() / count
    total = heat_loss + class_loss + size_weight * size_loss + offset_loss
    return total, {"heat": heat_loss.item(), "class": class_loss.item(), "size": size_loss.item(), "offset": offset_loss.item()}


def train_step(net: CenterNetLite, optimizer: torch.optim.Optimizer, sampler: CropSampler, batch: list[LoadedSample], size_weight: float) -> float:
    """One optimiser step on one augmented crop of each sample; returns the loss."""
    x, *targets = (torch.from_numpy(np.stack(parts)) for parts in zip(*(sampler(sample) for sample in batch)))
    loss, _ = detection_loss(net(x), targets, size_weight)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def predict(net: CenterNetLite, samples: list[LoadedSample], input_scale: float, min_confidence: float = 0.05,
            labels: LabelMap = DEEPPCB_CLASSES) -> list[tuple[str, Detections, Detections]]:
    """Detections of the torch model on whole images, through the same decode as ONNX inference."""
    net.eval()
    wrapper = ExportWrapper(net)
    results = []
    for sample in samples:
        x = np.zeros((1, 3, *sample.planes.shape[1:]), np.float32)
        x[0, 0] = sample.planes[0] / 255
        if sample.has_template:
            x[0, 1] = sample.planes[1] / 255
            x[0, 2] = 1.0
        peaks, class_probs, size, offset = (t[0].numpy() for t in wrapper(torch.from_numpy(x)))
        detections = decode(peaks, class_probs, size, offset, labels, input_scale, sample.full_size, min_confidence)
        results.append((sample.image_id, detections, sample.ground_truth))
    return results


def export_onnx(net: CenterNetLite, path: Path, metadata: dict) -> None:
    net.eval()
    dummy = torch.zeros(1, 3, 320, 320)
    torch.onnx.export(
        ExportWrapper(net), (dummy,), str(path), input_names=["input"], output_names=["peaks", "class_probs", "sizes", "offsets"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}}, opset_version=17, dynamo=False,
    )
    write_metadata(path, metadata)


@dataclass(frozen=True)
class DetectorRun:
    """What `fit_detector` trains on and how long: held-out selection, labels, and the epoch plan."""

    labels: LabelMap
    select: Callable[[list], dict]  # returns at least "score" (higher is better) and "threshold"
    epochs: int | None = None  # None: config.epochs, or what `time_budget_s` allows when that is given
    time_budget_s: float | None = None
    max_epochs: int = 300


def fit_detector(train: list[LoadedSample], val: list[LoadedSample], out_dir: Path, config: DetectorTrainConfig, run: DetectorRun,
                 progress=None, resume: bool = False) -> dict:
    """Train, keep the epoch `run.select` scores best on `val`, and leave it in `out_dir/detector_best.pt`.

    With `run.time_budget_s` the first epoch is timed and the epoch count set so that the run fits the budget; the
    cosine schedule is laid over that count from the second epoch on (the first is the warm-up). With `resume`
    the loop continues from `out_dir/detector_last.pt` where an earlier run of the same command stopped.
    Returns {"best", "history", "epochs"}.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    sampler = CropSampler(config, len(run.labels), rng)
    net = CenterNetLite(len(run.labels), config.widths, config.neck)
    if config.init_from:
        net.load_state_dict(torch.load(config.init_from))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) * config.crops_per_image / config.batch_size))
    plan = {"epochs": run.epochs or (None if run.time_budget_s else config.epochs)}

    def learning_rate(step: int) -> float:
        # Until the epoch count is known (a time budget, first epoch) the rate warms up and stays there.
        total = steps_per_epoch * (plan["epochs"] or 1_000_000)
        warmup = min(steps_per_epoch, total // 10 + 1)
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)
    history, best, first_epoch = [], {"score": -1.0}, 1
    best_path, last_path = out_dir / "detector_best.pt", out_dir / "detector_last.pt"
    if resume and last_path.is_file():
        # weights_only=False: the checkpoint holds numpy's generator state; it is our own file from this run.
        state = torch.load(last_path, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        history, best, plan["epochs"], first_epoch = state["history"], state["best"], state["epochs"], state["epoch"] + 1
    started = time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    epoch = first_epoch
    while plan["epochs"] is None or epoch <= plan["epochs"]:
        net.train()
        order = rng.permutation(np.repeat(np.arange(len(train)), config.crops_per_image))
        losses = []
        for step in range(steps_per_epoch):
            batch = [train[i] for i in order[step * config.batch_size : (step + 1) * config.batch_size]]
            losses.append(train_step(net, optimizer, sampler, batch, config.size_loss_weight))
            scheduler.step()
        selection = run.select(predict(net, val, config.input_scale, labels=run.labels))
        record = {"epoch": epoch, "loss": float(np.mean(losses)), **selection, "elapsed_s": round(time.time() - started, 1)}
        if plan["epochs"] is None:
            assert run.time_budget_s is not None  # the epoch count is left open only for a time budget
            plan["epochs"] = epochs_for_budget(run.time_budget_s, record["elapsed_s"], run.max_epochs)
        record["epochs"] = plan["epochs"]
        history.append(record)
        if record["score"] > best["score"]:
            best = record
            torch.save(net.state_dict(), best_path)
        torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history, "best": best,
                    "epochs": plan["epochs"], "epoch": epoch}, last_path)
        if progress:
            progress(record)
        epoch += 1
    net.load_state_dict(torch.load(best_path))
    return {"best": best, "history": history, "epochs": plan["epochs"], "net": net}


def detector_metadata(labels: LabelMap, config: DetectorTrainConfig, best: dict, templates: str) -> dict:
    """What inference reads from the ONNX file: labels, input scale, stride, the held-out threshold, template use."""
    return {
        "aivd_model": "centernet-lite",
        "labels": list(labels.names),
        "input_scale": config.input_scale,
        "output_stride": OUTPUT_STRIDE,
        "score_threshold": best["threshold"],
        "templates": templates,
        "train_config": asdict(config),
        "best_epoch": best["epoch"],
    }


def train_detector(root: Path, out_dir: Path, config: DetectorTrainConfig, progress=None) -> dict:
    """DeepPCB: train on trainval, select the best epoch on its held-out tenth, export ONNX; returns the training record."""
    seed_everything(config.seed, config.threads)
    train_samples, val_samples = holdout_split(load_split(root, "trainval")[: config.limit])
    train = load_samples(train_samples, config.input_scale)
    val = load_samples(val_samples, config.input_scale)
    fitted = fit_detector(train, val, out_dir, config, DetectorRun(DEEPPCB_CLASSES, DeepPCBScoring().select), progress)
    best = fitted["best"]
    onnx_path = out_dir / "detector.onnx"
    export_onnx(fitted["net"], onnx_path, detector_metadata(DEEPPCB_CLASSES, config, best, "optional"))
    record = {"config": asdict(config), "best": best, "history": fitted["history"], "onnx": str(onnx_path)}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record
