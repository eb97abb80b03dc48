"""Online learning in the live path (`aivd.pipeline.live_update`): the learner beside `inspect_tasks`, and the
run's Prometheus metrics."""

import dataclasses

import cv2
import numpy as np
import pytest
from conftest import aivd

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
    # A periodic trigger: the stream is too short for the drift monitor's reference. Ties promote: on this short
    # stream's few validation images an update rarely beats its parent, and the test needs swaps to compare.
    trigger, min_gain = TriggerConfig(every=4), -1e-6
    # The samples are already drifted: a phase starting after the stream leaves them as they are.
    replayed = online_pass(EdgeCloudPipeline(TemplateDetector(), BuiltinAnalyzer(threads=1)), samples,
                           DriftPhase(start=count, kind="blur", strength=1.0), "threshold", 0.3, 0,
                           OnlineSettings(tmp_path / "bench", FAST, trigger, min_gain=min_gain))

    config = learning_config(tmp_path / "live-store", trigger=trigger, min_gain=min_gain, wait_for_updates=True)
    pipeline = build_pipeline(config)
    with live(config, pipeline) as extras:
        summary = inspect_tasks(tasks, pipeline, tmp_path / "out", QUIET, live=extras)
    decisions = ("position", "action", "version", "parent", "fscore_before", "fscore_after", "train_images", "validation_images")
    bench_updates = [{k: u.get(k) for k in decisions} for u in replayed["updates"]]
    # The stream must exercise the gate and a swap (here: skip, promote, promote, promote; a rejection's path is
    # tested in test_trust and test_online_update).
    assert "promote" in {u["action"] for u in bench_updates}, bench_updates
    assert [{k: u.get(k) for k in decisions} for u in extras.learner.updates] == bench_updates
    assert {name.rpartition("@")[2]: n for name, n in summary.model_versions.items()} == replayed["versions_served"]
    assert summary.offload_ratio == replayed["offload_ratio"] and extras.learner.dropped == 0


def bundled_tasks():
    from aivd.pipeline.demo import SAMPLES

    return [InspectionTask(path.stem.removesuffix("_test"), path, path.with_name(path.name.replace("_test", "_temp")))
            for path in sorted(SAMPLES.glob("*_test.jpg"))]


def test_metrics_are_served_over_http_with_the_runs_offload_ratio_and_disagreement(tmp_path):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from aivd.pipeline.live_update import MetricsServerError

    config = PipelineConfig.model_validate({"edge": {"model": BUILTIN_MODEL}, "offload": {"budget": 0.5}})
    pipeline = build_pipeline(config)
    with live(config, pipeline, metrics_port=0) as extras:
        summary = inspect_tasks(bundled_tasks(), pipeline, tmp_path / "out", QUIET, live=extras)
        answer = httpx.get(f"http://127.0.0.1:{extras.metrics_port}/metrics")
        with pytest.raises(MetricsServerError, match=f"--metrics-port {extras.metrics_port}: cannot serve"):
            with extras.metrics.serving(extras.metrics_port):
                pass
    assert answer.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(answer.text) for s in family.samples}
    assert 0 < summary.offload_ratio < 1 and samples[("aivd_offload_ratio", ())] == pytest.approx(summary.offload_ratio, abs=1e-4)
    assert samples[("aivd_regions_sent_total", ())] == summary.sent and samples[("aivd_candidate_regions_total", ())] == summary.candidates
    answered, disagreed = samples[("aivd_cloud_answered_regions_total", ())], samples[("aivd_cloud_disagreements_total", ())]
    assert answered == summary.sent and samples[("aivd_cloud_disagreement", ())] == pytest.approx(disagreed / answered)
    assert samples[("aivd_edge_model_info", (("model", "builtin:deeppcb_centernet"), ("version", "")))] == 1
    assert samples[("aivd_model_updates_total", (("action", "promote"),))] == 0 and samples[("aivd_drift", ())] == 0
    with pytest.raises(httpx.ConnectError):  # the server went with the run
        httpx.get(f"http://127.0.0.1:{extras.metrics_port}/metrics")


def test_the_learner_never_blocks_inspection_and_drops_what_does_not_fit_its_queue(tmp_path):
    pytest.importorskip("torch")
    import threading
    import time

    from aivd.collab.drift_monitor import UpdateTrigger
    from aivd.data.images import read_pair
    from aivd.model_store import ModelStore
    from aivd.pipeline.live_update import LiveLearner
    from aivd.training.online_update import OnlineUpdater

    store = ModelStore(tmp_path / "store")
    pipeline = build_pipeline(learning_config(tmp_path / "store", isolation="thread"))  # seeds the store
    task = bundled_tasks()[0]
    image, template = read_pair(task.image_path, task.template_path)
    result = pipeline.run(image, template, task.image_id)
    assert result.edge_agrees is not None and len(result.edge_agrees)  # a hard image: every one triggers an update

    started, release = threading.Event(), threading.Event()

    def slow_training(*args):  # an update that trains until released, then finds too little data
        started.set()
        release.wait(30)
        raise ValueError("too few images")

    updater = OnlineUpdater(store, tmp_path, FAST, trigger=UpdateTrigger(TriggerConfig(every=1)), train=slow_training)
    learner = LiveLearner(updater, queue_size=2)
    assert learner.offer(0, "a", image, template, result) and started.wait(30)
    began = time.perf_counter()
    handed = [learner.offer(position, f"i{position}", image, template, result) for position in (1, 2, 3)]
    assert time.perf_counter() - began < 0.5 and handed == [True, True, False]  # image 3: queue full, not observed
    release.set()
    learner.close()
    assert learner.observed == 3 and learner.dropped == 1
    assert [(u["position"], u["action"]) for u in learner.updates] == [(0, "skip"), (1, "skip"), (2, "skip")]
    assert updater.buffer.added == 3  # the dropped image never reached the buffer nor the trigger


def test_learning_serves_the_update_store_seeded_with_the_packs_model_and_bad_settings_are_one_line_each(tmp_path):
    from aivd.config import ConfigError, build_config

    store = tmp_path / "store"
    pipeline = build_pipeline(build_config(None, {"update": {"enabled": True, "model_store": str(store)}}))
    assert pipeline.detector.name == "builtin:deeppcb_centernet@v0001" and pipeline.detector.tile_size == 640  # tiled as the pack
    assert sorted(p.name for p in (store / "versions" / "v0001").iterdir()) == [
        "deeppcb_centernet.onnx", "deeppcb_refiner.onnx", "version.json"]
    (tmp_path / "a-file").write_text("")
    for overrides, line in [
        ({"cloud": {"backend": "none"}}, "pipeline config: update.enabled needs a cloud tier (cloud.backend other than none)"),
        ({"update": {"enabled": True, "model_store": str(tmp_path / "a-file")}},
         f"update.model_store {tmp_path / 'a-file'}: cannot use as a model store"),
        ({"edge": {"min_confidence": 0.3}}, "edge.min_confidence does not apply with update.enabled"),
    ]:
        with pytest.raises(ConfigError) as error:
            build_pipeline(build_config(None, {"update": {"enabled": True, "model_store": str(store)}} | overrides))
        assert str(error.value).startswith(line) and "\n" not in str(error.value)


@pytest.mark.integration
def test_aivd_inspect_with_a_learning_config_updates_swaps_and_counts_the_versions_served(tmp_path):
    import json
    import socket

    from aivd.pipeline.demo import SAMPLES


    config = tmp_path / "pipeline.yaml"
    # min_gain is 0, so a candidate no worse than its parent on the validation images is promoted.
    config.write_text(f"update: {{enabled: true, model_store: {tmp_path / 'store'}, wait_for_updates: true, trigger: {{every: 3}},\n"
                      "         learner: {detector_steps: 0, refiner_epochs: 1, threads: 1}}\n"
                      "offload: {budget: 1.0}\n")
    pairs = [path for path in sorted(SAMPLES.glob("*_test.jpg"))] * 3  # 18 images: updates at the 3rd, 6th, ... hard one
    images = tmp_path / "images"
    images.mkdir()
    for index, path in enumerate(pairs):
        (images / f"{index:02d}_{path.name}").write_bytes(path.read_bytes())
        (images / f"{index:02d}_{path.name.replace('_test', '_temp')}").write_bytes(path.with_name(path.name.replace("_test", "_temp")).read_bytes())
    aivd("inspect", images, "--config", config, "--out", tmp_path / "out", "--metrics-port", "0", timeout=600)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "store" / "history.jsonl").read_text().splitlines()]
    assert history[0]["version"] == "v0001"  # the store was seeded with the pack's model
    assert summary["images"] == 18 and sum(summary["model_versions"].values()) == 18
    served = {name.rpartition("@")[2] for name in summary["model_versions"]}
    promoted = {entry["version"] for entry in history if entry["action"] == "promote"}
    # Only versions promoted in the store were served, and the first promotion (well before the end) was.
    assert served <= promoted and (len(promoted) == 1 or served - {"v0001"}), (served, history)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = aivd("inspect", images, "--config", config, "--out", tmp_path / "again", "--metrics-port", port, rc=2, timeout=600)
    assert f"--metrics-port {port}: cannot serve metrics on 127.0.0.1:{port}" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.integration
def test_each_image_row_records_whether_the_learner_was_in_its_drift_window_and_without_a_learner_none(tmp_path):
    pytest.importorskip("torch")
    from sqlalchemy import create_engine, select

    from aivd.collab.drift_monitor import AgreementMonitor, UpdateTrigger
    from aivd.model_store import ModelStore
    from aivd.pipeline.live_update import Live, LiveLearner
    from aivd.store.database import images
    from aivd.training.online_update import OnlineUpdater

    def drift_column(out):
        engine = create_engine(f"sqlite:///{out / 'aivd.sqlite'}")
        with engine.connect() as connection:
            flags = connection.execute(select(images.c.drifted).order_by(images.c.id)).scalars().all()
        engine.dispose()
        return flags

    options = dataclasses.replace(QUIET, database="")  # OUT/aivd.sqlite
    pipeline = build_pipeline(learning_config(tmp_path / "store", isolation="thread"))  # seeds the store
    # A monitor of one reference region and a window of one, left in its drift state (the reference region agreed,
    # the newest did not); the edge agrees with the cloud on every region of the bundled boards, so the first image
    # with a region decided ends the drift. A trigger that never fires: the edge model stays as it is.
    monitor = AgreementMonitor(reference=1, window=1, tolerance=0.5)
    monitor.update(np.array([True, False]))
    updater = OnlineUpdater(ModelStore(tmp_path / "store"), tmp_path / "work", FAST, monitor=monitor,
                            trigger=UpdateTrigger(TriggerConfig(min_images=10**6)))
    learner = LiveLearner(updater, wait=True)
    after = []  # the learner's state once it has observed each image
    tasks = bundled_tasks() * 2
    inspect_tasks(tasks, pipeline, tmp_path / "out", options, on_result=lambda _: after.append(learner.drifted),
                  live=Live(learner=learner))
    learner.close()
    # Each image is written before the learner observes it: with the state the images before it left.
    flags = drift_column(tmp_path / "out")
    assert flags == [True, *after[:-1]] and flags[:3] == [True, False, False] and len(flags) == len(tasks)
    inspect_tasks(tasks[:2], pipeline, tmp_path / "plain", options)
    assert drift_column(tmp_path / "plain") == [None, None]
