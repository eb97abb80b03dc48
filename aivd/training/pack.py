"""`aivd train pack`: every model a new line needs, trained from its labelled images within a time budget.

Stages, each given a share of what is left of the budget when it starts:
1. the edge detector (template-aware when every training image has a template, image-only otherwise);
2. its refiner, which also learns the detector's false alarms as `no-defect`; the detector's threshold is then
   calibrated through the real ONNX inference of both;
3. the cloud tier's crop classifier and its two thresholds;
4. a knowledge base scaffold for the data set's classes, the manifest and the model card.
Epoch counts follow from the time of each stage's first epoch; the epoch and every threshold are chosen on the
held-out part of the training data (`DataSource.training_splits`), never on a test split.

Progress is kept in `OUT/work/state.json` and per-epoch checkpoints: a stopped run (Ctrl-C) continues with
`--resume`, finished stages are not run again, and the detector continues from its last epoch.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from aivd.core.errors import AivdError
from aivd.data.dataset import DataSplit
from aivd.training.held_out import DeepPCBScoring, DetectionScoring, HeldOutScoring

STAGES = ("detector", "refiner", "classifier", "pack")
# Shares of the remaining budget: the detector is what matters most, the crop models are cheaper per epoch.
STAGE_SHARE = {"detector": 0.62, "refiner": 0.45, "classifier": 0.95}
DEFAULT_BUDGET_MIN = 90.0
TARGET_INPUT_SIDE = 320  # network-input pixels of a typical image: DeepPCB's 640 px at scale 0.5


class PackTrainingError(AivdError, ValueError):
    """A data set a pack cannot be trained on; the message says why."""


@dataclass(frozen=True)
class PackPlan:
    data: str
    out: str
    time_budget_min: float
    seed: int
    command: str
    use_templates: bool = True  # False: train image-only models even where the data has templates


def median_image_side(split: DataSplit) -> float:
    """The median longer side of (up to 200 of) the split's images, read from their headers."""
    from aivd.data.images import read_image_size

    return float(np.median([max(read_image_size(sample.image_path)) for sample in split.samples[:200]]))


def choose_input_scale(median_side: float) -> float:
    """Scale images down so their median longer side is about TARGET_INPUT_SIDE; never up (small images keep
    every pixel and are fast already)."""
    return round(min(1.0, TARGET_INPUT_SIDE / median_side), 4)


def choose_tile_size(median_side: float) -> int:
    """Images much larger than those trained on are inspected in tiles twice their size (`TiledDetector` sends an
    image up to 1.5 tiles whole), so a tile holds about what the detector learned from, with room for context."""
    return int(min(8192, max(64, round(2 * median_side))))


def without_unreadable(split: DataSplit) -> DataSplit:
    """The split less the samples whose image or template cannot be decoded, each recorded as a problem: the data
    check reads headers only, and one bad file must not stop hours of training."""
    from aivd.data.dataset import DataProblem
    from aivd.data.images import ImageError, read_pair

    kept, problems = [], list(split.problems)
    for sample in split.samples:
        try:
            read_pair(sample.image_path, sample.template_path)
        except ImageError as error:
            problems.append(DataProblem(error.path, error.reason))
            continue
        kept.append(sample)
    return DataSplit(split.name, split.labels, kept, problems)


def without_templates(split: DataSplit) -> DataSplit:
    return DataSplit(split.name, split.labels, [replace(sample, template_path=None) for sample in split.samples], split.problems)


def _state(work: Path) -> dict:
    path = work / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"done": {}}


def _save_state(work: Path, state: dict) -> None:
    tmp = work / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(work / "state.json")


def train_pack(plan: PackPlan, progress: Callable[[str, dict], None] = lambda stage, record: None, resume: bool = False) -> dict:
    """Train the pack described by `plan` into `plan.out/pack/`; returns the record the model card is made from."""
    from aivd.data.sources import open_data
    from aivd.training.cloud_classifier import ClassifierTrainConfig, fit_classifier
    from aivd.training.common import seed_everything
    from aivd.training.detector import (
        DetectorRun,
        DetectorTrainConfig,
        detector_metadata,
        export_onnx,
        fit_detector,
        load_samples,
    )
    from aivd.training.refiner import RefinerTrainConfig, fit_refiner, package_with_detector

    started = time.time()
    out = Path(plan.out)
    work, pack_dir = out / "work", out / "pack"
    work.mkdir(parents=True, exist_ok=True)
    pack_dir.mkdir(parents=True, exist_ok=True)
    state = _state(work) if resume else {"done": {}}
    if resume and state.get("plan") and state["plan"]["data"] != plan.data:
        raise PackTrainingError(f"{out}: --resume of a run on {state['plan']['data']}, not {plan.data}")
    elapsed_before = state.get("elapsed_s", 0.0)
    # The card names the command that started the run; resuming it is recorded beside it.
    state["resumed"] = state.get("resumed", 0) + 1 if resume and state.get("plan") else 0
    state["plan"] = state["plan"] if state["resumed"] else asdict(plan)
    budget_s = plan.time_budget_min * 60

    def remaining() -> float:
        return max(1.0, budget_s - (elapsed_before + time.time() - started))

    def finish(stage: str, record: dict) -> None:
        state["done"][stage] = record
        state["elapsed_s"] = round(elapsed_before + time.time() - started, 1)
        _save_state(work, state)

    source = open_data(plan.data)
    train, val = (without_unreadable(split) for split in source.training_splits(seed=plan.seed))
    if not plan.use_templates:
        train, val = (without_templates(split) for split in (train, val))
    if len(train.samples) < 2 or not val.samples:
        raise PackTrainingError(f"{plan.data}: {len(train.samples)} usable training images and {len(val.samples)} held out; "
                                "a pack needs at least a few labelled images of each class")
    templates = train.has_templates and val.has_templates
    labels = source.labels
    scoring: HeldOutScoring = DeepPCBScoring() if source.format == "deeppcb" and templates else DetectionScoring(labels)
    data_summary = {"format": source.format, "root": str(source.root), "classes": list(labels.names), "train_images": len(train.samples),
                    "held_out_images": len(val.samples), "templates": templates,
                    "skipped": [str(problem) for problem in train.problems + val.problems]}
    progress("data", data_summary)
    seed_everything(plan.seed, 2)
    image_file, template_file = "detector.onnx", "detector_template.onnx"
    detector_file = template_file if templates else image_file

    if "detector" not in state["done"]:
        detector_config = DetectorTrainConfig(seed=plan.seed, input_scale=choose_input_scale(median_image_side(train)))
        detector_config = detector_config if templates else detector_config.without_templates()
        train_images = load_samples(train.samples, detector_config.input_scale)
        val_images = load_samples(val.samples, detector_config.input_scale)
        run = DetectorRun(labels, scoring.select, time_budget_s=remaining() * STAGE_SHARE["detector"])
        fitted = fit_detector(train_images, val_images, work / "detector", detector_config, run, lambda r: progress("detector", r), resume)
        export_onnx(fitted["net"], pack_dir / detector_file,
                    detector_metadata(labels, detector_config, fitted["best"], "required" if templates else "none"))
        finish("detector", {"config": asdict(detector_config), "best": fitted["best"], "epochs": fitted["epochs"], "history": fitted["history"]})

    if "refiner" not in state["done"]:
        refiner_config = RefinerTrainConfig(seed=plan.seed)
        refiner_config = refiner_config if templates else replace(refiner_config, template_dropout=0.0, thickness_prob=0.0)
        record = fit_refiner(train.samples, val.samples, pack_dir / detector_file, work / "refiner", refiner_config, "refiner.onnx",
                             remaining() * STAGE_SHARE["refiner"], lambda r: progress("refiner", r))
        (pack_dir / "refiner.onnx").write_bytes((work / "refiner" / "refiner.onnx").read_bytes())
        record["pipeline"] = package_with_detector(pack_dir / detector_file, pack_dir, val.samples, scoring, detector_file, "refiner.onnx")
        progress("refiner", {"calibrated": record["pipeline"]})
        finish("refiner", record)

    if "classifier" not in state["done"]:
        classifier_config = ClassifierTrainConfig(seed=plan.seed)
        classifier_config = classifier_config if templates else replace(classifier_config, template_dropout=0.0, thickness_prob=0.0)
        record = fit_classifier(train.samples, val.samples, pack_dir / detector_file, work / "classifier", classifier_config, "classifier.onnx",
                                scoring, remaining() * STAGE_SHARE["classifier"], lambda r: progress("classifier", r))
        (pack_dir / "classifier.onnx").write_bytes((work / "classifier" / "classifier.onnx").read_bytes())
        progress("classifier", {"calibrated": record["calibration"]["chosen"]})
        finish("classifier", record)

    write_pack_files(plan, source, train, labels, templates, detector_file, pack_dir, state, data_summary)
    state["elapsed_s"] = round(elapsed_before + time.time() - started, 1)
    finish("pack", {"pack": str(pack_dir)})
    return {"plan": asdict(plan), "data": data_summary, "stages": state["done"], "wall_s": state["elapsed_s"], "pack": str(pack_dir)}


def write_pack_files(plan: PackPlan, source, train: DataSplit, labels, templates: bool, detector_file: str, pack_dir: Path,
                     state: dict, data_summary: dict) -> None:
    """The knowledge base scaffold, the manifest and the model card."""
    from aivd.cloud.knowledge_scaffold import scaffold_knowledge
    from aivd.packs.pack import PackDetectors, PackManifest, write_manifest

    sides: dict[str, list[float]] = {name: [] for name in labels.names}
    for sample in train.samples:
        truth = sample.ground_truth()
        for name, (x1, y1, x2, y2) in zip(truth.class_names, truth.xyxy):
            sides[name].append(float(max(x2 - x1, y2 - y1)))
    name = Path(source.root).name or "pack"
    knowledge = pack_dir / "knowledge.yaml"
    if not knowledge.is_file():  # a user's edits survive a rerun
        knowledge.write_text(scaffold_knowledge(name, list(labels.names), sides))
    detectors = PackDetectors(template=detector_file) if templates else PackDetectors(image=detector_file)
    manifest = PackManifest(name=name, labels=list(labels.names), domain="pcb" if source.format == "deeppcb" else "generic",
                            detectors=detectors, classifier="classifier.onnx", knowledge="knowledge.yaml",
                            tile_size=choose_tile_size(median_image_side(train)))
    write_manifest(pack_dir, manifest)
    (pack_dir / "MODEL_CARD.md").write_text(model_card(plan, manifest, state, data_summary))


def _figures(values: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{key} {values[key]:.4f}" for key in keys if isinstance(values.get(key), (int, float)))


def model_card(plan: PackPlan, manifest, state: dict, data_summary: dict) -> str:
    done = state["done"]
    detector, refiner, classifier = done["detector"], done["refiner"], done["classifier"]
    skipped = data_summary["skipped"]
    lines = [
        f"# Model pack `{manifest.name}`",
        "",
        "Trained by `aivd train pack`; every figure below is on the held-out part of the training data, never on a test split.",
        "",
        "## Data",
        f"- Source: `{data_summary['root']}` ({data_summary['format']}), classes: {', '.join(manifest.labels)}.",
        f"- Training images: {data_summary['train_images']}; held out: {data_summary['held_out_images']}; "
        f"templates: {'yes (template-aware detector)' if data_summary['templates'] else 'no (image-only detector)'}.",
        f"- Samples or boxes skipped as unusable: {len(skipped)}" + (f" (first: `{skipped[0]}`)" if skipped else "") + ".",
        "",
        "## How it was made",
        f"- Command: `{state['plan']['command']}`" + (f" (stopped and continued with `--resume` {state['resumed']} time(s))"
                                                   if state.get("resumed") else ""),
        f"- Seed {plan.seed}, time budget {plan.time_budget_min:g} min, wall time {state.get('elapsed_s', 0) / 60:.1f} min "
        f"on {os.cpu_count()} {platform.machine()} CPU cores.",
        f"- Detector: input scale {detector['config']['input_scale']}, {detector['epochs']} epochs (from the time budget), "
        f"best epoch {detector['best']['epoch']}: {_figures(detector['best'], ('map50', 'map50_95', 'fscore', 'ap'))}.",
        f"- Refiner: {refiner['best']['epochs']} epochs, held-out crop accuracy {refiner['best']['accuracy']:.4f}; "
        f"detector + refiner at threshold {refiner['pipeline']['threshold']:.3f}: {_figures(refiner['pipeline']['val'], ('map50', 'map50_95', 'fscore', 'ap'))}.",
        f"- Cloud classifier: {classifier['best']['epochs']} epochs, held-out crop accuracy {classifier['best']['accuracy']:.4f}; "
        f"proposal threshold {classifier['calibration']['chosen']['proposal_threshold']}, score threshold "
        f"{classifier['calibration']['chosen']['score_threshold']:.3f}, edge weight {classifier['calibration']['chosen']['edge_weight']}, "
        f"held-out F {classifier['calibration']['chosen']['fscore']:.4f}.",
        "- Epoch counts follow the machine's speed (each stage fills its share of the budget): the same command on a faster "
        "machine trains more epochs, and its figures differ.",
        "",
        "## Files",
        "- `pack.yaml`: the manifest; the ONNX files carry class names, thresholds and input scale in their metadata.",
        "- `knowledge.yaml`: a scaffold of the knowledge base; edit its texts and rules for the line.",
    ]
    return "\n".join(lines) + "\n"
