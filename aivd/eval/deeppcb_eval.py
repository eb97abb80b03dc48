"""Evaluating result files or a detector against DeepPCB ground truth, as `aivd eval` does."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.data.dataset import Sample
from aivd.data.deeppcb import DatasetError, load_split, parse_annotation, parse_submission
from aivd.data.images import ImageError, read_pair
from aivd.edge.detector import Detector
from aivd.eval.metrics import confusion_matrix, per_class
from aivd.eval.protocol import ProtocolResult, evaluate


@dataclass
class EvalOutput:
    result: ProtocolResult
    classes: dict
    confusion: dict
    groups: dict

    def to_json(self) -> dict:
        return {**self.result.summary(), "per_class": self.classes, "confusion": self.confusion, "per_group": self.groups}


def per_group(result: ProtocolResult, group_of: dict[str, str]) -> dict[str, dict]:
    """The protocol's figures for each board group (DeepPCB's groupNNNNN folders), from the same pairing."""
    by_group: dict[str, list] = {}
    for match in result.matches:
        by_group.setdefault(group_of.get(match.image_id, "?"), []).append((match.image_id, match.detections, match.ground_truth))
    return {group: evaluate(pairs).summary() for group, pairs in sorted(by_group.items())}


def _read_zip_texts(path: Path) -> dict[str, str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return {Path(name).stem: archive.read(name).decode("utf-8") for name in archive.namelist() if name.endswith(".txt")}
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{path}: cannot read zip ({error})") from None


def ground_truth_from_zip(path: Path) -> dict[str, Detections]:
    """The official evaluation/gt.zip: one `ID.txt` per test image, `x1 y1 x2 y2 class_id` lines (CRLF)."""
    return {image_id: parse_annotation(text, f"{path}:{image_id}.txt") for image_id, text in _read_zip_texts(path).items()}


def ground_truth_from_split(root: Path, split: str) -> tuple[dict[str, Detections], dict[str, Path]]:
    samples = load_split(root, split)
    return {s.image_id: s.ground_truth() for s in samples}, {s.image_id: s.image_path for s in samples}


def detect_samples(
    detector: Detector, samples: Iterable[Sample], use_templates: bool = True, on_error: Callable[[ImageError], None] | None = None
) -> dict[str, Detections]:
    """Run a detector over DeepPCB samples. A pair that cannot be read is reported to `on_error` and left out,
    so it is scored as no detections and its failure shows in the recall."""
    predictions = {}
    for sample in samples:
        try:
            image, template = read_pair(sample.image_path, sample.template_path)
        except ImageError as error:
            if on_error:
                on_error(error)
            continue
        predictions[sample.image_id] = detector.detect(image, template if use_templates and detector.uses_template else None)
    return predictions


def read_results(path: Path) -> dict[str, Detections]:
    """Submission files: a folder of `ID.txt` (an `aivd inspect` output folder's deeppcb/ is found too) or a res.zip."""
    path = Path(path)
    if path.is_file() and path.suffix == ".zip":
        texts = _read_zip_texts(path)
        return {image_id: parse_submission(text, f"{path}:{image_id}.txt") for image_id, text in texts.items()}
    folder = path / "deeppcb" if (path / "deeppcb").is_dir() else path
    if not folder.is_dir():
        raise DatasetError(f"{path}: no result files (expected a folder of ID.txt, an inspect output folder, or res.zip)")
    return {file.stem: parse_submission(file.read_text(), str(file)) for file in sorted(folder.glob("*.txt"))}


def evaluate_results(
    predictions: dict[str, Detections], ground_truth: dict[str, Detections], group_of: dict[str, str] | None = None
) -> EvalOutput:
    """Every ground-truth image is evaluated; one with no result file counts as no detections, as in the official
    script. A result for an image that is not in the ground truth is an error, as there."""
    unknown = sorted(set(predictions) - set(ground_truth))
    if unknown:
        raise DatasetError(f"results for images not in the ground truth: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    empty = Detections.empty(DEEPPCB_CLASSES)
    pairs = [
        (image_id, predictions.get(image_id, empty), truth)
        for image_id, truth in sorted(ground_truth.items())
    ]
    result = evaluate(pairs)
    groups = per_group(result, group_of) if group_of else {}
    return EvalOutput(result, per_class(result, DEEPPCB_CLASSES), confusion_matrix(result, DEEPPCB_CLASSES), groups)
