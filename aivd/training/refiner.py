"""`aivd train refiner`: the detector's second stage, a small CNN that re-decides each box's class or rejects it.

Trained on DeepPCB trainval with the augmentation of `crop_training` (box jitter of up to about a fifth of the
box); 48x48 crops at a fixed 1.5x context. Besides the ground-truth boxes it learns from the paired detector's
own candidates (at a low threshold, without any refiner): those on a defect as extra examples of its class with
the detector's real box noise, those on no defect as `no-defect`. At inference the `no-defect` probability is
taken out of the box's confidence, so the edge drops most of its false alarms on its own.

With `distill_from` the cloud's crop classifier teaches it as well (`crop_training.Distillation`): the refiner's
loss mixes the labels with the classifier's temperature-softened probabilities on the same crops, which carry
what the larger model learnt about which classes look alike.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aivd.cloud.builtin import CropClassifier
from aivd.data.deeppcb import holdout_split, load_split
from aivd.edge.crops import CONTEXT, CROP_SIZE, MIN_SIDE
from aivd.edge.detector import BUILTIN_MODEL, ModelError, TemplateDetector
from aivd.edge.tta import AUGMENTED_THRESHOLD_KEY
from aivd.training.common import seed_everything, write_metadata
from aivd.training.crop_training import (
    MINING_THRESHOLD,
    REJECT_LABEL,
    AugmentConfig,
    CropRecipe,
    Distillation,
    LoopConfig,
    edge_candidates,
    export_probabilities,
    load_boxes,
    train_loop,
)
from aivd.training.detector_net import conv_bn
from aivd.training.held_out import DeepPCBScoring, HeldOutScoring

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
    reject: bool = True  # also learn the detector's candidates as positives and false alarms (`no-defect`)
    seed: int = 0
    threads: int = 2
    limit: int | None = None
    distill_from: str | None = None  # a crop classifier ONNX (`aivd train classifier`) with the refiner's labels
    distill_weight: float = 0.5  # the soft labels' share of the loss
    temperature: float = 4.0


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


def recipe_and_augment(config: RefinerTrainConfig) -> tuple[CropRecipe, AugmentConfig]:
    recipe = CropRecipe(CROP_SIZE, CONTEXT, (CONTEXT, CONTEXT), MIN_SIDE)
    return recipe, AugmentConfig(config.jitter, config.template_dropout, config.thickness_prob)


def teacher(config: RefinerTrainConfig, labels: list[str]) -> Distillation:
    """`config.distill_from`'s classifier as a teacher for a refiner with `labels`. It is fed the refiner's crops
    (context 1.5), which lie inside the context range the classifier was trained on (1.2 to 2.0)."""
    assert config.distill_from is not None
    classifier = CropClassifier(config.distill_from, config.threads)
    names = list(classifier.class_names)
    names.insert(classifier.reject_index, classifier.reject_label)
    if sorted(names) != sorted(labels):
        raise ModelError(f"{config.distill_from}: classes {names} cannot teach a refiner with classes {labels}"
                         f"{'' if config.reject else ' (train the refiner with --reject)'}")
    order = np.array([names.index(label) for label in labels])

    def probabilities(crops: np.ndarray) -> np.ndarray:
        return classifier.session.run(None, {"crops": crops})[0][:, order]

    return Distillation(probabilities, config.distill_weight, config.temperature)


def package_with_detector(detector_path: Path, out_dir: Path, val_samples, scoring: HeldOutScoring = DeepPCBScoring(),
                          detector_file: str = BUILTIN_MODEL.name, refiner_file: str = REFINER_FILE) -> dict:
    """Write the shipped pair into `out_dir`: the detector with `refiner` and re-calibrated thresholds in its metadata
    (`score_threshold`, and the one for test-time augmentation), beside the refiner. The thresholds are chosen
    through the real ONNX inference on `scoring`'s held-out pairs; `val` is scored on the held-out pairs alone (not
    on perturbed copies)."""
    import shutil

    detector_out = out_dir / detector_file
    if detector_out.resolve() != Path(detector_path).resolve():
        shutil.copyfile(detector_path, detector_out)
    write_metadata(detector_out, {"refiner": refiner_file})
    plain = calibrate_threshold(detector_out, val_samples, scoring, augment=False)
    augmented = calibrate_threshold(detector_out, val_samples, scoring, augment=True)
    return {**plain, "augmented": augmented, "detector": str(detector_out)}


def calibrate_threshold(detector_path: Path, val_samples, scoring: HeldOutScoring = DeepPCBScoring(), augment: bool = False) -> dict:
    """Choose the detector's score threshold on `scoring`'s held-out pairs through the real ONNX inference, and write it
    into its metadata: `score_threshold`, or with `augment` the one for test-time augmentation (`aivd.edge.tta`)."""
    detector = TemplateDetector(detector_path, min_confidence=0.05, augment=augment)
    pairs = [(image_id, detector.detect(image, template), truth) for image_id, image, template, truth in scoring.pairs(val_samples)]
    threshold, calibration_score = scoring.threshold(pairs)
    write_metadata(detector_path, {AUGMENTED_THRESHOLD_KEY if augment else "score_threshold": threshold})
    held_out = [(i, d.with_min_confidence(threshold), g) for i, d, g in pairs if not scoring.is_copy(i)]
    return {"threshold": threshold, "val": scoring.select(held_out), "calibration_score": round(calibration_score, 5)}


def fit_refiner(train_samples, val_samples, detector_path: Path, out_dir: Path, config: RefinerTrainConfig,
                refiner_file: str = REFINER_FILE, time_budget_s: float | None = None, progress=None) -> dict:
    """Train the refiner for the detector at `detector_path` (its labels, plus `no-defect` with `config.reject`) and
    export it to `out_dir/refiner_file`; returns the training record without packaging."""
    seed_everything(config.seed, config.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    mining_detector = TemplateDetector(detector_path, min_confidence=MINING_THRESHOLD, use_refiner=False)
    labels = list(mining_detector.labels.names)
    metadata = {"aivd_model": "crop-refiner", "train_config": asdict(config)}
    if config.reject:
        mining = edge_candidates(mining_detector)
        train, val = load_boxes(train_samples, mining), load_boxes(val_samples, mining)
        labels.append(REJECT_LABEL)
        metadata["reject_label"] = REJECT_LABEL
    else:
        train, val = load_boxes(train_samples), load_boxes(val_samples)

    distill = None if config.distill_from is None else teacher(config, labels)
    rng = np.random.default_rng(config.seed)
    net = RefinerNet(len(labels))
    recipe, augment = recipe_and_augment(config)
    loop = LoopConfig(config.epochs, config.batch_size, config.lr, config.weight_decay, time_budget_s)
    best, history = train_loop(net, train, val, recipe, augment, loop, rng, out_dir / "refiner_best.pt", progress, distill)
    onnx_path = out_dir / refiner_file
    export_probabilities(net, onnx_path, CROP_SIZE, {**metadata, "labels": labels, "best_epoch": best["epoch"]})
    return {"config": asdict(config), "train_boxes": int(len(train.classes)),
            "train_rejects": int((train.classes == len(mining_detector.labels)).sum()), "best": best, "history": history,
            "onnx": str(onnx_path)}


def train_refiner(root: Path, detector_path: Path, out_dir: Path, config: RefinerTrainConfig, progress=None) -> dict:
    """DeepPCB: train on trainval boxes, export, and package with the detector at `detector_path` (see module doc)."""
    train_samples, val_samples = holdout_split(load_split(root, "trainval")[: config.limit])
    record = fit_refiner(train_samples, val_samples, detector_path, out_dir, config, progress=progress)
    record["pipeline"] = package_with_detector(detector_path, out_dir, val_samples)
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record
