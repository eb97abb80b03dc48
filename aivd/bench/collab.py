"""`aivd bench collab`: what offloading only the hard regions costs in accuracy and saves in bytes.

Every image of the split goes through the edge once (detection, candidates at the cloud's proposal threshold,
crops) and every candidate through the cloud analyzer once; the answers are kept (`collect`). Then each offloading
policy is replayed over them through the live pipeline's own stages (`replay`): `EdgeCloudPipeline.decide` with
the policy as its offloader, then `EdgeCloudPipeline.complete`, whose analyzer answers from what was kept. So a
region sent to the cloud gets the cloud's decision and one kept at the edge the edge's own, by `merge_tiers`, as
`aivd inspect` does; only detection and analysis are not redone. Official DeepPCB scoring throughout.

- `curve`: per filter, the F-score and bytes at upload ratios 0, 0.1, ..., 1 (the cutoff set by quantile over
  the whole split, an oracle placement of the cutoff that only the curve uses);
- `budget`: the online `BudgetController` at a 30% budget, image by image in split order, against sending
  everything (`fscore_all_cloud`); bytes are the JSON request bodies of `POST /v1/analyze` for the regions sent;
- `accuracy_target`: the `MarginalErrorController` for targets 0.9, 0.95 and 0.98 (edge-cloud agreement on the
  regions sent is its only label). Here its feedback comes before the next image's decision; in `aivd inspect`
  the cloud's half of an image runs while the edge works on the next two, so there it arrives two images later;
- `drift` (with a `DriftPhase`): the same controller over the split, shuffled into a stream whose imaging
  degrades from one image on: F before and after, and after on the same images undrifted; with `OnlineSettings`,
  a third pass with the online update of the edge model (`online_pass`), compared with the other two on the
  images after its first promotion, for the pipeline and for the edge alone; with a `review_share`, a simulated
  reviewer labels that share of the stream and the update learns from the reviews too (`SimulatedReviewer`), the
  built-in cloud's classifier as well (`aivd.training.cloud_update`), and the reviews decide which tier the merge
  believes (`aivd.pipeline.trust.TierTrust`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from aivd.cloud.analyzer import Analyses
from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.collab.drift_monitor import TriggerConfig, UpdateTrigger
from aivd.collab.hard_examples import FilterConfig, make_filter
from aivd.collab.offload import EASY, HARD, LabelAll, MarginalErrorController, OffloadDecision, Offloader, SendAll
from aivd.config import ConfigError, OffloadConfig
from aivd.core import Detections, Region
from aivd.data.drift import DriftPhase, drifted
from aivd.data.images import read_pair
from aivd.edge.detector import TemplateDetector
from aivd.edge.hot_swap import HotSwapDetector
from aivd.eval.protocol import evaluate
from aivd.model_store import ModelStore
from aivd.pipeline.engine import CloudAnswers, EdgeCloudPipeline, ImageResult, Proposal, merge_tiers
from aivd.pipeline.factory import build_offloader, served_model
from aivd.pipeline.inspect import inspection_record
from aivd.pipeline.learning import learn_from, regions_sent
from aivd.schema.analysis import DefectAnalysis
from aivd.schema.wire import encode_region

if TYPE_CHECKING:
    from aivd.config import LearnerConfig  # noqa: F401 - named in a dataclass annotation

RATIOS = tuple(round(0.1 * i, 1) for i in range(11))
CURVE_FILTERS = ("threshold", "margin", "cross_entropy", "random")


@dataclass
class ImageOutcome:
    """One image's candidates with both tiers' answers, so that any offloading policy can be replayed."""

    image_id: str
    truth: Detections
    candidates: Detections  # the edge's candidates, with its classes and scores
    edge_threshold: float  # the edge's own threshold for this image
    regions: dict[int, Region]  # per candidate the cloud may be sent (at the proposal threshold): its region
    analyses: dict[int, DefectAnalysis]  # and the cloud's answer for it
    request_bytes: np.ndarray  # per candidate: bytes of its region in an analyze request (0 if it cannot be sent)
    image_bytes: int  # the test image and template files, what a cloud-only pipeline would upload

    @property
    def cloud(self) -> CloudAnswers:
        sent = np.zeros(len(self.candidates), bool)
        sent[list(self.analyses)] = True
        return CloudAnswers.of([self.analyses[i] for i in np.flatnonzero(sent).tolist()], sent, self.candidates.labels)


class RecordedAnalyzer:
    """The analyzer of a replay: answers each region with the analysis recorded for it, and what it cost."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.answers: dict[str, tuple[DefectAnalysis, int]] = {}

    def record(self, outcome: ImageOutcome) -> None:
        for index, region in outcome.regions.items():
            self.answers[region.region_id] = (outcome.analyses[index], int(outcome.request_bytes[index]))

    def analyze(self, regions: Sequence[Region]) -> Analyses:
        answers = [self.answers[region.region_id] for region in regions]
        return Analyses((analysis for analysis, _ in answers), bytes_sent=sum(size for _, size in answers))

    def close(self) -> None:
        pass


def collect(pipeline: EdgeCloudPipeline, samples, drift: Sequence[DriftPhase] = (), seed: int = 0) -> list[ImageOutcome]:
    """Run both tiers over every candidate of every image once, as the (optionally drifting) camera sees it."""
    everything = pipeline.sending_all()
    return [observe(everything, sample, *drifted(index, *read_pair(sample.image_path, sample.template_path), list(drift), seed))
            for index, sample in enumerate(samples)]


def observe(everything: EdgeCloudPipeline, sample, image: np.ndarray, template: np.ndarray | None) -> ImageOutcome:
    """One image through the edge, and each of its candidates through the cloud (`everything` sends them all)."""
    assert everything.analyzer is not None  # the bench measures offloading: its callers refuse a pipeline without a cloud
    proposal = everything.propose(image, template, sample.image_id)
    analyses = everything.analyzer.analyze(proposal.regions) if proposal.regions else []
    sent = np.flatnonzero(proposal.decision.sent).tolist()
    sizes = np.zeros(len(proposal.candidates), np.int64)
    sizes[sent] = [len(encode_region(region).model_dump_json()) for region in proposal.regions]
    files = sum(p.stat().st_size for p in (sample.image_path, sample.template_path) if p is not None)
    return ImageOutcome(sample.image_id, sample.ground_truth(), proposal.candidates, proposal.edge_threshold,
                        dict(zip(sent, proposal.regions)), dict(zip(sent, analyses)), sizes, files)


def replayer(pipeline: EdgeCloudPipeline, offloader: Offloader) -> EdgeCloudPipeline:
    """`pipeline` with `offloader` as its offloading stage and recorded answers as its cloud (and its trust)."""
    assert pipeline.analyzer is not None  # the bench measures offloading: its callers refuse a pipeline without a cloud
    recorded = RecordedAnalyzer(pipeline.analyzer.name)
    return EdgeCloudPipeline(pipeline.detector, recorded, pipeline.proposal_threshold, pipeline.pixels_per_mm, offloader, trust=pipeline.trust)


def replay_one(replaying: EdgeCloudPipeline, outcome: ImageOutcome) -> ImageResult:
    """One image through the live pipeline's offloading decision, cloud half and merge, from its recorded answers."""
    assert isinstance(replaying.analyzer, RecordedAnalyzer)  # `replaying` is built by `replayer`
    replaying.analyzer.record(outcome)
    decision = replaying.decide(outcome.candidates)
    regions = [outcome.regions[i] for i in np.flatnonzero(decision.sent).tolist()]
    return replaying.complete(Proposal(outcome.candidates, decision, regions, outcome.edge_threshold, {}))


def replay(pipeline: EdgeCloudPipeline, outcomes: list[ImageOutcome], offloader: Offloader) -> list[ImageResult]:
    replaying = replayer(pipeline, offloader)
    return [replay_one(replaying, outcome) for outcome in outcomes]


def fixed_pairs(outcomes: list[ImageOutcome], send: bool) -> list[tuple]:
    """(image id, final defects, ground truth) per image with every region sent to the cloud, or none."""
    return [(o.image_id, merge_tiers(o.candidates, _eligible(o) if send else np.zeros(len(o.candidates), bool), o.cloud,
                                     o.edge_threshold), o.truth) for o in outcomes]


def _eligible(outcome: ImageOutcome) -> np.ndarray:
    mask = np.zeros(len(outcome.candidates), bool)
    mask[list(outcome.regions)] = True
    return mask


def figures(outcomes: list[ImageOutcome], results: list[ImageResult]) -> dict:
    """What `aivd inspect` puts in summary.json, and the F-score, for a replay."""
    regions = sum(len(o.candidates) for o in outcomes)
    sent = sum(regions_sent(r) for r in results)
    pairs = [(o.image_id, r.detections, o.truth) for o, r in zip(outcomes, results)]
    return {"offload_ratio": round(sent / max(regions, 1), 4), "fscore": round(evaluate(pairs).fscore, 5),
            "bytes_to_cloud": int(sum(r.bytes_to_cloud for r in results))}


class OracleCutoff:
    """A filter at a cutoff fixed in advance (placed by quantile over the whole split: only the curve uses it)."""

    def __init__(self, filter_name: str, cutoff: float, seed: int) -> None:
        self.filter = make_filter(FilterConfig(name=filter_name, params={"seed": seed} if filter_name == "random" else {}))
        self.cutoff, self.name = cutoff, f"oracle:{filter_name}"

    def decide(self, candidates: Detections) -> OffloadDecision:
        uncertainty = self.filter.uncertainty(candidates) if len(candidates) else np.zeros(0)
        hard = uncertainty > self.cutoff
        return OffloadDecision(hard, [HARD if h else EASY for h in hard], uncertainty, self.cutoff)

    def feedback(self, decision: OffloadDecision, edge_was_right: np.ndarray) -> None:
        pass


def curve(pipeline: EdgeCloudPipeline, outcomes: list[ImageOutcome], filter_name: str, seed: int) -> list[dict]:
    filter_ = make_filter(FilterConfig(name=filter_name, params={"seed": seed} if filter_name == "random" else {}))
    pooled = np.concatenate([filter_.uncertainty(o.candidates[_eligible(o)]) if o.regions else np.zeros(0) for o in outcomes])
    points = []
    for ratio in RATIOS:
        # Above the (1 - ratio) quantile; ratio 0 sends nothing, ratio 1 everything.
        cutoff = np.inf if ratio == 0 else (-np.inf if ratio == 1 else float(np.quantile(pooled, 1 - ratio)))
        points.append(figures(outcomes, replay(pipeline, outcomes, OracleCutoff(filter_name, cutoff, seed))))
    return points


def budget_offloader(filter_name: str, budget: float, base: OffloadConfig | None = None) -> Offloader:
    """The offloading stage `aivd inspect` builds for `base` (its window, warmup and seed) at this budget and filter."""
    base = base or OffloadConfig()
    return build_offloader(base.model_copy(update={"filter": FilterConfig(name=filter_name), "budget": budget, "target_accuracy": None}))


def budget_run(pipeline: EdgeCloudPipeline, outcomes: list[ImageOutcome], filter_name: str, budget: float,
               base: OffloadConfig | None = None) -> dict:
    result = figures(outcomes, replay(pipeline, outcomes, budget_offloader(filter_name, budget, base)))
    everything = figures(outcomes, replay(pipeline, outcomes, SendAll()))
    return {
        "filter": filter_name, "budget": budget, **result,
        "fscore_all_cloud": everything["fscore"],
        "fscore_edge_only": round(evaluate(fixed_pairs(outcomes, send=False)).fscore, 5),
        "fscore_share_of_all_cloud": round(result["fscore"] / everything["fscore"], 4),
        "bytes_ratio_vs_cloud_only": round(result["bytes_to_cloud"] / max(everything["bytes_to_cloud"], 1), 4),
        "bytes_ratio_vs_whole_images": round(result["bytes_to_cloud"] / max(sum(o.image_bytes for o in outcomes), 1), 4),
    }


def accuracy_target_run(pipeline: EdgeCloudPipeline, outcomes: list[ImageOutcome], filter_name: str, target: float, seed: int) -> dict:
    """The `MarginalErrorController` image by image: the cloud's answers on what it is sent are its only labels."""
    controller = build_offloader(OffloadConfig(filter=FilterConfig(name=filter_name), target_accuracy=target, seed=seed))
    assert isinstance(controller, MarginalErrorController)  # what a target_accuracy builds
    return {"filter": filter_name, "target": target, **figures(outcomes, replay(pipeline, outcomes, controller)),
            "final_cutoff": round(controller.filter.cutoff, 4)}


def drift_run(pipeline: EdgeCloudPipeline, samples, clean: list[ImageOutcome], phase: DriftPhase, filter_name: str,
              budget: float, seed: int, update: OnlineSettings | None = None) -> dict:
    """The split, shuffled by `seed` into a stream, drifts from image `phase.start` on; the budget controller runs
    through it. `fscore_after_drift` is compared with the same images undrifted (`fscore_after_without_drift`,
    from `clean`, the split's outcomes already collected). With `update`, a third pass runs the online update of
    the edge model (`online_pass`), and the three passes are compared on the images after its first promotion."""
    if not 0 < phase.start < len(samples):
        raise ValueError(f"the drift must start inside the stream of {len(samples)} images, got {phase.start}")
    order = np.random.default_rng(seed).permutation(len(samples))
    stream = [samples[i] for i in order]
    start = phase.start
    result: dict = {"phase": phase.model_dump(), "filter": filter_name, "budget": budget}
    finals, edge_finals, cloud_finals = {}, {}, {}
    passes = (("without_drift", [clean[i] for i in order]), ("drift", collect(pipeline, stream, [phase], seed)))
    for label, outcomes in passes:
        results = replay(pipeline, outcomes, budget_offloader(filter_name, budget))
        finals[label] = [(o.image_id, r.detections, o.truth) for o, r in zip(outcomes, results)]
        edge_finals[label] = fixed_pairs(outcomes, send=False)
        cloud_finals[label] = fixed_pairs(outcomes, send=True)
        before, after = figures(outcomes[:start], results[:start]), figures(outcomes[start:], results[start:])
        # The images before `start` are the same in both passes, so "before" is written twice with equal values.
        result.update({
            "fscore_before": before["fscore"], "offload_ratio_before": before["offload_ratio"],
            f"fscore_after_{label}": after["fscore"], f"offload_ratio_after_{label}": after["offload_ratio"],
            f"edge_fscore_after_{label}": round(evaluate(edge_finals[label][start:]).fscore, 5),
        })
    result.update({"fscore_after_update": None, "images_to_recover": None})
    if update is None:
        return result
    online = online_pass(pipeline, stream, phase, filter_name, budget, seed, update)
    finals["update"], edge_finals["update"] = online.pop("finals"), online.pop("edge_finals")
    promoted = [u["position"] for u in online["updates"] if u["action"] == "promote" and u["position"] >= start]
    if promoted:
        since = promoted[0] + 1  # the first image an updated model served
        for prefix, passes_finals in (("", finals), ("edge_", edge_finals)):
            scores = {label: round(evaluate(pairs[since:]).fscore, 5) for label, pairs in passes_finals.items()}
            lost = scores["without_drift"] - scores["drift"]
            online.update({
                f"{prefix}fscore_without_drift": scores["without_drift"], f"{prefix}fscore_drift_no_update": scores["drift"],
                f"{prefix}fscore_update": scores["update"],
                f"{prefix}recovered_fraction": round((scores["update"] - scores["drift"]) / lost, 4) if lost > 0 else None,
            })
        # What the edge learns from: the cloud's own F with every region sent, drifted and not. An update distils
        # the cloud into the edge, so what the cloud itself loses under the drift is not there to be taught back.
        online.update({f"fscore_all_cloud_{label}": round(evaluate(pairs[since:]).fscore, 5) for label, pairs in cloud_finals.items()})
        online["compared_from"] = since
        result.update({"fscore_after_update": online["fscore_update"], "edge_fscore_after_update": online["edge_fscore_update"],
                       "images_to_recover": since - start})
    window = update.window
    online["timeline"] = [
        {"from": first, **{label: round(evaluate(pairs[first : first + window]).fscore, 5) for label, pairs in finals.items()},
         **{f"edge_{label}": round(evaluate(pairs[first : first + window]).fscore, 5) for label, pairs in edge_finals.items()}}
        for first in range(0, len(stream), window)
    ]
    result["online"] = online
    return result


@dataclass(frozen=True)
class OnlineSettings:
    workdir: Path  # where the model store and the candidates' files go
    config: LearnerConfig | None = None  # None: the defaults
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    train_window: int = 100
    min_gain: float = 0.0  # the edge gate's, as UpdateConfig.min_gain
    window: int = 50  # images per point of the timeline
    review_share: float = 0.0  # share of the stream a simulated reviewer labels from the ground truth (`SimulatedReviewer`)
    cloud_update: bool = True  # with reviews and the built-in cloud: its classifier learns from them too (CloudLearner)
    tier_trust: bool = True  # with reviews: they decide which tier the merge believes (TierTrust)


class SimulatedReviewer:
    """A reviewer who labels a seeded `share` of the stream from its ground truth, through the console's own path.

    Each inspected image is recorded in a result database in `workdir` (reviews.sqlite) as `aivd inspect` records
    it; a picked image is reviewed right after it is inspected (`ReviewStore.add`, verdict corrected with the true
    boxes, or good when it has none), and the learner reads the reviews back with the live learner's `ReviewFeed`.
    The picked images are written as the camera saw them (PNG, lossless) into workdir/frames, which their records
    name, so that the feed reads the drifted pixels; the other records keep their source files' paths, which nothing
    reads.
    """

    def __init__(self, workdir: Path, stream_length: int, share: float, seed: int, pipeline: EdgeCloudPipeline) -> None:
        from aivd.review.learning import ReviewFeed
        from aivd.review.store import ReviewStore
        from aivd.store import ResultStore

        if not 0 < share <= 1:
            raise ValueError(f"the review share must be in (0, 1], got {share}")
        # A stream of its own ([seed, 1]), so that the picks do not shift the drift's noise or the random filter.
        picks = np.random.default_rng([seed, 1]).choice(stream_length, round(share * stream_length), replace=False)
        self.picked = set(picks.tolist())
        self.frames = workdir / "frames"
        self.frames.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{workdir / 'reviews.sqlite'}"
        self.results, self.reviews, self.feed = ResultStore(url), ReviewStore(url), ReviewFeed(url, pipeline.labels, pipeline)
        self.run_id = self.results.start_run("aivd bench collab --review-share", {"classes": list(pipeline.labels.names)})

    def inspected(self, position: int, sample, image: np.ndarray, template: np.ndarray | None, pipeline: EdgeCloudPipeline,
                  result: ImageResult) -> None:
        """Record one inspected image and, when it is a picked one, review it."""
        picked = position in self.picked
        image_path, template_path = sample.image_path, sample.template_path
        if picked:
            image_path = self.frames / f"{sample.image_id}_test.png"
            cv2.imwrite(str(image_path), image)
            if template is not None:
                template_path = self.frames / f"{sample.image_id}_temp.png"
                cv2.imwrite(str(template_path), template)
        record = inspection_record(str(image_path), sample.image_id, str(template_path) if template_path else None, pipeline, result, 0.0)
        row_id = self.results.add(self.run_id, record)
        if picked:
            truth = sample.ground_truth()
            labels = [{"bbox": [float(v) for v in box], "defect_type": name} for box, name in zip(truth.xyxy, truth.class_names)]
            self.reviews.add(row_id, "simulated", "corrected" if labels else "good", labels)

    def close(self) -> None:
        for store in (self.feed, self.reviews, self.results):
            store.close()


def online_pass(pipeline: EdgeCloudPipeline, stream, phase: DriftPhase, filter_name: str, budget: float, seed: int,
                settings: OnlineSettings) -> dict:
    """The drifting stream through an edge that follows a model store and an `OnlineUpdater` that feeds it.

    Each image is seen by the model the store serves at that moment (a `HotSwapDetector`); an update runs
    synchronously when the trigger fires, so `images_to_recover` counts images, not seconds (each update's
    `seconds` says how long it took). Validation images send every region to the cloud; they count in the ratio.
    """
    from aivd.config import LearnerConfig
    from aivd.training.online_update import OnlineUpdater  # torch: only for this pass

    detector, _ = served_model(pipeline.detector)  # the pack's template-aware model, the one an update retrains
    if not isinstance(detector, TemplateDetector):  # the store is seeded with its file
        raise ConfigError(f"the online update needs an edge that is one aivd detector file (edge.model), not {detector.name}")
    store = ModelStore(settings.workdir / "models")
    store.promote(store.publish(detector.path, [detector.refiner_path] if detector.refiner_path else [], metrics={"source": "shipped"}))
    edge = HotSwapDetector(store, poll_s=0.0)
    trust = None
    if settings.review_share and settings.tier_trust:
        from aivd.pipeline.trust import TierTrust

        trust = TierTrust()
    live = EdgeCloudPipeline(edge, pipeline.analyzer, pipeline.proposal_threshold, pipeline.pixels_per_mm, trust=trust)
    everything = live.sending_all()
    config = settings.config or LearnerConfig()
    cloud, served_classifier = None, None
    if settings.review_share and settings.cloud_update and isinstance(pipeline.analyzer, BuiltinAnalyzer):
        from aivd.training.cloud_update import CloudLearner

        served_classifier = (pipeline.analyzer, pipeline.analyzer.classifier.path)  # served again after the pass
        cloud = CloudLearner(ModelStore(settings.workdir / "cloud-models"), pipeline.analyzer, settings.workdir, config)
    updater = OnlineUpdater(store, settings.workdir, config, trigger=UpdateTrigger(settings.trigger),
                            train_window=settings.train_window, min_gain=settings.min_gain, cloud=cloud)
    replaying = replayer(live, LabelAll(budget_offloader(filter_name, budget), updater.wants_full_labels))
    reviewer = None
    if settings.review_share:
        reviewer = SimulatedReviewer(settings.workdir, len(stream), settings.review_share, seed, live)
    finals, edge_finals, sent_regions, regions, served, overruled = [], [], 0, 0, [], 0
    try:
        for position, sample in enumerate(stream):
            image, template = drifted(position, *read_pair(sample.image_path, sample.template_path), [phase], seed)
            outcome = observe(everything, sample, image, template)
            result = replay_one(replaying, outcome)
            finals.append((outcome.image_id, result.detections, outcome.truth))
            overruled += result.cloud_labels is not None
            edge_finals.append(fixed_pairs([outcome], send=False)[0])
            sent_regions, regions = sent_regions + regions_sent(result), regions + len(outcome.candidates)
            served.append(edge.version)
            learn_from(updater, outcome.image_id, image, template, result, position)
            if reviewer is not None:
                reviewer.inspected(position, sample, image, template, live, result)
                reviewer.feed.teach(updater, position)
    finally:
        if reviewer is not None:
            reviewer.close()
        if served_classifier is not None:
            analyzer, classifier = served_classifier
            analyzer.swap_classifier(classifier)
    reviews = None if reviewer is None else {"share": settings.review_share, "images": len(reviewer.picked),
                                             "after_drift": sum(p >= phase.start for p in reviewer.picked),
                                             "trust": None if trust is None else {**trust.summary(), "edge_decided_images": overruled}}
    return {"updates": updater.updates, "offload_ratio": round(sent_regions / max(regions, 1), 4), "reviews": reviews,
            "versions_served": {v: served.count(v) for v in dict.fromkeys(served)}, "finals": finals, "edge_finals": edge_finals}


def bench_collab(pipeline: EdgeCloudPipeline, samples, budget: float = 0.3, budget_filter: str = "threshold", seed: int = 0,
                 drift: DriftPhase | None = None, update: OnlineSettings | None = None, offload: OffloadConfig | None = None) -> dict:
    """Every figure of the bench; `offload` is the config whose window and warmup the budget run's stage takes."""
    outcomes = collect(pipeline, samples)
    curves = {name: curve(pipeline, outcomes, name, seed) for name in dict.fromkeys([*CURVE_FILTERS, budget_filter])}
    return {
        "images": len(outcomes), "regions": int(sum(len(o.candidates) for o in outcomes)),
        "edge_threshold": pipeline.edge_threshold, "proposal_threshold": pipeline.proposal_threshold,
        "curve": curves[budget_filter], "curves": curves,
        "budget": budget_run(pipeline, outcomes, budget_filter, budget, offload),
        "accuracy_target": [accuracy_target_run(pipeline, outcomes, budget_filter, target, seed) for target in (0.9, 0.95, 0.98)],
        "drift": None if drift is None else drift_run(pipeline, samples, outcomes, drift, budget_filter, budget, seed, update),
    }
