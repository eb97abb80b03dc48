"""One image through the edge, the offloading stage and, for the regions it sends, the cloud tier.

The edge proposes every candidate down to the (lower) proposal threshold. The offloading stage
(`aivd.collab.offload`) decides per candidate whether the cloud sees it: every one (`SendAll`), none
(`KeepAtEdge`, which is what an edge-only pipeline is), or the hard ones within a budget or an accuracy target.
The cloud decides whether each region it is sent is a defect, of which class, and writes the record; the edge
decides the rest at its own calibrated threshold. `merge_tiers` is the one rule that joins the two, used by the
live path and by `aivd bench collab`'s replay alike. With a `trust` (`aivd.pipeline.trust.TierTrust`) whose reviews show
the cloud measurably worse than the edge, the edge decides the sent regions too; the cloud's answers then still
drive the offloader's feedback and are what the online learner is taught (`ImageResult.cloud_labels`). If the cloud fails, the image keeps the edge's own decisions
on every candidate, marked with `cloud_error`, so an unreachable cloud never stops a line.

`EdgeCloudPipeline` is also a `Detector` (its `detect` returns the final boxes), so evaluation and benchmarks
measure the full pipeline exactly as they measure the edge alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aivd.cloud.analyzer import Analyses, Analyzer, AnalyzerError, RemoteAnalyzer
from aivd.collab.offload import KeepAtEdge, OffloadDecision, Offloader, SendAll
from aivd.core import Detections, LabelMap, cut_regions
from aivd.edge.detector import Detector, detect_batch
from aivd.schema.analysis import DefectAnalysis
from aivd.schema.records import DefectRecord, OffloadNote


@dataclass
class Proposal:
    """What the edge hands the cloud for one image."""

    candidates: Detections  # at the proposal threshold, in the detector's order
    decision: OffloadDecision  # per candidate: sent to the cloud or not, and why
    regions: list  # one region per sent candidate, in order
    edge_threshold: float  # the edge's own threshold for this image (a swapped model brings its own)
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
    edge_agrees: np.ndarray | None = None  # per sent region: was the edge's own decision the cloud's (None: no answer)
    # When the trust overruled the cloud: the defects and the rejected boxes the cloud's answers gave (None otherwise)
    cloud_labels: tuple[Detections, np.ndarray] | None = None


@dataclass(frozen=True)
class CloudAnswers:
    """The cloud's answer per candidate of an image (only the sent candidates' entries are read)."""

    keeps: np.ndarray  # bool: the cloud called the region a defect of a known class
    class_id: np.ndarray
    confidence: np.ndarray

    @classmethod
    def of(cls, analyses: list[DefectAnalysis], sent: np.ndarray, labels: LabelMap) -> CloudAnswers:
        keeps, class_id, confidence = np.zeros(len(sent), bool), np.zeros(len(sent), np.int64), np.zeros(len(sent), np.float32)
        for index, analysis in zip(np.flatnonzero(sent), analyses):
            if analysis.is_defect and analysis.defect_type in labels.names:
                keeps[index], class_id[index], confidence[index] = True, labels.id(analysis.defect_type), analysis.confidence
        return cls(keeps, class_id, confidence)


def merge_tiers(candidates: Detections, sent: np.ndarray, cloud: CloudAnswers, edge_threshold: float) -> Detections:
    """The image's final defects: a sent candidate is what the cloud says, one kept at the edge a defect when its
    score reaches the edge's threshold. Sorted by score (stable); `data["candidate"]` indexes `candidates` and
    `data["sent"]` says which tier decided."""
    from_cloud = sent & cloud.keeps
    keep = np.flatnonzero((~sent & (candidates.confidence >= edge_threshold)) | from_cloud)
    scores = np.where(from_cloud, cloud.confidence, candidates.confidence)[keep]
    order = keep[np.argsort(-scores, kind="stable")]
    return Detections(candidates.xyxy[order], np.where(from_cloud, cloud.confidence, candidates.confidence)[order],
                      np.where(from_cloud, cloud.class_id, candidates.class_id)[order], candidates.labels,
                      data={"candidate": order, "sent": sent[order]})


def edge_agrees(candidates: Detections, cloud: CloudAnswers, edge_threshold: float) -> np.ndarray:
    """Per candidate: would the edge's own decision (keep as its class, or drop) be the cloud's?"""
    edge_keeps = candidates.confidence >= edge_threshold
    return np.where(edge_keeps, cloud.keeps & (candidates.class_id == cloud.class_id), ~cloud.keeps)


def _note(decision: OffloadDecision, index: int) -> OffloadNote:
    score = None if decision.uncertainty is None else float(decision.uncertainty[index])
    uncertainty = None if score is None or np.isnan(score) else round(score, 4)
    cutoff = None if decision.cutoff is None else round(float(decision.cutoff), 4)
    return OffloadNote(sent=bool(decision.sent[index]), reason=decision.reasons[index], uncertainty=uncertainty, cutoff=cutoff)


def _edge_record(candidates: Detections, index: int, note: OffloadNote) -> DefectRecord:
    return DefectRecord(bbox=tuple(round(float(v), 1) for v in candidates.xyxy[index]), defect_type=candidates.class_names[index],
                        confidence=round(float(candidates.confidence[index]), 4), source="edge", offload=note)


def _cloud_record(box, analysis: DefectAnalysis, edge_class: str, edge_confidence: float, source: str, note: OffloadNote) -> DefectRecord:
    return DefectRecord(
        bbox=tuple(round(float(v), 1) for v in box), defect_type=analysis.defect_type, confidence=analysis.confidence,
        source=source, edge_type=edge_class, edge_confidence=round(edge_confidence, 4), severity=analysis.severity,
        likely_causes=analysis.likely_causes, description=analysis.description,
        recommended_action=analysis.recommended_action, measurements=analysis.measurements, offload=note,
    )


@dataclass(frozen=True)
class Batching:
    """How many queued images `inspect_tasks` hands the edge and the cloud at once (PipelineConfig's edge.batch,
    edge.batch_wait_ms and cloud.batch). At 1, each image goes alone; a wait of 0 takes only the images already
    decoded, so that batching never holds an image back for others."""

    edge: int = 1
    edge_wait_ms: float = 0.0
    cloud: int = 1


class EdgeCloudPipeline:
    """edge -> offloading decision -> cloud -> `merge_tiers`, as one object (Sedna's JointInference).

    `offloader` defaults to sending every candidate when there is an analyzer; without one, every candidate stays
    at the edge. `propose` (the edge's half) must be called in input order, since a budget's state moves image by
    image; `complete` (the cloud's half) may run on another thread, and also in input order."""

    def __init__(self, detector: Detector, analyzer: Analyzer | None = None, proposal_threshold: float | None = None,
                 pixels_per_mm: float | None = None, offloader: Offloader | None = None, *,
                 batching: Batching = Batching(), trust=None):
        self.detector = detector
        self.batching = batching
        self.analyzer = analyzer
        self.labels: LabelMap = detector.labels
        self.uses_template = detector.uses_template
        default_proposal = getattr(analyzer, "proposal_threshold", self.edge_threshold)
        self.proposal_threshold = default_proposal if proposal_threshold is None else proposal_threshold
        self.pixels_per_mm = pixels_per_mm
        self.offloader = KeepAtEdge() if analyzer is None else (offloader or SendAll())
        self.trust = trust  # a TierTrust, or None: the cloud decides what it is sent

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
        """The edge's half: the candidates, which of them go to the cloud, and their regions."""
        return self.propose_batch([(image, template, image_id)])[0]

    def propose_batch(self, images: Sequence[tuple[np.ndarray, np.ndarray | None, str]]) -> list[Proposal]:
        """`propose` of each (image, template, image id), in order, the detector running the images with the same
        threshold as one batch. Each image's detect time is its share of its batch's."""
        templates = [template if self.detector.uses_template else None for _, template, _ in images]
        edge_thresholds = [self.edge_threshold_for(template) for template in templates]
        # Edge only, the detector applies its own threshold; with a cloud, it proposes down to the proposal threshold.
        thresholds = [None if self.analyzer is None else min(self.proposal_threshold, t) for t in edge_thresholds]
        found: list = [None] * len(images)
        detect_ms: list = [None] * len(images)
        for threshold in dict.fromkeys(thresholds):
            same = [i for i, t in enumerate(thresholds) if t == threshold]
            started = time.perf_counter()
            batch = detect_batch(self.detector, [images[i][0] for i in same], [templates[i] for i in same], threshold)
            share = round(_ms_since(started) / len(same), 2)
            for index, candidates in zip(same, batch):
                found[index], detect_ms[index] = candidates, share
        proposals = []
        for (image, _, image_id), template, candidates, edge_threshold, ms in zip(images, templates, found, edge_thresholds, detect_ms):
            timings = {"detect": ms}
            if self.analyzer is None:
                proposals.append(Proposal(candidates, self.offloader.decide(candidates), [], edge_threshold, timings))
                continue
            decision = self.decide(candidates)  # in input order: a budget's state moves image by image
            started = time.perf_counter()
            regions = cut_regions(image, template, candidates[decision.sent], image_id, self.pixels_per_mm)
            timings["crop"] = _ms_since(started)
            proposals.append(Proposal(candidates, decision, regions, edge_threshold, timings))
        return proposals

    def sending_all(self) -> EdgeCloudPipeline:
        """The same tiers with every candidate at the proposal threshold sent to the cloud (and no trust): what
        measures both tiers on an image without moving this pipeline's offloading state."""
        return EdgeCloudPipeline(self.detector, self.analyzer, self.proposal_threshold, self.pixels_per_mm, SendAll())

    def decide(self, candidates: Detections) -> OffloadDecision:
        """The offloading stage's decision over an image's candidates; only those at the proposal threshold may go."""
        eligible = candidates.confidence >= self.proposal_threshold
        return _widened(self.offloader.decide(candidates[eligible]), eligible)

    def edge_threshold_for(self, template: np.ndarray | None) -> float:
        """A pack's edge has a detector with its own threshold for images with and without a template."""
        threshold_for = getattr(self.detector, "threshold_for", None)
        return self.edge_threshold if threshold_for is None else threshold_for(template)

    def complete(self, proposal: Proposal) -> ImageResult:
        """The cloud's half: analysis of the sent regions, the merge, the records, and the stage's feedback."""
        return self.complete_batch([proposal])[0]

    def complete_batch(self, proposals: Sequence[Proposal]) -> list[ImageResult]:
        """`complete` of each proposal, in order. An analyzer in this process analyses the regions of all of them in
        one call (one classifier run), each image's analyze time being its share, by regions, of the call's; a
        remote one is called per image, so that each image's traffic and failure are its own. If the joint call
        fails, each image is analysed alone, so that a failure is the failing image's."""
        sent = [proposal for proposal in proposals if proposal.regions]
        answers: dict[int, tuple[Analyses, str | None, float]] = {}
        if len(sent) > 1 and not isinstance(self.analyzer, RemoteAnalyzer):
            analyses, error, ms = self._analyze([region for proposal in sent for region in proposal.regions])
            if error is None:
                counts = [len(proposal.regions) for proposal in sent]
                for proposal, start, count in zip(sent, np.cumsum([0, *counts[:-1]]), counts):
                    answers[id(proposal)] = Analyses(analyses[start : start + count]), None, round(ms * count / len(analyses), 2)
        for proposal in sent:
            if id(proposal) not in answers:
                answers[id(proposal)] = self._analyze(proposal.regions)
        return [self._completed(proposal, *answers.get(id(proposal), (Analyses(), None, None))) for proposal in proposals]

    def _analyze(self, regions: list) -> tuple[Analyses, str | None, float]:
        """The analyzer's answers for `regions` (none, and why, when it fails) and the time it took (ms)."""
        assert self.analyzer is not None  # without one the offloader is KeepAtEdge, and propose cuts no region
        started = time.perf_counter()
        try:
            analyses = self.analyzer.analyze(regions)
            if len(analyses) != len(regions):  # zip would silently drop regions
                raise AnalyzerError(f"{self.analyzer.name} answered {len(analyses)} analyses for {len(regions)} regions")
            return analyses, None, _ms_since(started)
        except AnalyzerError as error:
            return Analyses((), error.bytes_sent, error.bytes_received), str(error), _ms_since(started)

    def _completed(self, proposal: Proposal, analyses: Analyses, cloud_error: str | None, analyze_ms: float | None) -> ImageResult:
        """The merge, the records and the offloading stage's feedback, given the cloud's answers for the image."""
        timings = dict(proposal.timings_ms)
        if analyze_ms is not None:
            timings["analyze"] = analyze_ms
        candidates, decision = proposal.candidates, proposal.decision
        # Without the cloud's answers, the edge decides every candidate, the sent ones included.
        decided_by_cloud = decision.sent if cloud_error is None else np.zeros(len(candidates), bool)
        cloud = CloudAnswers.of(analyses, decided_by_cloud, self.labels)
        final = merge_tiers(candidates, decided_by_cloud, cloud, proposal.edge_threshold)
        cloud_labels = None
        if decided_by_cloud.any() and self.trust is not None and not self.trust.cloud_decides:
            cloud_labels = (final, candidates.xyxy[decided_by_cloud & ~cloud.keeps])
            decided_by_cloud = np.zeros(len(candidates), bool)
            final = merge_tiers(candidates, decided_by_cloud, cloud, proposal.edge_threshold)
        defects, rejected = self._records(proposal, decided_by_cloud, analyses, final)
        agrees = None
        if cloud_error is None and decision.sent.any():
            agrees = edge_agrees(candidates, cloud, proposal.edge_threshold)[decision.sent]
            self.offloader.feedback(decision, agrees)
        return ImageResult(final, defects, rejected, timings, cloud_error, analyses.bytes_sent, analyses.bytes_received, agrees,
                           cloud_labels)

    def _records(self, proposal: Proposal, by_cloud: np.ndarray, analyses: Analyses, final: Detections) -> tuple[list, list]:
        """A record per candidate: the final defects in `final`'s order, and the rest as rejected, each with its
        offloading note."""
        candidates, decision = proposal.candidates, proposal.decision
        analysis_of = dict(zip(np.flatnonzero(by_cloud).tolist(), analyses))
        region_of = dict(zip(np.flatnonzero(decision.sent).tolist(), proposal.regions))
        source = f"cloud:{self.analyzer.name}" if self.analyzer is not None else "edge"

        def record(index: int) -> DefectRecord:
            note = _note(decision, index)
            if index in analysis_of:
                region = region_of[index]
                return _cloud_record(candidates.xyxy[index], analysis_of[index], region.edge_class, region.edge_confidence, source, note)
            return _edge_record(candidates, index, note)

        kept = final.data["candidate"].tolist()
        kept_set = set(kept)
        return [record(i) for i in kept], [record(i) for i in range(len(candidates)) if i not in kept_set]


def _widened(decision: OffloadDecision, eligible: np.ndarray) -> OffloadDecision:
    """`decision`, made over the eligible candidates, over all of them: the others stay at the edge."""
    if eligible.all():
        return decision
    sent, reasons = np.zeros(len(eligible), bool), [BELOW_PROPOSAL] * len(eligible)
    for position, index in enumerate(np.flatnonzero(eligible)):
        sent[index], reasons[index] = decision.sent[position], decision.reasons[position]
    uncertainty = None
    if decision.uncertainty is not None:
        uncertainty = np.full(len(eligible), np.nan)
        uncertainty[eligible] = decision.uncertainty
    return OffloadDecision(sent, reasons, uncertainty, decision.cutoff)


BELOW_PROPOSAL = "below_proposal_threshold"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
