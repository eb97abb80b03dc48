"""One image through the edge and, when configured, the cloud tier.

Edge only: the detector's boxes at its calibrated threshold are the defects. With a cloud analyzer: the edge
proposes every candidate down to the (lower) proposal threshold, crops a region around each, and the cloud
decides per region whether it is a defect, of which class, and writes the record. If the cloud fails, the
image keeps the edge's own decisions, marked with `cloud_error`, so an unreachable cloud never stops a line.

`EdgeCloudPipeline` is also a `Detector` (its `detect` returns the final boxes), so evaluation and benchmarks
measure the full pipeline exactly as they measure the edge alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from aivd.cloud.analyzer import Analyzer, AnalyzerError
from aivd.core import Detections, LabelMap, cut_regions
from aivd.edge.detector import Detector
from aivd.schema.analysis import DefectAnalysis
from aivd.schema.records import DefectRecord


@dataclass
class Proposal:
    """What the edge hands the cloud for one image."""

    edge: Detections  # the edge's own decisions at its threshold: the fallback if the cloud fails
    proposals: Detections  # candidates at the proposal threshold, one region each
    regions: list
    timings_ms: dict[str, float]


@dataclass
class ImageResult:
    detections: Detections  # the final defects, for the official result files and annotated images
    defects: list[DefectRecord]
    rejected: list[DefectRecord] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cloud_error: str | None = None
    bytes_to_cloud: int = 0
    bytes_from_cloud: int = 0


def _edge_records(detections: Detections) -> list[DefectRecord]:
    return [DefectRecord(**d, source="edge") for d in detections.to_records()]


def _cloud_record(box, analysis: DefectAnalysis, edge_class: str, edge_confidence: float, source: str) -> DefectRecord:
    return DefectRecord(
        bbox=tuple(round(float(v), 1) for v in box), defect_type=analysis.defect_type, confidence=analysis.confidence,
        source=source, edge_type=edge_class, edge_confidence=round(edge_confidence, 4), severity=analysis.severity,
        likely_causes=analysis.likely_causes, description=analysis.description,
        recommended_action=analysis.recommended_action, measurements=analysis.measurements,
    )


class EdgeCloudPipeline:
    def __init__(self, detector: Detector, analyzer: Analyzer | None = None, proposal_threshold: float | None = None,
                 pixels_per_mm: float | None = None):
        self.detector = detector
        self.analyzer = analyzer
        self.labels: LabelMap = detector.labels
        self.uses_template = detector.uses_template
        default_proposal = getattr(analyzer, "proposal_threshold", self.edge_threshold)
        self.proposal_threshold = default_proposal if proposal_threshold is None else proposal_threshold
        self.pixels_per_mm = pixels_per_mm

    @property
    def name(self) -> str:
        detector = self.detector.name  # names the version a hot-swapping detector serves now
        return detector if self.analyzer is None else f"{detector}+cloud:{self.analyzer.name}"

    @property
    def edge_threshold(self) -> float:
        """The score from which the edge keeps a defect itself; read each time, since a hot-swapped model brings its own."""
        return self.detector.min_confidence

    @property
    def min_confidence(self) -> float:
        return self.edge_threshold

    def detect(self, image: np.ndarray, template: np.ndarray | None = None, min_confidence: float | None = None) -> Detections:
        """The final defects; `min_confidence`, if given, filters them by their final (cloud or edge) score."""
        found = self.run(image, template, "image").detections
        return found if min_confidence is None else found.with_min_confidence(min_confidence)

    def run(self, image: np.ndarray, template: np.ndarray | None, image_id: str) -> ImageResult:
        return self.complete(self.propose(image, template, image_id))

    def propose(self, image: np.ndarray, template: np.ndarray | None, image_id: str) -> Proposal:
        """The edge's half: detection, and the regions to send to the cloud."""
        template = template if self.detector.uses_template else None
        started = time.perf_counter()
        if self.analyzer is None:
            edge = self.detector.detect(image, template)
            return Proposal(edge, edge, [], {"detect": _ms_since(started)})
        edge_threshold = self.edge_threshold_for(template)
        candidates = self.detector.detect(image, template, min(self.proposal_threshold, edge_threshold))
        timings = {"detect": _ms_since(started)}
        started = time.perf_counter()
        proposals = candidates.with_min_confidence(self.proposal_threshold)
        regions = cut_regions(image, template, proposals, image_id, self.pixels_per_mm)
        timings["crop"] = _ms_since(started)
        return Proposal(candidates.with_min_confidence(edge_threshold), proposals, regions, timings)

    def edge_threshold_for(self, template: np.ndarray | None) -> float:
        """A pack's edge has a detector with its own threshold for images with and without a template."""
        threshold_for = getattr(self.detector, "threshold_for", None)
        return self.edge_threshold if threshold_for is None else threshold_for(template)

    def complete(self, proposal: Proposal) -> ImageResult:
        """The cloud's half (safe to run on another thread than `propose`): analysis and the final records."""
        if self.analyzer is None:
            return ImageResult(proposal.edge, _edge_records(proposal.edge), timings_ms=proposal.timings_ms)
        timings = dict(proposal.timings_ms)
        started = time.perf_counter()
        try:
            analyses = self.analyzer.analyze(proposal.regions) if proposal.regions else []
            if len(analyses) != len(proposal.regions):  # zip would silently drop regions
                raise AnalyzerError(f"{self.analyzer.name} answered {len(analyses)} analyses for {len(proposal.regions)} regions")
        except AnalyzerError as error:
            timings["analyze"] = _ms_since(started)
            return ImageResult(proposal.edge, _edge_records(proposal.edge), timings_ms=timings, cloud_error=str(error), **self._bytes())
        timings["analyze"] = _ms_since(started)
        return self._combine(proposal.proposals, proposal.regions, analyses, timings)

    def _bytes(self) -> dict:
        return {"bytes_to_cloud": getattr(self.analyzer, "last_bytes_sent", 0), "bytes_from_cloud": getattr(self.analyzer, "last_bytes_received", 0)}

    def _combine(self, proposals: Detections, regions, analyses: list[DefectAnalysis], timings: dict) -> ImageResult:
        source = f"cloud:{self.analyzer.name}"
        defects, rejected, keep, class_ids, scores = [], [], [], [], []
        for index, (region, analysis) in enumerate(zip(regions, analyses)):
            record = _cloud_record(proposals.xyxy[index], analysis, region.edge_class, region.edge_confidence, source)
            if analysis.is_defect and analysis.defect_type in self.labels.names:
                defects.append(record)
                keep.append(index)
                class_ids.append(self.labels.id(analysis.defect_type))
                scores.append(analysis.confidence)
            else:
                rejected.append(record)
        final = Detections(proposals.xyxy[keep], np.array(scores, np.float32), np.array(class_ids, np.int64), self.labels)
        order = np.argsort(-final.confidence, kind="stable")
        return ImageResult(final[order], [defects[i] for i in order], rejected, timings, **self._bytes())


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
