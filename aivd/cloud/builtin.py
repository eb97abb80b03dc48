"""The built-in cloud backend: an ONNX crop classifier (`aivd train classifier`) plus pixel measurements and
the knowledge base's text.

The classifier answers for its defect classes (the shipped one: DeepPCB's six) and `no-defect`; a region's score
is the classifier's probability of its most likely defect class blended with the edge's score of the box,
edge^w x classifier^(1 - w), and the region is a defect when that score reaches the score threshold. The weight
w, the score threshold and the edge proposal threshold are calibrated together on held-out data and stored in
the model's metadata. Why blend: the classifier alone is too sure to rank defects (most it keeps score >= 0.99),
while the edge's score still orders them; w = 0 is the classifier alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aivd.cloud.analyzer import Analyses, AnalyzerError
from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeBase
from aivd.cloud.measure import measure
from aivd.core import Region
from aivd.edge.crops import crop_windows
from aivd.edge.runtimes import ModelError, open_session

BUILTIN_CLASSIFIER = Path(__file__).parent / "models" / "deeppcb_classifier.onnx"
DEFAULT_PROPOSAL_THRESHOLD = 0.05
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_EDGE_WEIGHT = 0.0  # a model calibrated before the blend: its thresholds are for the classifier alone


class CropClassifier:
    """The model alone (ONNX, or OpenVINO from `aivd export`): regions in, class probabilities out."""

    def __init__(self, path: str | Path = BUILTIN_CLASSIFIER, threads: int = 2):
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        meta = self.session.metadata
        if meta.get("aivd_model") != "crop-classifier":
            raise ModelError(f"{self.path}: not an aivd crop classifier (metadata aivd_model missing)")
        labels = json.loads(meta["labels"])
        self.reject_label = meta["reject_label"]
        self.class_names = [name for name in labels if name != self.reject_label]
        self.reject_index = labels.index(self.reject_label)
        self.crop_size, self.context, self.min_side = int(meta["crop_size"]), float(meta["context"]), int(meta["min_side"])
        self.proposal_threshold = float(meta.get("proposal_threshold", DEFAULT_PROPOSAL_THRESHOLD))
        self.score_threshold = float(meta.get("score_threshold", DEFAULT_SCORE_THRESHOLD))
        self.edge_weight = float(meta.get("edge_weight", DEFAULT_EDGE_WEIGHT))

    def probabilities(self, regions: Sequence[Region]) -> np.ndarray:
        """(N, classes + 1) probabilities, the reject class at `reject_index`."""
        if not regions:
            return np.zeros((0, len(self.class_names) + 1), np.float32)
        crops = np.concatenate([
            crop_windows(r.image, r.template, np.array([r.box]), self.crop_size, self.context, self.min_side) for r in regions
        ])
        return self.session.run(None, {"crops": crops})[0]

    def decide(self, probs: np.ndarray, edge_confidence: np.ndarray, threshold: float | None = None,
               edge_weight: float | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Per region: the most likely defect class, its score (blended with the edge's `edge_confidence`, see the
        module doc), and whether it is a defect."""
        defect_probs = np.delete(probs, self.reject_index, axis=1)
        best = defect_probs.argmax(axis=1)
        weight = self.edge_weight if edge_weight is None else edge_weight
        confidence = np.asarray(edge_confidence, np.float32) ** weight * defect_probs[np.arange(len(best)), best] ** (1 - weight)
        return [self.class_names[i] for i in best], confidence, confidence >= (self.score_threshold if threshold is None else threshold)


def edge_scores(regions: Sequence[Region]) -> np.ndarray:
    return np.array([region.edge_confidence for region in regions], np.float32)


class BuiltinAnalyzer:
    """The crop classifier's verdict and class, the knowledge base's text and severity, aivd's measurements.
    `pcb_facts` adds the copper and conductor measurements (for PCB domains, where regions have templates)."""

    name = "builtin"

    def __init__(
        self, model: str | Path = BUILTIN_CLASSIFIER, knowledge: str | Path = DEFAULT_KNOWLEDGE, threads: int = 2, pcb_facts: bool = True,
    ):
        self.classifier = CropClassifier(model, threads)
        self.threads = threads
        self.knowledge = KnowledgeBase.load(knowledge)
        self.pcb_facts = pcb_facts
        missing = set(self.classifier.class_names) - set(self.knowledge.classes)
        if missing:
            raise ModelError(f"{model}: classes {sorted(missing)} are not in the knowledge base {knowledge}")
        self.proposal_threshold = self.classifier.proposal_threshold

    def swap_classifier(self, path: str | Path) -> Path:
        """Serve the classifier at `path` from the next call of `analyze` (an online update's version); returns the
        path of the one it replaces. Refused, keeping the served one, when its classes differ."""
        classifier = CropClassifier(path, self.threads)
        if classifier.class_names != self.classifier.class_names:
            raise ModelError(f"{path}: classes {classifier.class_names} differ from the served classifier's {self.classifier.class_names}")
        previous, self.classifier = self.classifier.path, classifier  # one assignment: a call in flight keeps its own
        return previous

    def analyze(self, regions: Sequence[Region]) -> Analyses:
        classifier = self.classifier  # once: a swap during the call does not mix two models' answers
        try:
            probs = classifier.probabilities(regions)
        except Exception as error:  # onnxruntime raises private types; a bad batch must not end the caller's run
            raise AnalyzerError(f"classifier failed: {type(error).__name__}: {error}") from None
        names, confidence, is_defect = classifier.decide(probs, edge_scores(regions))
        return Analyses(
            self.knowledge.analysis(name, round(float(score), 4), bool(defect), measure(region, pcb_facts=self.pcb_facts), region.edge_class)
            for region, name, score, defect in zip(regions, names, confidence, is_defect)
        )

    def close(self) -> None:
        pass
