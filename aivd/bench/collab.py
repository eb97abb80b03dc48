"""`aivd bench collab`: what offloading only the hard regions costs in accuracy and saves in bytes.

Every image of the split goes through the edge once (detection, candidates at the cloud's proposal threshold,
crops) and every candidate through the cloud analyzer once; the answers are kept. Then each offloading policy is
replayed over them: a region sent to the cloud gets the cloud's decision, a region kept at the edge the edge's own
(a defect if its score reaches the edge threshold). Official DeepPCB scoring throughout.

- `curve`: per filter, the F-score and bytes at upload ratios 0, 0.1, ..., 1 (the cutoff set by quantile over
  the whole split, an oracle placement of the cutoff that only the curve uses);
- `budget`: the online `BudgetController` at a 30% budget, image by image in split order, against sending
  everything (`fscore_all_cloud`); bytes are the JSON request bodies of `POST /v1/analyze` for the regions sent;
- `accuracy_target`: the `MarginalErrorController` for targets 0.9, 0.95 and 0.98 (edge-cloud agreement on the
  regions sent is its only label);
- `drift` (with a `DriftPhase`): the same controller over the split, shuffled into a stream whose imaging
  degrades from one image on: F before and after, and after on the same images undrifted; with `OnlineSettings`,
  a third pass with the online update of the edge model (`online_pass`), compared with the other two on the
  images after its first promotion, for the pipeline and for the edge alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aivd.collab.drift_monitor import TriggerConfig, UpdateTrigger
from aivd.collab.hard_examples import FilterConfig, make_filter
from aivd.collab.offload import BudgetController, MarginalErrorController
from aivd.core import Detections
from aivd.data.drift import DriftPhase, drifted
from aivd.data.images import read_pair
from aivd.edge.hot_swap import HotSwapDetector
from aivd.eval.protocol import evaluate
from aivd.model_store import ModelStore
from aivd.pipeline.engine import EdgeCloudPipeline
from aivd.schema.wire import encode_region

if TYPE_CHECKING:
    from aivd.training.online_update import EdgeUpdateConfig

RATIOS = tuple(round(0.1 * i, 1) for i in range(11))
CURVE_FILTERS = ("threshold", "margin", "cross_entropy", "random")


@dataclass
class ImageOutcome:
    """One image's candidates with both tiers' answers, so that any offloading policy can be replayed."""

    image_id: str
    truth: Detections
    candidates: Detections  # the edge's candidates at the proposal threshold, with its classes and scores
    cloud: Detections  # per candidate: the cloud's class and confidence (score 0 where it rejects the region)
    cloud_keeps: np.ndarray  # per candidate: did the cloud call it a defect
    request_bytes: np.ndarray  # per candidate: bytes of its region in an analyze request
    image_bytes: int  # the test image and template files, what a cloud-only pipeline would upload


def collect(pipeline: EdgeCloudPipeline, samples, drift: list[DriftPhase] = (), seed: int = 0) -> list[ImageOutcome]:
    """Run both tiers over every candidate of every image once, as the (optionally drifting) camera sees it."""
    return [observe(pipeline, sample, *drifted(index, *read_pair(sample.image_path, sample.template_path), list(drift), seed))
            for index, sample in enumerate(samples)]


def observe(pipeline: EdgeCloudPipeline, sample, image: np.ndarray, template: np.ndarray | None) -> ImageOutcome:
    """One image through the edge, and each of its candidates through the cloud."""
    labels = pipeline.labels
    proposal = pipeline.propose(image, template, sample.image_id)
    analyses = pipeline.analyzer.analyze(proposal.regions) if proposal.regions else []
    keeps = np.array([a.is_defect and a.defect_type in labels.names for a in analyses], bool)
    class_ids = np.array([labels.id(a.defect_type) if keep else 0 for a, keep in zip(analyses, keeps)], np.int64)
    scores = np.array([a.confidence if keep else 0.0 for a, keep in zip(analyses, keeps)], np.float32)
    candidates = proposal.proposals
    sizes = np.array([len(encode_region(r).model_dump_json()) for r in proposal.regions], np.int64)
    files = sum(p.stat().st_size for p in (sample.image_path, sample.template_path) if p is not None)
    return ImageOutcome(sample.image_id, sample.ground_truth(), candidates,
                        Detections(candidates.xyxy, scores, class_ids, labels), keeps, sizes, files)


def combine(outcome: ImageOutcome, sent: np.ndarray, edge_threshold: float) -> Detections:
    """The image's final defects when the regions in `sent` went to the cloud and the rest stayed at the edge."""
    at_edge = ~sent & (outcome.candidates.confidence >= edge_threshold)
    from_cloud = sent & outcome.cloud_keeps
    c, e = outcome.cloud, outcome.candidates
    return Detections(np.concatenate([e.xyxy[at_edge], c.xyxy[from_cloud]]),
                      np.concatenate([e.confidence[at_edge], c.confidence[from_cloud]]),
                      np.concatenate([e.class_id[at_edge], c.class_id[from_cloud]]), e.labels)


def final_pairs(outcomes: list[ImageOutcome], masks: list[np.ndarray], edge_threshold: float) -> list[tuple]:
    """(image id, final defects, ground truth) per image, as the official evaluation takes them."""
    return [(o.image_id, combine(o, m, edge_threshold), o.truth) for o, m in zip(outcomes, masks)]


def replay(outcomes: list[ImageOutcome], masks: list[np.ndarray], edge_threshold: float) -> dict:
    pairs = final_pairs(outcomes, masks, edge_threshold)
    regions = sum(len(m) for m in masks)
    sent = sum(int(m.sum()) for m in masks)
    return {"offload_ratio": round(sent / max(regions, 1), 4), "fscore": round(evaluate(pairs).fscore, 5),
            "bytes_to_cloud": int(sum(int(o.request_bytes[m].sum()) for o, m in zip(outcomes, masks)))}


def curve(outcomes: list[ImageOutcome], filter_name: str, edge_threshold: float, seed: int) -> list[dict]:
    filter_ = make_filter(FilterConfig(name=filter_name, params={"seed": seed} if filter_name == "random" else {}))
    uncertainty = [filter_.uncertainty(o.candidates) if len(o.candidates) else np.zeros(0) for o in outcomes]
    pooled = np.concatenate(uncertainty)
    points = []
    for ratio in RATIOS:
        # Above the (1 - ratio) quantile; ratio 0 sends nothing, ratio 1 everything.
        cutoff = np.inf if ratio == 0 else (-np.inf if ratio == 1 else float(np.quantile(pooled, 1 - ratio)))
        points.append(replay(outcomes, [u > cutoff for u in uncertainty], edge_threshold))
    return points


def budget_run(outcomes: list[ImageOutcome], filter_name: str, budget: float, edge_threshold: float) -> dict:
    controller = BudgetController(make_filter(filter_name), budget=budget)
    masks = [controller.select(o.candidates) for o in outcomes]
    result = replay(outcomes, masks, edge_threshold)
    everything = replay(outcomes, [np.ones(len(o.candidates), bool) for o in outcomes], edge_threshold)
    return {
        "filter": filter_name, "budget": budget, **result,
        "fscore_all_cloud": everything["fscore"],
        "fscore_edge_only": replay(outcomes, [np.zeros(len(o.candidates), bool) for o in outcomes], edge_threshold)["fscore"],
        "fscore_share_of_all_cloud": round(result["fscore"] / everything["fscore"], 4),
        "bytes_ratio_vs_cloud_only": round(result["bytes_to_cloud"] / max(everything["bytes_to_cloud"], 1), 4),
        "bytes_ratio_vs_whole_images": round(result["bytes_to_cloud"] / max(sum(o.image_bytes for o in outcomes), 1), 4),
    }


def edge_agrees(outcome: ImageOutcome, edge_threshold: float) -> np.ndarray:
    """Per candidate: would the edge's own decision (keep as its class, or drop) be the cloud's?"""
    e = outcome.candidates
    edge_keeps = e.confidence >= edge_threshold
    same_class = e.class_id == outcome.cloud.class_id
    return np.where(edge_keeps, outcome.cloud_keeps & same_class, ~outcome.cloud_keeps)


def accuracy_target_run(outcomes: list[ImageOutcome], filter_name: str, target: float, edge_threshold: float, seed: int) -> dict:
    """The `MarginalErrorController` image by image: the cloud's answers on what it is sent are its only labels."""
    controller = MarginalErrorController(make_filter(filter_name), target=target, seed=seed)
    masks = []
    for outcome in outcomes:
        sent, uncertainty = controller.select(outcome.candidates)
        controller.feedback(uncertainty[sent], edge_agrees(outcome, edge_threshold)[sent])
        masks.append(sent)
    return {"filter": filter_name, "target": target, **replay(outcomes, masks, edge_threshold),
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
    threshold, start = pipeline.edge_threshold, phase.start
    result: dict = {"phase": phase.model_dump(), "filter": filter_name, "budget": budget}
    finals, edge_finals, cloud_finals = {}, {}, {}
    passes = (("without_drift", [clean[i] for i in order]), ("drift", collect(pipeline, stream, [phase], seed)))
    for label, outcomes in passes:
        controller = BudgetController(make_filter(filter_name), budget=budget)
        masks = [controller.select(o.candidates) for o in outcomes]
        finals[label] = final_pairs(outcomes, masks, threshold)
        edge_finals[label] = final_pairs(outcomes, [np.zeros(len(o.candidates), bool) for o in outcomes], threshold)
        cloud_finals[label] = final_pairs(outcomes, [np.ones(len(o.candidates), bool) for o in outcomes], threshold)
        before, after = replay(outcomes[:start], masks[:start], threshold), replay(outcomes[start:], masks[start:], threshold)
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
    config: EdgeUpdateConfig | None = None  # None: the defaults
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    train_window: int = 100
    window: int = 50  # images per point of the timeline


def online_pass(pipeline: EdgeCloudPipeline, stream, phase: DriftPhase, filter_name: str, budget: float, seed: int,
                settings: OnlineSettings) -> dict:
    """The drifting stream through an edge that follows a model store and an `OnlineUpdater` that feeds it.

    Each image is seen by the model the store serves at that moment (a `HotSwapDetector`); an update runs
    synchronously when the trigger fires, so `images_to_recover` counts images, not seconds (each update's
    `seconds` says how long it took). Validation images send every region to the cloud; they count in the ratio.
    """
    from aivd.training.online_update import EdgeUpdateConfig, OnlineUpdater  # torch: only for this pass

    store = ModelStore(settings.workdir / "models")
    detector = pipeline.detector
    store.promote(store.publish(detector.path, [detector.refiner_path] if detector.refiner_path else [], metrics={"source": "shipped"}))
    edge = HotSwapDetector(store, poll_s=0.0)
    live = EdgeCloudPipeline(edge, pipeline.analyzer, pipeline.proposal_threshold, pipeline.pixels_per_mm)
    updater = OnlineUpdater(store, settings.workdir, settings.config or EdgeUpdateConfig(), trigger=UpdateTrigger(settings.trigger),
                            train_window=settings.train_window)
    controller = BudgetController(make_filter(filter_name), budget=budget)
    finals, edge_finals, sent_regions, regions, served = [], [], 0, 0, []
    for position, sample in enumerate(stream):
        image, template = drifted(position, *read_pair(sample.image_path, sample.template_path), [phase], seed)
        outcome = observe(live, sample, image, template)
        threshold = live.edge_threshold
        sent = controller.select(outcome.candidates)
        if sent.any() and updater.wants_full_labels():
            sent = np.ones_like(sent)
        final = combine(outcome, sent, threshold)
        finals.append((outcome.image_id, final, outcome.truth))
        edge_finals.append((outcome.image_id, combine(outcome, np.zeros_like(sent), threshold), outcome.truth))
        sent_regions, regions = sent_regions + int(sent.sum()), regions + len(sent)
        served.append(edge.version)
        updater.observe(outcome.image_id, image, template, final, int(sent.sum()), edge_agrees(outcome, threshold)[sent], position,
                        rejected=outcome.candidates.xyxy[sent & ~outcome.cloud_keeps])
    return {"updates": updater.updates, "offload_ratio": round(sent_regions / max(regions, 1), 4),
            "versions_served": {v: served.count(v) for v in dict.fromkeys(served)}, "finals": finals, "edge_finals": edge_finals}


def bench_collab(pipeline: EdgeCloudPipeline, samples, budget: float = 0.3, budget_filter: str = "threshold", seed: int = 0,
                 drift: DriftPhase | None = None, update: OnlineSettings | None = None) -> dict:
    outcomes = collect(pipeline, samples)
    threshold = pipeline.edge_threshold
    curves = {name: curve(outcomes, name, threshold, seed) for name in dict.fromkeys([*CURVE_FILTERS, budget_filter])}
    return {
        "images": len(outcomes), "regions": int(sum(len(o.candidates) for o in outcomes)),
        "edge_threshold": threshold, "proposal_threshold": pipeline.proposal_threshold,
        "curve": curves[budget_filter], "curves": curves,
        "budget": budget_run(outcomes, budget_filter, budget, threshold),
        "accuracy_target": [accuracy_target_run(outcomes, budget_filter, target, threshold, seed) for target in (0.9, 0.95, 0.98)],
        "drift": None if drift is None else drift_run(pipeline, samples, outcomes, drift, budget_filter, budget, seed, update),
    }
