"""Online update of the built-in edge model from the replay buffer's cloud-supervised and human-labelled images.

Starting from the served ONNX pair (weights read back with `aivd.training.onnx_import`), the class refiner is
fine-tuned for `refiner_epochs` epochs on the boxes of the buffer's training images (with the same box jitter and
augmentation as its first training; a refiner with `no-defect` also on the regions the cloud rejected) and, if
`detector_steps` > 0, the detector for that many steps on augmented crops of them. The new pair keeps its parent's score threshold unless `recalibrate` is set, and is scored against
its parent on the buffer's validation images, both by the official DeepPCB protocol with the pipeline's labels
as truth: `OnlineUpdater` (below) promotes it only if it is better.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from aivd.collab.drift_monitor import AgreementMonitor, UpdateTrigger
from aivd.collab.replay import HUMAN, LabelledImage, ReplayBuffer
from aivd.config import LearnerConfig
from aivd.core import Detections
from aivd.edge.crops import CROP_SIZE
from aivd.edge.detector import TemplateDetector
from aivd.eval.protocol import best_threshold, evaluate
from aivd.model_store import ModelStore
from aivd.training.common import seed_everything, write_metadata
from aivd.training.crop_training import BoxSet, LoopConfig, ProbabilityWrapper, export_probabilities, train_loop
from aivd.training.detector import CropSampler, DetectorTrainConfig, export_onnx, loaded_sample, train_step
from aivd.training.detector_net import CenterNetLite, ExportWrapper
from aivd.training.onnx_import import load_onnx_weights
from aivd.training.refiner import RefinerNet, RefinerTrainConfig, recipe_and_augment


@dataclass(frozen=True)
class EdgeUpdate:
    detector: Path  # the new detector ONNX; its refiner is `companions`, in the same folder
    companions: list[Path]
    fscore_before: float  # the parent pair on the validation images
    fscore_after: float  # the new pair on the same images
    threshold: float
    train_images: int
    validation_images: int
    seconds: float

    def summary(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k != "companions"}


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _pairs(detector: TemplateDetector, images: list[LabelledImage]) -> list[tuple[str, Detections, Detections]]:
    return [(item.image_id, detector.detect(item.image, item.template, 0.05), item.labels) for item in images]


def _score(pairs, threshold: float) -> float:
    return evaluate([(i, d.with_min_confidence(threshold), truth) for i, d, truth in pairs]).fscore


def _fine_tune_detector(current: Path, meta: dict, train: list[LabelledImage], config: LearnerConfig, rng) -> CenterNetLite:
    labels = json.loads(meta["labels"])
    input_scale = float(meta["input_scale"])
    net = CenterNetLite(len(labels))
    load_onnx_weights(net, current, torch.rand(1, 3, 320, 320), ExportWrapper(net))
    samples = [loaded_sample(item.image_id, item.image, item.template, item.labels, input_scale) for item in train]
    sampler = CropSampler(DetectorTrainConfig(input_scale=input_scale, seed=config.seed), len(labels), rng)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.detector_lr, weight_decay=1e-4)
    net.train()
    for _ in range(config.detector_steps):
        batch = [samples[i] for i in rng.integers(0, len(samples), config.batch_size)]
        train_step(net, optimizer, sampler, batch, DetectorTrainConfig.size_loss_weight)
    return net


def box_set(images: list[LabelledImage], reject_index: int | None) -> BoxSet:
    """The images' labelled boxes; with a `reject_index`, also the boxes the cloud rejected, as that class."""
    boxes, classes, owners = [], [], []
    for index, item in enumerate(images):
        parts = [(item.labels.xyxy, item.labels.class_id)]
        if reject_index is not None:
            parts.append((item.rejected, np.full(len(item.rejected), reject_index)))
        for part_boxes, part_classes in parts:
            boxes.append(np.asarray(part_boxes, np.float32).reshape(-1, 4))
            classes.append(np.asarray(part_classes, np.int64))
            owners.append(np.full(len(part_classes), index, np.int64))
    return BoxSet([i.image for i in images], [i.template for i in images], np.concatenate(owners), np.concatenate(boxes), np.concatenate(classes))


def _fine_tune_refiner(current: Path, reject_index: int | None, train, validation, config: LearnerConfig, rng,
                       workdir: Path) -> RefinerNet:
    """Fine-tune the refiner at `current`; `reject_index` is where its `no-defect` output is, if it has one.

    A refiner with `no-defect` keeps learning it from the cloud's rejections; on defects alone it would forget it
    and let every false alarm through (in `aivd bench collab --drift blur:2.0 --update`, every candidate scored
    validation F 0.76-0.85 against its parent's 0.96-0.98).
    """
    net = RefinerNet(len(json.loads(_metadata(current)["labels"])))
    recipe, augment = recipe_and_augment(RefinerTrainConfig())
    load_onnx_weights(net, current, torch.rand(4, 3, recipe.size, recipe.size), ProbabilityWrapper(net))
    loop = LoopConfig(config.refiner_epochs, 128, config.refiner_lr, 1e-4)
    train_loop(net, box_set(train, reject_index), box_set(validation, reject_index), recipe, augment, loop, rng, workdir / "refiner_best.pt")
    return net


def update_edge_model(current: Path, train: list[LabelledImage], validation: list[LabelledImage], out_dir: Path,
                      config: LearnerConfig = LearnerConfig()) -> EdgeUpdate:
    """Fine-tune the pair whose detector is at `current` and write the new pair into `out_dir`."""
    if not train or not validation:
        raise ValueError(f"an update needs training and validation images, got {len(train)} and {len(validation)}")
    if not any(len(item.labels) for item in validation) or not any(len(item.labels) for item in train):
        raise ValueError("the training or validation images hold no labelled defect; collect more before updating")
    started = time.perf_counter()
    seed_everything(config.seed, config.threads)
    rng = np.random.default_rng(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    parent = TemplateDetector(current, threads=config.threads)
    meta = _metadata(current)
    parent_refiner = parent.refiner_path  # the file its metadata's "refiner" names, beside it
    if parent_refiner is None and not config.detector_steps:
        raise ValueError(f"{current} has no class refiner and detector_steps is 0: nothing to update")

    detector_path = out_dir / current.name
    if config.detector_steps:
        export_onnx(_fine_tune_detector(current, meta, train, config, rng), detector_path, dict(meta))
    else:
        shutil.copyfile(current, detector_path)
    companions = []
    if parent_refiner is not None:
        with tempfile.TemporaryDirectory() as workdir:
            refiner_net = _fine_tune_refiner(parent_refiner, parent.refiner_reject, train, validation, config, rng, Path(workdir))
        refiner_path = out_dir / parent_refiner.name
        export_probabilities(refiner_net, refiner_path, CROP_SIZE, _metadata(parent_refiner))
        companions.append(refiner_path)

    threshold = parent.min_confidence
    candidate_pairs = _pairs(TemplateDetector(detector_path, threads=config.threads), validation)
    if config.recalibrate:
        threshold, _ = best_threshold(candidate_pairs)
    write_metadata(detector_path, {"score_threshold": str(threshold), "updated_from": str(current),
                                   "update_config": config.model_dump(), "update_train_images": len(train)})
    return EdgeUpdate(detector_path, companions, round(_score(_pairs(parent, validation), parent.min_confidence), 5),
                      round(_score(candidate_pairs, threshold), 5), threshold, len(train), len(validation),
                      round(time.perf_counter() - started, 1))


def _served(store: ModelStore) -> str:
    """The version `store` serves; ValueError when it serves none."""
    version = store.current()
    if version is None:
        raise ValueError(f"{store.root}: no CURRENT version to update")
    return version


class OnlineUpdater:
    """The edge's online-learning loop around a model store, fed image by image by whoever runs the pipeline.

    For each image the caller reports the pipeline's labels, how many regions the cloud decided and, for those,
    whether the edge agreed. Hard images go to the replay buffer (validation images with every candidate
    decided by the cloud: ask `wants_full_labels` before sending). When the trigger fires, the newest
    `train_window` training images fine-tune the served pair; the result is published as a new version and
    promoted only if it scores more than `min_gain` above its parent on the validation images: a tie keeps the
    served model, since on the few reviewed images an update is validated on, a tie is the common case and says
    nothing (a promotion on a 3-image tie once made the edge worse under drift). After a promotion
    the monitor watches the new model over its first `monitor.reference` regions; if it disagrees with the cloud
    more than its parent did just before the update (plus the monitor's tolerance), the store rolls back.

    Human reviews come in through `observe_review` (aivd.review.learning.ReviewFeed reads them from the review
    store): each counts as a hard image, trains `config.review_weight` times over and, once some are held out,
    is what the gate validates on (`ReplayBuffer.split`). With a `cloud` learner, each update also updates the
    cloud's classifier from the reviewed images, under a gate and rollback of its own (aivd.training.cloud_update).

    `train` is what fine-tunes (`update_edge_model`'s signature); a live learner runs it in another process.
    """

    def __init__(self, store: ModelStore, workdir: Path, config: LearnerConfig = LearnerConfig(),
                 buffer: ReplayBuffer | None = None, monitor: AgreementMonitor | None = None,
                 trigger: UpdateTrigger | None = None, train_window: int = 100, min_gain: float = 0.0,
                 train: Callable[..., EdgeUpdate] = update_edge_model, cloud=None) -> None:
        _served(store)  # refused at once without a served version
        self.store, self.workdir, self.config = store, Path(workdir), config
        # `is None`, not `or`: an empty buffer is falsy.
        self.buffer = ReplayBuffer() if buffer is None else buffer
        self.monitor = AgreementMonitor() if monitor is None else monitor
        self.trigger = UpdateTrigger() if trigger is None else trigger
        self.train_window, self.min_gain, self.train = train_window, min_gain, train
        self.cloud = cloud  # a CloudLearner (aivd.training.cloud_update), updated whenever the edge is
        self.updates: list[dict] = []
        self._watch: tuple[str, float] | None = None  # (promoted version, its parent's disagreement at the update)

    def wants_full_labels(self) -> bool:
        """Whether the next hard image is a validation image, whose regions should all go to the cloud."""
        return self.buffer.next_is_validation

    def observe(self, image_id: str, image: np.ndarray, template: np.ndarray | None, labels: Detections,
                cloud_regions: int, agrees: np.ndarray, position: int | None = None, rejected: np.ndarray | None = None,
                fully_labelled: bool = True) -> dict | None:
        """Record one image; returns the update's record when one ran (promoted or not) or a rollback happened.
        `rejected` holds the boxes of the regions the cloud called no defect; `fully_labelled` says whether the
        cloud decided every candidate (only such an image may validate)."""
        hard = self.buffer.add(image_id, image, template, labels, cloud_regions, rejected, fully_labelled)
        self.monitor.update(agrees)
        # The monitor was rebased at the promotion, so its reference is the new model's first regions.
        if self._watch is not None and self.monitor.reference_disagreement is not None:
            version, baseline = self._watch
            self._watch = None
            if self.monitor.reference_disagreement > baseline + self.monitor.tolerance:
                parent = self.store.rollback(f"{version} disagrees with the cloud on {self.monitor.reference_disagreement:.3f} "
                                             f"of regions, its parent on {baseline:.3f}")
                self.monitor.rebase()
                record = {"position": position, "tier": "edge", "action": "rollback", "version": parent, "from": version}
                self.updates.append(record)
                return record
        if not self.trigger.observe(hard, self.monitor.drifted):
            return None
        return self._update(position)

    def observe_review(self, image_id: str, image: np.ndarray, template: np.ndarray | None, labels: Detections,
                       rejected: np.ndarray | None = None, position: int | None = None) -> dict | None:
        """Record one human-labelled image (`rejected`: the machine's boxes the reviewer called no defect); it
        counts as a hard image for the trigger. Returns the update's record when one ran."""
        self.buffer.add_reviewed(image_id, image, template, labels, rejected)
        if not self.trigger.observe(True, self.monitor.drifted):
            return None
        return self._update(position)

    def _update(self, position: int | None) -> dict:
        train, validation = self.buffer.split()
        train = train[-self.train_window:]  # the reviewed images come last, so the window keeps them
        train += [item for item in train if item.trust == HUMAN] * (self.config.review_weight - 1)
        parent = _served(self.store)
        out_dir = self.workdir / f"candidate-{len(self.updates) + 1}"
        try:
            update = self.train(self.store.detector_path(parent), train, validation, out_dir, self.config)
        except ValueError as error:  # too little labelled data yet: try again when the trigger next fires
            self.trigger.updated(promoted=False)
            record = {"position": position, "tier": "edge", "action": "skip", "parent": parent, "reason": str(error)}
            self.updates.append(record)
            return record
        summary = update.summary()
        version = self.store.publish(update.detector, update.companions, parent=parent, metrics=summary)
        promoted = update.fscore_after > update.fscore_before + self.min_gain
        record = {"position": position, "tier": "edge", "action": "promote" if promoted else "reject", "version": version, "parent": parent,
                  **{k: v for k, v in summary.items() if k != "detector"}}
        self.trigger.updated(promoted)
        if promoted:
            self.store.promote(version, f"validation F {update.fscore_after} > {update.fscore_before} + {self.min_gain}")
            # The parent's disagreement just before: its window if full, else its reference. With neither (an
            # update before the monitor has measured anything) there is nothing to compare the new model with.
            recent, reference = self.monitor.recent_disagreement, self.monitor.reference_disagreement
            baseline = recent if recent is not None else reference
            self._watch = None if baseline is None else (version, baseline)
            self.monitor.rebase()
        self.updates.append(record)
        if self.cloud is not None:
            self.updates += self.cloud.update(self.buffer, position)
        return record
