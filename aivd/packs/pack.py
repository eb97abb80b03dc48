"""A model pack: the models and knowledge one production line needs, in one folder that every command takes.

``pack.yaml`` names the files beside it::

    format: 1
    name: neu-det
    labels: [crazing, inclusion, ...]
    domain: generic            # or pcb: PCB facts (joined or split conductors) are measured with a template
    detectors:
      image: detector.onnx     # sees the image alone; used for an image without a template
      template: null           # template-aware; used whenever an image has a template
    classifier: classifier.onnx  # the cloud tier's crop classifier (optional)
    knowledge: knowledge.yaml  # the knowledge base the cloud tier writes its records from
    tile_size: 640             # images much larger than this are inspected in overlapping tiles
    pixels_per_mm: null        # the imaging scale, when the line knows it
    runtime: onnxruntime       # or openvino (.xml files); `aivd export` writes packs for either
    precision: fp32            # or int8
    tolerance: null            # an exported pack: the most its F1 or mAP@0.5 may lose against its source's

The ONNX files carry their own class names, threshold, input scale and template use in their metadata; the
manifest is checked against them when the pack is loaded, so a pack whose files disagree is refused.
The shipped DeepPCB models are the built-in pack (`builtin_pack`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aivd.core import Detections, LabelMap
from aivd.core.errors import AivdError
from aivd.core.regions import PIXELS_PER_MM_RANGE
from aivd.data.yaml_files import first_problem, read_yaml_mapping
from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector, detect_batch
from aivd.edge.runtimes import Runtime, runtime_of

PACK_FILE = "pack.yaml"
PACK_FORMAT: Final = 1
BUILTIN_TEMPLATE_FREE = BUILTIN_MODEL.with_name("deeppcb_image_only.onnx")


class PackError(AivdError, ValueError):
    """A pack that cannot be used; the message names the folder or file and why."""


class PackDetectors(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = None
    template: str | None = None


class PackManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = PACK_FORMAT
    name: str = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    domain: Literal["generic", "pcb"] = "generic"
    detectors: PackDetectors
    classifier: str | None = None
    knowledge: str
    tile_size: int = Field(640, ge=64, le=8192)
    pixels_per_mm: float | None = Field(None, gt=PIXELS_PER_MM_RANGE[0], lt=PIXELS_PER_MM_RANGE[1])
    # Defaults are what every pack was before `aivd export`, so older manifests load unchanged.
    runtime: Runtime = "onnxruntime"
    precision: Literal["fp32", "int8"] = "fp32"
    tolerance: float | None = Field(None, ge=0.0, le=1.0)


class ModelPack:
    """A loaded manifest with its files resolved (and confined to the pack's folder)."""

    def __init__(self, root: Path, manifest: PackManifest, *, image: Path | None, template: Path | None, classifier: Path | None,
                 knowledge: Path):
        self.root = root
        self.manifest = manifest
        self.name = manifest.name
        self.labels = LabelMap(tuple(manifest.labels))
        self.domain = manifest.domain
        self.image_detector = image
        self.template_detector = template
        self.classifier = classifier
        self.knowledge = knowledge
        self.tile_size = manifest.tile_size
        self.pixels_per_mm = manifest.pixels_per_mm
        self.runtime = manifest.runtime
        self.precision = manifest.precision

    @property
    def pcb_facts(self) -> bool:
        """Joined or split conductors are measured only for a template-aware PCB pack."""
        return self.domain == "pcb" and self.template_detector is not None

    def load_detector(self, min_confidence: float | None = None, threads: int = 2, tile_size: int | None = None,
                      augment: bool = False) -> PackDetector:
        """The pack's edge; images much larger than `tile_size` (default: the pack's; 0: never) go in tiles; `augment`:
        test-time augmentation (`aivd.edge.tta`)."""
        from aivd.edge.tiling import TiledDetector

        tile_size = self.tile_size if tile_size is None else tile_size

        def load(path: Path | None):
            if path is None:
                return None
            detector = TemplateDetector(path, min_confidence, threads, augment=augment)
            if list(detector.labels.names) != list(self.labels.names):
                raise PackError(f"{path}: labels {list(detector.labels.names)} differ from the pack's {list(self.labels.names)}")
            return TiledDetector(detector, tile_size) if tile_size else detector

        return PackDetector(self.name, self.labels, load(self.image_detector), load(self.template_detector))


class PackDetector:
    """The pack's edge: the template-aware detector for an image with a template, the image-only one otherwise.

    Each keeps its own calibrated threshold; `threshold_for` says which applies to an image.
    """

    def __init__(self, name: str, labels: LabelMap, image_only, template_aware):
        if image_only is None and template_aware is None:
            raise PackError(f"pack {name}: no detector")
        self.labels = labels
        self.image_only = image_only
        self.template_aware = template_aware
        self.uses_template = template_aware is not None
        self.name = f"pack:{name}"

    def _for(self, template: np.ndarray | None):
        if template is not None and self.template_aware is not None:
            return self.template_aware
        return self.image_only if self.image_only is not None else self.template_aware

    @property
    def min_confidence(self) -> float:
        """The threshold for images without a template (or the only detector's)."""
        return self._for(None).min_confidence

    def threshold_for(self, template: np.ndarray | None) -> float:
        return self._for(template).min_confidence

    def detect(self, image: np.ndarray, template: np.ndarray | None = None, min_confidence: float | None = None) -> Detections:
        return self.detect_batch([image], [template], min_confidence)[0]

    def detect_batch(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None],
                     min_confidence: float | None = None) -> list[Detections]:
        """`detect` of each image, in order; the images each detector takes go to it as one batch."""
        found: list = [None] * len(images)
        for detector in (self.template_aware, self.image_only):
            mine = [i for i, template in enumerate(templates) if detector is not None and self._for(template) is detector]
            if not mine:
                continue
            given = [templates[i] if detector is self.template_aware else None for i in mine]
            for index, detections in zip(mine, detect_batch(detector, [images[i] for i in mine], given, min_confidence)):
                found[index] = detections
        return found


def _inside(root: Path, name: str, what: str, manifest_path: Path) -> Path:
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise PackError(f"{manifest_path}: {what} {name!r} is outside the pack folder")
    if not path.is_file():
        raise PackError(f"{manifest_path}: {what} {name!r} not found in {root}")
    return path


def load_pack(path: str | Path) -> ModelPack:
    """The pack in folder `path` (or the folder of `path/pack.yaml`); one clear `PackError` when it is unusable."""
    path = Path(path)
    root = path.parent if path.name == PACK_FILE else path
    manifest_path = root / PACK_FILE
    if not manifest_path.is_file():
        raise PackError(f"{root}: not a model pack (no {PACK_FILE}; `aivd train pack` writes one)")
    try:
        manifest = PackManifest.model_validate(read_yaml_mapping(manifest_path, PackError))
    except ValidationError as error:
        raise PackError(first_problem(error, str(manifest_path))) from None
    if manifest.detectors.image is None and manifest.detectors.template is None:
        raise PackError(f"{manifest_path}: detectors: name an image-only or a template-aware detector (or both)")

    def optional(name: str | None, what: str) -> Path | None:
        return None if name is None else for_runtime(_inside(root, name, what, manifest_path), what)

    def for_runtime(path: Path, what: str) -> Path:
        if runtime_of(path) != manifest.runtime:  # the file decides where it runs (aivd.edge.runtimes)
            raise PackError(f"{manifest_path}: {what} {path.name!r} is a {runtime_of(path)} model, but the pack's runtime is {manifest.runtime}")
        return path

    return ModelPack(
        root, manifest, image=optional(manifest.detectors.image, "detectors.image"),
        template=optional(manifest.detectors.template, "detectors.template"), classifier=optional(manifest.classifier, "classifier"),
        knowledge=_inside(root, manifest.knowledge, "knowledge", manifest_path),
    )


def builtin_pack() -> ModelPack:
    """The shipped DeepPCB models as a pack: template-aware, with an image-only detector where one is shipped."""
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER
    from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE
    from aivd.core import DEEPPCB_CLASSES

    manifest = PackManifest(
        name="deeppcb", labels=list(DEEPPCB_CLASSES.names), domain="pcb",
        detectors=PackDetectors(image=BUILTIN_TEMPLATE_FREE.name if BUILTIN_TEMPLATE_FREE.is_file() else None, template=BUILTIN_MODEL.name),
        classifier=BUILTIN_CLASSIFIER.name, knowledge=DEFAULT_KNOWLEDGE.name, tile_size=640, pixels_per_mm=None,
    )
    return ModelPack(BUILTIN_MODEL.parent, manifest, image=BUILTIN_TEMPLATE_FREE if BUILTIN_TEMPLATE_FREE.is_file() else None,
                     template=BUILTIN_MODEL, classifier=BUILTIN_CLASSIFIER, knowledge=DEFAULT_KNOWLEDGE)


def write_manifest(root: Path, manifest: PackManifest, written_by: str = "aivd train pack") -> Path:
    import yaml

    path = root / PACK_FILE
    header = f"# An aivd model pack (see aivd/packs/pack.py). Written by `{written_by}`; the model files carry their own metadata.\n"
    path.write_text(header + yaml.safe_dump(manifest.model_dump(), sort_keys=False))
    return path

