"""How the held-out images score a model while training: the pairs they give and the rule for a threshold.

DeepPCB keeps its own rules, with which the shipped models were made: the official protocol, and each held-out
pair also with its template a pixel thicker or thinner (`aivd.training.calibration_set`). Any other data set is
scored as its users will score it: COCO mAP@0.5 chooses the epoch, and the best F1 at IoU 0.5 the threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aivd.core import DEEPPCB_CLASSES, Detections, LabelMap
from aivd.data.images import read_pair
from aivd.eval.operating_point import Predictions, best_f1_threshold
from aivd.eval.protocol import best_threshold, evaluate
from aivd.training.calibration_set import PERTURBED_SUFFIX, calibration_pairs

HeldOutPair = tuple[str, np.ndarray, np.ndarray | None, Detections]  # image id, image, template, ground truth


class HeldOutScoring(Protocol):
    @property
    def labels(self) -> LabelMap:
        """The classes the held-out images are scored in."""
        ...

    def pairs(self, samples) -> Iterator[HeldOutPair]:
        """The images thresholds are calibrated on (a sample that cannot be read raises: a calibration on an
        incomplete held-out set would be silently wrong)."""
        ...

    def threshold(self, predictions: Predictions) -> tuple[float, float]:
        """The best score threshold and the figure it reaches."""
        ...

    def select(self, predictions: Predictions) -> dict:
        """An epoch's held-out figures: "score" (higher is better), "threshold" and what else is worth logging."""
        ...

    def ranking(self, predictions: Predictions) -> float:
        """How well the scores rank the detections (the data set's AP)."""
        ...

    def is_copy(self, image_id: str) -> bool:
        """Whether a pair is a perturbed copy (left out of the reported held-out figures)."""
        ...


@dataclass(frozen=True)
class DeepPCBScoring:
    labels: LabelMap = DEEPPCB_CLASSES

    def pairs(self, samples) -> Iterator[HeldOutPair]:
        return calibration_pairs(samples)

    def threshold(self, predictions: Predictions) -> tuple[float, float]:
        return best_threshold(predictions)

    def select(self, predictions: Predictions) -> dict:
        threshold, _ = best_threshold(predictions)
        summary = evaluate([(i, d.with_min_confidence(threshold), g) for i, d, g in predictions]).summary()
        return {"score": summary["fscore"], "threshold": threshold, **summary}

    def ranking(self, predictions: Predictions) -> float:
        return evaluate(predictions).ap

    def is_copy(self, image_id: str) -> bool:
        return image_id.endswith(PERTURBED_SUFFIX)


@dataclass(frozen=True)
class DetectionScoring:
    labels: LabelMap

    def pairs(self, samples) -> Iterator[HeldOutPair]:
        for sample in samples:
            image, template = read_pair(sample.image_path, sample.template_path)
            yield sample.image_id, image, template, sample.ground_truth()

    def threshold(self, predictions: Predictions) -> tuple[float, float]:
        return best_f1_threshold(predictions)

    def select(self, predictions: Predictions) -> dict:
        from aivd.eval.detection_metrics import coco_map

        threshold, f1 = best_f1_threshold(predictions)
        figures = coco_map(predictions, self.labels)
        return {"score": figures["map50"], "threshold": threshold, "map50": figures["map50"], "map50_95": figures["map50_95"],
                "fscore": round(f1, 4)}

    def ranking(self, predictions: Predictions) -> float:
        from aivd.eval.detection_metrics import coco_map

        return coco_map(predictions, self.labels)["map50"]

    def is_copy(self, image_id: str) -> bool:
        return False
