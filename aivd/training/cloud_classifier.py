"""`aivd train classifier`: the cloud tier's crop classifier, which also says "no defect".

It verifies the edge's candidate boxes: for each it decides one of the six defect classes or `no-defect`, from
a context-expanded crop of the test image and its template. Compared with the edge's refiner it is wider (24,
48, 96 channels), sees a context factor k drawn from [1.2, 2.0] per crop at training time (fixed 1.6 at
inference), and learns the edge's real box noise and false alarms: the shipped edge detector is run over
trainval at a low threshold, candidates that overlap a defect (IoU >= 0.5) are kept as extra positives with
its class and those that overlap none (IoU < 0.25) become `no-defect` examples. Ground-truth boxes get random
jitter on top. The held-out tenth of trainval chooses the epoch and, through the real ONNX pipeline, the
edge's proposal threshold and the final score threshold stored in the model's metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aivd.data.deeppcb import holdout_split, load_split
from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector
from aivd.training.classifier_calibration import calibrate_classifier
from aivd.training.common import seed_everything
from aivd.training.crop_training import (
    MINING_THRESHOLD,
    REJECT_LABEL,
    AugmentConfig,
    CropRecipe,
    LoopConfig,
    edge_candidates,
    export_probabilities,
    load_boxes,
    train_loop,
)
from aivd.training.held_out import DeepPCBScoring, HeldOutScoring
from aivd.training.refiner import RefinerNet

CLASSIFIER_FILE = "deeppcb_classifier.onnx"


@dataclass(frozen=True)
class ClassifierTrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    crop_size: int = 48
    context: float = 1.6  # at inference
    context_min: float = 1.2  # at training, drawn per crop
    context_max: float = 2.0
    min_side: int = 32
    jitter: float = 0.2
    edge_positives: bool = True  # also learn from the edge's candidates on defects (its real box noise)
    template_dropout: float = 0.1
    thickness_prob: float = 0.3
    widths: tuple[int, int, int] = (24, 48, 96)
    seed: int = 0
    threads: int = 2
    limit: int | None = None

    def recipe(self) -> CropRecipe:
        return CropRecipe(self.crop_size, self.context, (self.context_min, self.context_max), self.min_side)

    def augment(self) -> AugmentConfig:
        return AugmentConfig(self.jitter, self.template_dropout, self.thickness_prob)


def fit_classifier(train_samples, val_samples, detector_path: Path, out_dir: Path, config: ClassifierTrainConfig,
                   classifier_file: str = CLASSIFIER_FILE, scoring: HeldOutScoring = DeepPCBScoring(),
                   time_budget_s: float | None = None, progress=None) -> dict:
    """Train for the detector at `detector_path` (its labels), export to `out_dir/classifier_file` and calibrate."""
    seed_everything(config.seed, config.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    detector = TemplateDetector(detector_path, min_confidence=MINING_THRESHOLD)
    classes = detector.labels
    # Held-out accuracy is always measured on all the edge's candidates, as the classifier will meet them.
    train = load_boxes(train_samples, edge_candidates(detector, config.edge_positives))
    val = load_boxes(val_samples, edge_candidates(detector))

    rng = np.random.default_rng(config.seed)
    net = RefinerNet(len(classes) + 1, config.widths)
    loop = LoopConfig(config.epochs, config.batch_size, config.lr, config.weight_decay, time_budget_s)
    best, history = train_loop(net, train, val, config.recipe(), config.augment(), loop, rng, out_dir / "classifier_best.pt", progress)
    onnx_path = out_dir / classifier_file
    labels = [*classes.names, REJECT_LABEL]
    export_probabilities(net, onnx_path, config.crop_size, {
        "aivd_model": "crop-classifier", "labels": labels, "reject_label": REJECT_LABEL,
        "crop_size": config.crop_size, "context": config.context, "min_side": config.min_side,
        "train_config": asdict(config), "best_epoch": best["epoch"],
    })
    calibration = calibrate_classifier(onnx_path, detector_path, val_samples, scoring)
    return {
        "config": asdict(config), "train_boxes": int(len(train.classes)), "val_boxes": int(len(val.classes)),
        "train_rejects": int((train.classes == len(classes)).sum()), "best": best, "history": history,
        "onnx": str(onnx_path), "calibration": calibration,
    }


def train_classifier(root: Path, detector_path: Path | None, out_dir: Path, config: ClassifierTrainConfig, progress=None) -> dict:
    """DeepPCB: train on trainval, export to `out_dir/deeppcb_classifier.onnx` and calibrate (see module doc)."""
    train_samples, val_samples = holdout_split(load_split(root, "trainval")[: config.limit])
    record = fit_classifier(train_samples, val_samples, detector_path or BUILTIN_MODEL, out_dir, config, progress=progress)
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record
