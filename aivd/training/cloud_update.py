"""Online update of the cloud tier's crop classifier (`aivd train classifier`, the built-in cloud) from human labels.

The cloud cannot learn from its own answers, so only reviewed images teach it: their boxes with their classes, and
the machine's candidates the reviewer called no defect as `no-defect`. The classifier served is fine-tuned from its
ONNX file (weights read back with `aivd.training.onnx_import`, its first training's crop recipe and augmentation,
the edge update's epochs and rate) and gated like the edge's update: published as a version of a model store of
its own, promoted only if its crop accuracy on the held-out reviewed images is above its parent's (a tie keeps the parent), and then
swapped into the analyzer. Rollback: at the next update, the promoted version and its parent are scored on the
images reviewed since the promotion (neither has seen them); if the new one is worse, the store rolls back.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from aivd.collab.replay import HUMAN, LabelledImage, ReplayBuffer
from aivd.config import LearnerConfig
from aivd.model_store import ModelStore
from aivd.training.cloud_classifier import ClassifierTrainConfig
from aivd.training.common import seed_everything, write_metadata
from aivd.training.crop_training import BoxSet, LoopConfig, ProbabilityWrapper, accuracy, export_probabilities, train_loop
from aivd.training.online_update import box_set
from aivd.training.onnx_import import load_onnx_weights
from aivd.training.refiner import RefinerNet


@dataclass(frozen=True)
class CloudUpdate:
    classifier: Path
    accuracy_before: float  # the parent's crop accuracy on the held-out reviewed boxes
    accuracy_after: float
    train_images: int
    validation_images: int
    seconds: float

    def summary(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


class _Classifier:
    """A crop classifier's ONNX file as a torch network, with the recipe it was trained with."""

    def __init__(self, path: Path) -> None:
        self.meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        labels = json.loads(self.meta["labels"])
        self.classes, self.reject_index = [n for n in labels if n != self.meta["reject_label"]], labels.index(self.meta["reject_label"])
        trained = json.loads(self.meta["train_config"])
        config = ClassifierTrainConfig(**{**trained, "widths": tuple(trained["widths"])})
        self.recipe, self.augment = config.recipe(), config.augment()
        self.net = RefinerNet(len(labels), config.widths)
        load_onnx_weights(self.net, path, torch.rand(4, 3, self.recipe.size, self.recipe.size), ProbabilityWrapper(self.net))

    def boxes(self, images: list[LabelledImage]) -> BoxSet:
        for item in images:
            if list(item.labels.labels.names) != self.classes:
                raise ValueError(f"the classifier's classes {self.classes} are not the labels' {list(item.labels.labels.names)}")
        return box_set(images, self.reject_index)

    def accuracy(self, images: list[LabelledImage]) -> float:
        return accuracy(self.net, self.boxes(images), self.recipe, self.augment)


def update_cloud_classifier(current: Path, train: list[LabelledImage], validation: list[LabelledImage], out_dir: Path,
                            config: LearnerConfig = LearnerConfig()) -> CloudUpdate:
    """Fine-tune the classifier at `current` on `train` and write it into `out_dir`, scored with its parent on
    `validation` (human-labelled images both)."""
    if not train or not validation:
        raise ValueError(f"a cloud update needs reviewed training and validation images, got {len(train)} and {len(validation)}")
    started = time.perf_counter()
    seed_everything(config.seed, config.threads)
    rng = np.random.default_rng(config.seed)
    classifier = _Classifier(current)
    held_out = classifier.boxes(validation)
    before = classifier.accuracy(validation)
    # The learner's batch size (16), not the first training's 128: a few hundred reviewed crops would give an epoch of
    # one or two steps.
    loop = LoopConfig(config.refiner_epochs, config.batch_size, config.refiner_lr, 1e-4)
    with tempfile.TemporaryDirectory() as workdir:
        best, _ = train_loop(classifier.net, classifier.boxes(train), held_out, classifier.recipe, classifier.augment, loop, rng,
                             Path(workdir) / "classifier_best.pt")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / current.name
    export_probabilities(classifier.net, path, classifier.recipe.size, classifier.meta)
    write_metadata(path, {"updated_from": str(current), "update_config": config.model_dump(), "update_train_images": len(train)})
    return CloudUpdate(path, round(before, 5), round(best["accuracy"], 5), len(train), len(validation),
                       round(time.perf_counter() - started, 1))


class CloudLearner:
    """The cloud classifier's updates beside the edge's (`OnlineUpdater.cloud`): run when the edge's trigger fires,
    from the replay buffer's reviewed images alone, published to `store` and swapped into `analyzer` (a
    `BuiltinAnalyzer`) when promoted or rolled back. `store` is seeded with the analyzer's classifier if empty, and
    the analyzer serves the store's current version from the start. `train` fine-tunes (`update_cloud_classifier`'s
    signature)."""

    def __init__(self, store: ModelStore, analyzer, workdir: Path, config: LearnerConfig = LearnerConfig(),
                 train: Callable[..., CloudUpdate] = update_cloud_classifier) -> None:
        self.store, self.analyzer, self.workdir, self.config, self.train = store, analyzer, Path(workdir), config, train
        served = store.current()
        if served is None:
            served = store.publish(analyzer.classifier.path, metrics={"source": "served"})
            store.promote(served)
        analyzer.swap_classifier(store.detector_path(served))
        self.updates = 0
        self._watch: tuple[str, str, int] | None = None  # (promoted version, its parent, reviewed images at the promotion)

    def update(self, buffer: ReplayBuffer, position: int | None) -> list[dict]:
        """The records of what happened: a rollback of the last promotion, and an update (none without reviews)."""
        records = []
        if self._watch is not None:
            records += self._check(self._watch, buffer, position)
        train, validation = buffer.split()
        train = [item for item in train if item.trust == HUMAN]
        validation = [item for item in validation if item.trust == HUMAN]
        if not train or not validation:
            return records
        parent = self.store.current()
        assert parent is not None, "the store has a current version from __init__ on"
        self.updates += 1
        update = self.train(self.store.detector_path(parent), train, validation,
                                         self.workdir / f"cloud-candidate-{self.updates}", self.config)
        summary = update.summary()
        version = self.store.publish(update.classifier, parent=parent, metrics=summary)
        promoted = update.accuracy_after > update.accuracy_before
        if promoted:
            self.store.promote(version, f"reviewed crop accuracy {update.accuracy_after} > {update.accuracy_before}")
            self.analyzer.swap_classifier(self.store.detector_path(version))
            self._watch = (version, parent, buffer.reviewed_added)
        records.append({"position": position, "tier": "cloud", "action": "promote" if promoted else "reject", "version": version,
                        "parent": parent, **{k: v for k, v in summary.items() if k != "classifier"}})
        return records

    def _check(self, watch: tuple[str, str, int], buffer: ReplayBuffer, position: int | None) -> list[dict]:
        version, parent, seen = watch
        fresh = list(buffer.reviewed)[len(buffer.reviewed) - min(buffer.reviewed_added - seen, len(buffer.reviewed)):]
        if not any(len(item.labels) or len(item.rejected) for item in fresh):
            return []  # nothing reviewed since: keep watching
        self._watch = None
        served, before = (_Classifier(self.store.detector_path(v)).accuracy(fresh) for v in (version, parent))
        if served >= before:
            return []
        self.store.rollback(f"{version} scores crop accuracy {served:.3f} on the images reviewed since its promotion, its parent {before:.3f}")
        self.analyzer.swap_classifier(self.store.detector_path(parent))
        return [{"position": position, "tier": "cloud", "action": "rollback", "version": parent, "from": version}]
