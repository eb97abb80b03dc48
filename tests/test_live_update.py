"""Online learning in the live path (`aivd.pipeline.live_update`): the learner beside `inspect_tasks`, and the
run's Prometheus metrics."""

import dataclasses

import cv2
import pytest

from aivd.collab.drift_monitor import TriggerConfig
from aivd.config import LearnerConfig, OffloadConfig, PipelineConfig, UpdateConfig
from aivd.edge.detector import BUILTIN_MODEL
from aivd.pipeline.factory import build_pipeline
from aivd.pipeline.inputs import InspectionTask
from aivd.pipeline.inspect import InspectOptions, inspect_tasks
from aivd.pipeline.live_update import live

QUIET = InspectOptions(annotate=False, report=False, database=None)
FAST = LearnerConfig(detector_steps=0, refiner_epochs=1, threads=1)


def learning_config(store, **update) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "edge": {"model": BUILTIN_MODEL}, "offload": OffloadConfig(budget=0.3).model_dump(),
        "update": UpdateConfig(enabled=True, model_store=store, learner=FAST, **update).model_dump(),
    })


def drifting_stream(deeppcb_root, folder, count: int, phase):
    """The first `count` holdout images as a camera that drifts at `phase` sees them, written as PNG (lossless,
    so every path reads the same pixels): the tasks to inspect, and the same as data set samples."""
    from aivd.data.deeppcb import holdout_split, load_split
    from aivd.data.drift import drifted
    from aivd.data.images import read_pair

    folder.mkdir()
    tasks, samples = [], []
    for position, sample in enumerate(holdout_split(load_split(deeppcb_root, "trainval"))[1][:count]):
        image, template = drifted(position, *read_pair(sample.image_path, sample.template_path), [phase], 0)
        image_path, template_path = folder / f"{sample.image_id}_test.png", folder / f"{sample.image_id}_temp.png"
        cv2.imwrite(str(image_path), image)
        cv2.imwrite(str(template_path), template)
        tasks.append(InspectionTask(sample.image_id, image_path, template_path))
        samples.append(dataclasses.replace(sample, image_path=image_path, template_path=template_path))
    return tasks, samples


@pytest.mark.integration
def test_the_live_path_waiting_for_its_updates_makes_the_bench_replays_updates_at_the_same_images(deeppcb_root, tmp_path):
    pytest.importorskip("torch")
    from aivd.bench.collab import OnlineSettings, online_pass
    from aivd.cloud.builtin import BuiltinAnalyzer
    from aivd.data.drift import DriftPhase
    from aivd.edge.detector import TemplateDetector
    from aivd.pipeline.engine import EdgeCloudPipeline

    count = 20
    tasks, samples = drifting_stream(deeppcb_root, tmp_path / "stream", count, DriftPhase(start=10, kind="blur", strength=1.2))
    # A periodic trigger: the stream is too short for the drift monitor's reference.
    trigger = TriggerConfig(every=4)
    # The samples are already drifted: a phase starting after the stream leaves them as they are.
    replayed = online_pass(EdgeCloudPipeline(TemplateDetector(), BuiltinAnalyzer(threads=1)), samples,
                           DriftPhase(start=count, kind="blur", strength=1.0), "threshold", 0.3, 0,
                           OnlineSettings(tmp_path / "bench", FAST, trigger))

    config = learning_config(tmp_path / "live-store", trigger=trigger, wait_for_updates=True)
    pipeline = build_pipeline(config)
    with live(config, pipeline) as extras:
        summary = inspect_tasks(tasks, pipeline, tmp_path / "out", QUIET, live=extras)
    decisions = ("position", "action", "version", "parent", "fscore_before", "fscore_after", "train_images", "validation_images")
    bench_updates = [{k: u.get(k) for k in decisions} for u in replayed["updates"]]
    # The stream must exercise a swap and the gate (here: skip, promote, promote, reject).
    assert {u["action"] for u in bench_updates} >= {"promote", "reject"}, bench_updates
    assert [{k: u.get(k) for k in decisions} for u in extras.learner.updates] == bench_updates
    assert {name.rpartition("@")[2]: n for name, n in summary.model_versions.items()} == replayed["versions_served"]
    assert summary.offload_ratio == replayed["offload_ratio"] and extras.learner.dropped == 0
