"""`aivd finetune build`: chat data for fine-tuning a vision-language model as the cloud tier, from any
box-annotated data set (DeepPCB, VOC or YOLO layout).

Each example is what the model will meet in service: a region cut around a candidate box exactly as the edge
cuts one (`cut_regions`), asked about in the versioned prompt (`aivd.cloud.llm.prompts`), and answered with the
defect record the knowledge base writes for the true class and the defect's measured size. The box is the
annotated one with the jitter the crop classifiers learn the edge's box noise from (`jittered`), cut with a
random context factor around the edge's; the edge's class in the prompt is sometimes wrong, as the edge's is;
and a few windows away from any defect per image become "no defect" answers, as the edge's false alarms.
Crops get the crop classifiers' one-pixel conductor thickness change and template dropout, then photometric
augmentation by albumentations: brightness (the V of HSV: the images are greyscale), contrast, gamma, blur,
noise and scale.

Written to OUT: `images/*.png`; `train.jsonl` and `val.jsonl` (90/10 by image, fixed seed) with one
`{"messages": [...], "images": [...]}` object a line, the format TRL's SFTTrainer reads (image paths relative
to OUT); `llamafactory_train.json`, `llamafactory_val.json` and `dataset_info.json` for LLaMA-Factory's
multimodal sharegpt format (`<image>` tokens; `dataset_dir=OUT`); `dataset.json`, what was built from what.
A file that cannot be read is reported and skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeBase
from aivd.cloud.llm.prompts import build_messages, format_answer, load_prompt, region_images
from aivd.cloud.measure import measure
from aivd.core import Detections, LabelMap, Region
from aivd.core.detections import box_iou
from aivd.core.regions import TRANSPORT_CONTEXT, cut_regions
from aivd.data.deeppcb import DatasetError
from aivd.data.images import ImageError, read_pair
from aivd.training.common import change_thickness
from aivd.training.crop_training import AugmentConfig, jittered

# albumentations asks PyPI for a newer version at import unless told not to; builds must not touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TRAIN_FILE, VAL_FILE, MANIFEST = "train.jsonl", "val.jsonl", "dataset.json"
LLAMAFACTORY_FILES = {"train": "llamafactory_train.json", "val": "llamafactory_val.json"}
LLAMAFACTORY_NAMES = {"train": "aivd_defects_train", "val": "aivd_defects_val"}
NEGATIVE_MAX_IOU = 0.05
NEGATIVE_TRIES = 20


@dataclass(frozen=True)
class FinetuneDataConfig:
    seed: int = 0
    copies: int = 1  # augmented examples per annotated box
    negatives: int = 1  # "no defect" windows per image
    context: tuple[float, float] = (0.7 * TRANSPORT_CONTEXT, 1.3 * TRANSPORT_CONTEXT)  # drawn per example around the edge's
    augment: AugmentConfig = AugmentConfig(jitter=0.2, template_dropout=0.1, thickness_prob=0.3)  # the cloud classifier's
    edge_confusion: float = 0.15  # how often the prompt's edge class is another class
    val_fraction: float = 0.1
    pixels_per_mm: float | None = None
    prompt: str | None = None  # a shipped prompt version or a file; None: the newest
    knowledge: str = str(DEFAULT_KNOWLEDGE)  # the answers' text and severity, and the prompt's class summaries and subject
    pcb_facts: bool = True  # measure copper and conductors (where there are templates) for the severity rules


def photometric():
    """The albumentations pipeline applied to each crop and its template alike."""
    import albumentations as A

    return A.Compose([
        A.RandomScale(scale_limit=(-0.3, 0.5), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.25, p=0.8),
        A.RandomGamma(gamma_limit=(80, 125), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), p=0.25),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
    ], additional_targets={"template": "image"})


class ExampleMaker:
    """Examples for one data set: its classes, the prompt, the knowledge base and the augmentation."""

    def __init__(self, class_names: tuple[str, ...], config: FinetuneDataConfig):
        self.config = config
        self.labels = LabelMap(tuple(class_names))
        self.knowledge = KnowledgeBase.load(config.knowledge)
        missing = [name for name in class_names if name not in self.knowledge.classes]
        if missing:
            raise DatasetError(f"classes {missing} are not in the knowledge base {config.knowledge} "
                               f"(it knows {', '.join(self.knowledge.classes)}); answers need its text: `aivd kb init` writes one to edit")
        self.prompt = load_prompt(config.prompt)
        self.transform = photometric()
        self.transform.set_random_seed(config.seed)

    def _edge_class(self, true_id: int, rng: np.random.Generator) -> int:
        if len(self.labels) > 1 and rng.random() < self.config.edge_confusion:
            return int(rng.choice([i for i in range(len(self.labels)) if i != true_id]))
        return true_id

    def _region(self, image, template, box, edge_id, image_id, rng) -> Region:
        detections = Detections(np.asarray(box, np.float32)[None], np.array([rng.uniform(0.05, 0.95)]), np.array([edge_id]), self.labels)
        return cut_regions(image, template, detections, image_id, self.config.pixels_per_mm, context=rng.uniform(*self.config.context))[0]

    def _augmented(self, region: Region, rng: np.random.Generator) -> Region:
        augment = self.config.augment
        image, template = region.image, region.template
        if rng.random() < augment.thickness_prob:
            if template is not None and rng.integers(2):
                template = change_thickness(template, rng)
            else:
                image = change_thickness(image, rng)
        if template is not None and rng.random() < augment.template_dropout:
            template = None
        out = self.transform(image=image, template=image if template is None else template)
        scale_x, scale_y = out["image"].shape[1] / image.shape[1], out["image"].shape[0] / image.shape[0]
        x1, y1, x2, y2 = region.box
        return replace(
            region, image=out["image"], template=None if template is None else out["template"],
            box=(x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y),
            pixels_per_mm=None if region.pixels_per_mm is None else region.pixels_per_mm * scale_x,
        )

    def example(self, image, template, truth_box, true_id: int, is_defect: bool, image_id: str, rng) -> tuple[Region, str]:
        """The augmented region the model is shown and the answer it should give."""
        edge_id = self._edge_class(true_id, rng)
        box = jittered(np.asarray(truth_box, np.float64)[None], rng, self.config.augment.jitter)[0] if is_defect else truth_box
        height, width = image.shape
        box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
        region = self._region(image, template, box, edge_id, image_id, rng)
        # The answer describes the true defect: measured on the unaugmented crop around the annotated box.
        left, top = region.origin
        crop_h, crop_w = region.image.shape
        tx1, ty1, tx2, ty2 = truth_box
        truth_in_crop = (max(0.0, tx1 - left), max(0.0, ty1 - top), min(float(crop_w), tx2 - left), min(float(crop_h), ty2 - top))
        measurements = measure(replace(region, box=truth_in_crop), pcb_facts=self.config.pcb_facts)
        name = self.labels.name(true_id) if is_defect else self.labels.name(edge_id)
        analysis = self.knowledge.analysis(name, 1.0 if is_defect else 0.0, is_defect, measurements, self.labels.name(edge_id))
        return self._augmented(region, rng), format_answer(analysis)

    def negative_boxes(self, truth: Detections, shape: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
        """Windows the size of this image's defects that overlap none of them: the edge's false alarms on clean copper."""
        height, width = shape
        sides = (truth.xyxy[:, 2:] - truth.xyxy[:, :2]) if len(truth) else np.array([[24.0, 24.0]])
        boxes = []
        for _ in range(self.config.negatives):
            for _ in range(NEGATIVE_TRIES):
                w, h = sides[rng.integers(len(sides))].clip(4, min(width, height) / 2)
                x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
                candidate = np.array([x1, y1, x1 + w, y1 + h])
                if not len(truth) or box_iou(candidate[None], truth.xyxy).max() < NEGATIVE_MAX_IOU:
                    boxes.append(candidate)
                    break
        return boxes

    def record(self, region: Region, answer: str, image_names: list[str]) -> dict:
        """One chat in TRL's format: the prompt's messages, then the answer."""
        messages = build_messages(self.prompt, region, self.labels.names, self.knowledge)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return {"messages": messages, "images": image_names}


def to_llamafactory(record: dict) -> dict:
    """A TRL-format chat in LLaMA-Factory's sharegpt multimodal format: plain-text contents, an `<image>` token per
    image where its placeholder was."""
    messages = []
    for message in record["messages"]:
        text = "".join("<image>" if part["type"] == "image" else part["text"] for part in message["content"])
        messages.append({"role": message["role"], "content": text})
    return {"messages": messages, "images": record["images"]}


def llamafactory_info() -> dict:
    """LLaMA-Factory's dataset_info.json entries for the two files."""
    columns = {"messages": "messages", "images": "images"}
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}
    return {
        LLAMAFACTORY_NAMES[split]: {"file_name": LLAMAFACTORY_FILES[split], "formatting": "sharegpt", "columns": columns, "tags": tags}
        for split in ("train", "val")
    }


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(data.tobytes())


def val_images(count: int, fraction: float, seed: int) -> set[int]:
    """The indices of the held-out images: a seeded `fraction` of them (at least one when there are two or more)."""
    if count < 2:
        return set()
    order = np.random.default_rng(seed).permutation(count)
    return set(order[: max(1, round(count * fraction))].tolist())


def build_finetune_data(
    samples, class_names: tuple[str, ...], out_dir: Path, config: FinetuneDataConfig, source: str,
    report: Callable[[str], None] = print, advance: Callable[[], None] | None = None,
) -> dict:
    """Write the data set (see the module doc) and return its manifest. `report` gets one line per skipped file,
    `advance` is called after each image (a progress bar)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{out_dir}: not empty; give a new folder so old examples do not mix with new ones")
    maker = ExampleMaker(class_names, config)
    (out_dir / "images").mkdir(parents=True)
    held_out = val_images(len(samples), config.val_fraction, config.seed)
    records: dict[str, list[dict]] = {"train": [], "val": []}
    skipped, counts = [], {"defect": 0, "no_defect": 0}
    for index, sample in enumerate(samples):
        path = sample.image_path
        try:
            image, template = read_pair(path, sample.template_path)
            truth = sample.ground_truth()
        except (ImageError, DatasetError, OSError, UnicodeDecodeError) as error:
            reason = error.reason if isinstance(error, ImageError) else str(error)
            skipped.append({"image": str(path), "reason": reason})
            report(f"error: {path}: {reason}")
        else:
            # One generator per image: an image's examples do not depend on which other files could be read.
            rng = np.random.default_rng([config.seed, index])
            examples = records["val" if index in held_out else "train"]
            jobs = [(box, int(class_id), True) for box, class_id in zip(truth.xyxy, truth.class_id) for _ in range(config.copies)]
            jobs += [(box, int(rng.integers(len(class_names))), False) for box in maker.negative_boxes(truth, image.shape, rng)]
            for box, class_id, is_defect in jobs:
                region, answer = maker.example(image, template, box, class_id, is_defect, sample.image_id, rng)
                number = len(records["train"]) + len(records["val"])
                names = [f"images/{number:06d}_{suffix}.png" for suffix in ("test", "temp")[: len(region_images(region))]]
                for name, picture in zip(names, region_images(region)):
                    _write_png(out_dir / name, picture)
                examples.append(maker.record(region, answer, names))
                counts["defect" if is_defect else "no_defect"] += 1
        if advance is not None:
            advance()
    for split, file_name in (("train", TRAIN_FILE), ("val", VAL_FILE)):
        (out_dir / file_name).write_text("".join(json.dumps(record) + "\n" for record in records[split]))
        (out_dir / LLAMAFACTORY_FILES[split]).write_text(json.dumps([to_llamafactory(r) for r in records[split]], indent=1))
    (out_dir / "dataset_info.json").write_text(json.dumps(llamafactory_info(), indent=2))
    manifest = {
        "source": source, "class_names": list(class_names), "prompt": maker.prompt.version, "config": asdict(config),
        "images": len(samples) - len(skipped), "examples": {split: len(r) for split, r in records.items()}, **counts,
        "skipped": skipped,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
