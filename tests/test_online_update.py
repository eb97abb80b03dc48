"""Online update of the edge model: replay buffer, drift monitor, model versions, hot swap, weight import."""

import shutil

import numpy as np
import pytest
from conftest import aivd, dets

from aivd.collab.drift_monitor import AgreementMonitor, TriggerConfig, UpdateTrigger
from aivd.collab.replay import HUMAN, ReplayBuffer
from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector
from aivd.edge.hot_swap import HotSwapDetector
from aivd.model_store import ModelStore, ModelStoreError

REFINER = BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"


def image(value=255):
    return np.full((64, 64), value, np.uint8)


def test_replay_buffer_keeps_only_hard_images_and_holds_validation_images_out_for_good():
    buffer = ReplayBuffer(capacity=6, validation_every=3)
    assert not buffer.add("easy", image(), None, dets([[1, 1, 5, 5]]), cloud_regions=0)
    upcoming = []
    for index in range(9):
        upcoming.append(buffer.next_is_validation)
        assert buffer.add(f"img{index}", image(), None, dets([[1, 1, 5, 5]]), cloud_regions=1)
    assert upcoming == [False, False, True] * 3  # what the caller asks before sending a validation image's regions
    assert len(buffer) == 6  # the newest six: img3 .. img8
    train, validation = buffer.split()
    # The 3rd, 6th, 9th... image ever added is for validation, whatever has been evicted since.
    assert [i.image_id for i in validation] == ["img5", "img8"]
    assert [i.image_id for i in train] == ["img3", "img4", "img6", "img7"]
    assert [i.image_id for i in buffer.since(2)] == ["img7", "img8"]
    with pytest.raises(ValueError, match="at least 2"):
        ReplayBuffer(capacity=1)


def test_a_due_validation_image_that_came_partly_labelled_is_trained_on_and_the_next_full_one_validates():
    # Live, images are in flight between the question and the answer: a due image may arrive with regions the
    # edge decided; its labels would be the parent's own, so it trains, and validation waits for full ones, until
    # one image in validation_every validates again.
    buffer = ReplayBuffer(validation_every=2)
    for index, full in enumerate([True, False, False, True, True, True, True]):
        buffer.add(f"img{index}", image(), None, dets([[1, 1, 5, 5]]), cloud_regions=1, fully_labelled=full)
    train, validation = buffer.split()
    assert [i.image_id for i in validation] == ["img3", "img4", "img5"]
    assert [i.image_id for i in train] == ["img0", "img1", "img2", "img6"]


def test_a_reviewed_image_replaces_the_clouds_labels_stays_in_the_buffer_and_validates_once_held_out():
    buffer = ReplayBuffer(capacity=3, validation_every=2)
    buffer.add("a", image(), None, dets([[1, 1, 5, 5]]), cloud_regions=1)
    buffer.add_reviewed("a", image(), None, dets([[2, 2, 6, 6]], classes=[3]), rejected=np.array([[9, 9, 12, 12]]))
    assert [i.image_id for i in buffer.items] == []  # the human label replaced the pipeline's
    buffer.add_reviewed("b", image(), None, dets([[1, 1, 5, 5]]))  # the 2nd reviewed image: held out
    for index in range(6):  # a stream of cloud-labelled images, more than the capacity
        buffer.add(f"s{index}", image(), None, dets([[1, 1, 5, 5]]), cloud_regions=1)
    train, validation = buffer.split()
    assert [i.image_id for i in validation] == ["b"]  # human validation images only, once there are some
    assert [i.image_id for i in train] == ["s3", "s5", "a"]  # the newest pipeline images (s4 validates for them), reviewed last
    assert [(i.image_id, i.trust) for i in buffer.reviewed] == [("a", HUMAN), ("b", HUMAN)] and len(buffer) == 5
    # A newer review of an image replaces the older in its place and keeps its role.
    buffer.add_reviewed("b", image(), None, dets([[3, 3, 8, 8]]))
    assert [i.image_id for i in buffer.split()[1]] == ["b"] and buffer.split()[1][0].labels.xyxy.tolist() == [[3, 3, 8, 8]]
    assert buffer.reviewed_added == 2 and buffer.split()[0][-1].rejected.tolist() == [[9, 9, 12, 12]]


def test_reviews_trigger_updates_and_train_review_weight_times_with_the_gate_on_reviewed_images(tmp_path):
    pytest.importorskip("torch")
    from aivd.config import LearnerConfig
    from aivd.training.online_update import OnlineUpdater

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))
    seen = []

    def train(current, train, validation, out_dir, config):
        seen.append(([i.image_id for i in train], [i.image_id for i in validation]))
        raise ValueError("recorded")

    updater = OnlineUpdater(store, tmp_path, LearnerConfig(review_weight=3), ReplayBuffer(validation_every=2),
                            trigger=UpdateTrigger(TriggerConfig(every=4)), train=train)
    assert updater.observe("p0", image(), None, dets([[1, 1, 5, 5]]), 1, np.array([True]), 0) is None
    assert updater.observe("p1", image(), None, dets([[1, 1, 5, 5]]), 1, np.array([True]), 1) is None
    assert updater.observe_review("r0", image(), None, dets([[1, 1, 5, 5]]), position=1) is None
    record = updater.observe_review("r1", image(), None, dets([[1, 1, 5, 5]]), position=1)  # the 4th hard image
    assert record["action"] == "skip" and record["reason"] == "recorded"
    assert seen == [(["p0", "r0", "r0", "r0"], ["r1"])]  # p1 validated for the pipeline; r1 is the reviewed validation


def test_a_refiner_with_no_defect_also_learns_the_regions_the_cloud_rejected():
    pytest.importorskip("torch")
    from aivd.training.online_update import box_set

    buffer = ReplayBuffer()
    buffer.add("a", image(), None, dets([[1, 1, 5, 5]], classes=[2]), 2, rejected=np.array([[10, 10, 20, 20]]))
    buffer.add("b", image(), None, dets([]), 1, rejected=np.array([[3, 3, 9, 9], [30, 30, 40, 40]]))
    buffer.add("c", image(), None, dets([[2, 2, 6, 6]], classes=[4]), 1)
    items = list(buffer.items)
    assert [len(i.rejected) for i in items] == [1, 2, 0]
    with_reject = box_set(items, reject_index=6)
    assert with_reject.classes.tolist() == [2, 6, 6, 6, 4]
    assert with_reject.image_index.tolist() == [0, 0, 1, 1, 2]
    np.testing.assert_array_equal(with_reject.boxes[2], [3, 3, 9, 9])
    assert box_set(items, reject_index=None).classes.tolist() == [2, 4]  # a class-only refiner: defects alone


def test_agreement_monitor_sees_drift_when_the_cloud_overrules_the_edge_more_often():
    monitor = AgreementMonitor(reference=100, window=50, tolerance=0.05)
    rng = np.random.default_rng(0)
    monitor.update(rng.random(100) > 0.1)  # the edge's usual 10% disagreement
    monitor.update(rng.random(50) > 0.1)
    assert monitor.reference_disagreement == pytest.approx(0.1, abs=0.05)
    assert not monitor.drifted
    monitor.update(rng.random(50) > 0.35)  # drift: 35%
    assert monitor.drifted
    monitor.rebase()
    assert monitor.reference_disagreement is None and not monitor.drifted


def test_update_trigger_waits_for_enough_hard_images_after_drift_or_fires_periodically():
    trigger = UpdateTrigger(TriggerConfig(min_images=3))
    assert not any(trigger.observe(True, drifted=False) for _ in range(10))  # no drift, no period: never
    assert [trigger.observe(hard, drifted=True) for hard in (True, False, True, True)] == [False, False, False, True]
    trigger.updated(promoted=True)  # one follow-up update for this drift (the default), min_images later
    assert [trigger.observe(True, drifted=False) for _ in range(3)] == [False, False, True]
    trigger.updated(promoted=True)  # no follow-ups left: quiet until drift is seen again
    assert not any(trigger.observe(True, drifted=False) for _ in range(10))
    rejected = UpdateTrigger(TriggerConfig(min_images=1, follow_ups=3))
    assert rejected.observe(True, drifted=True)
    rejected.updated(promoted=False)  # a rejected update ends the follow-ups
    assert not rejected.observe(True, drifted=False)
    periodic = UpdateTrigger(TriggerConfig(min_images=100, every=2))
    assert [periodic.observe(True, False) for _ in range(2)] == [False, True]


def test_model_store_publishes_immutable_versions_promotes_and_rolls_back(tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.current() is None and store.versions() == []
    first = store.publish(BUILTIN_MODEL, [REFINER], metrics={"fscore": 0.96})
    second = store.publish(BUILTIN_MODEL, [REFINER], parent=first)
    assert (first, second) == ("v0001", "v0002")
    assert store.current() is None  # published is not served
    store.promote(first, "initial")
    store.promote(second, "better on validation")
    assert store.current() == second
    assert store.rollback("worse in service") == first and store.current() == first
    assert [h["action"] for h in store.history()] == ["promote", "promote", "rollback"]
    assert store.detector_path(second).is_file() and (store.versions_dir / second / REFINER.name).is_file()
    with pytest.raises(ModelStoreError, match="no parent"):
        store.rollback()
    with pytest.raises(ModelStoreError, match="no version 'v0009'"):
        store.promote("v0009")
    with pytest.raises(ModelStoreError, match="no such file"):
        store.publish(tmp_path / "missing.onnx")


def test_hot_swap_detector_serves_the_promoted_version_and_skips_one_that_will_not_load(tmp_path):
    store = ModelStore(tmp_path)
    first = store.publish(BUILTIN_MODEL, [REFINER])
    store.promote(first)
    # A second version whose detector is the same network with another threshold, to tell the two apart.
    staged = tmp_path / "staged"
    staged.mkdir()
    shutil.copy(BUILTIN_MODEL, staged / BUILTIN_MODEL.name)
    shutil.copy(REFINER, staged / REFINER.name)
    from aivd.training.common import write_metadata

    write_metadata(staged / BUILTIN_MODEL.name, {"score_threshold": "0.9"})
    second = store.publish(staged / BUILTIN_MODEL.name, [staged / REFINER.name], parent=first)
    detector = HotSwapDetector(store, poll_s=0.0, threads=1)
    test = np.full((128, 128), 255, np.uint8)
    assert detector.version == first and detector.min_confidence == TemplateDetector(BUILTIN_MODEL).min_confidence
    store.promote(second)
    detector.detect(test, test)
    assert detector.version == second and detector.min_confidence == 0.9 and detector.swaps == 1
    broken = store.publish(BUILTIN_MODEL, parent=second)  # the refiner its metadata names is missing
    store.promote(broken)
    detector.detect(test, test)
    assert detector.version == second and detector.swaps == 1  # still serving the last good version


def test_onnx_weights_load_back_into_the_torch_networks():
    torch = pytest.importorskip("torch")
    from aivd.training.crop_training import ProbabilityWrapper
    from aivd.training.detector_net import CenterNetLite, ExportWrapper
    from aivd.training.onnx_import import WeightImportError, load_onnx_weights
    from aivd.training.refiner import RefinerNet

    torch.manual_seed(0)
    net = CenterNetLite(6)
    load_onnx_weights(net, BUILTIN_MODEL, torch.rand(1, 3, 64, 64), ExportWrapper(net))  # checks outputs itself
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    refiner = RefinerNet(7)  # six classes and no-defect
    load_onnx_weights(refiner, REFINER, torch.rand(2, 3, 48, 48), ProbabilityWrapper(refiner))
    with pytest.raises(WeightImportError, match="weighted layers"):
        load_onnx_weights(RefinerNet(7), BUILTIN_MODEL, torch.rand(1, 3, 48, 48))
    with pytest.raises(WeightImportError, match="layer 6"):
        load_onnx_weights(RefinerNet(6), REFINER, torch.rand(1, 3, 48, 48))
    narrow = CenterNetLite(6, widths=(16, 48, 96, 128))
    with pytest.raises(WeightImportError, match="layer 0"):
        load_onnx_weights(narrow, BUILTIN_MODEL, torch.rand(1, 3, 64, 64))


def bundled_images():
    from aivd.data.deeppcb import read_annotation
    from aivd.data.images import read_pair
    from aivd.pipeline.demo import SAMPLES

    for label in sorted(SAMPLES.glob("*.txt")):
        test, template = read_pair(SAMPLES / f"{label.stem}_test.jpg", SAMPLES / f"{label.stem}_temp.jpg")
        yield label.stem, test, template, read_annotation(label)


@pytest.mark.integration
def test_online_updater_publishes_gates_and_rolls_back(tmp_path):
    pytest.importorskip("torch")
    from aivd.collab.drift_monitor import TriggerConfig
    from aivd.training.online_update import LearnerConfig, OnlineUpdater

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))
    config = LearnerConfig(detector_steps=2, refiner_epochs=1, batch_size=4, threads=1)
    images = list(bundled_images())

    def feed(updater, agrees, position):
        records = []
        for index, (image_id, test, template, labels) in enumerate(images):
            record = updater.observe(f"{image_id}-{position}", test, template, labels, 1, np.array([agrees]), position + index)
            records += [record] if record else []
        return records

    # min_gain 1: no candidate can score 1 above its parent, so it is published and rejected; CURRENT stays.
    strict = OnlineUpdater(store, tmp_path / "strict", config, ReplayBuffer(validation_every=3),
                           AgreementMonitor(reference=2, window=2), UpdateTrigger(TriggerConfig(every=6)), min_gain=1.0)
    [rejected] = feed(strict, True, 0)
    assert rejected["action"] == "reject" and store.current() == "v0001" and store.versions() == ["v0001", "v0002"]
    assert rejected["train_images"] == 4 and rejected["validation_images"] == 2
    assert store.info("v0002")["parent"] == "v0001" and "fscore_after" in store.info("v0002")["metrics"]

    # min_gain -1: promoted; then the new model disagrees with the cloud on everything, so the store rolls back.
    lenient = OnlineUpdater(store, tmp_path / "lenient", config, ReplayBuffer(validation_every=3),
                            AgreementMonitor(reference=2, window=2, tolerance=0.1), UpdateTrigger(TriggerConfig(every=6)), min_gain=-1.0)
    [promoted] = feed(lenient, True, 100)
    assert promoted["action"] == "promote" and store.current() == promoted["version"] == "v0003"
    [rolled_back] = feed(lenient, False, 200)[:1]
    assert rolled_back == {"position": 201, "tier": "edge", "action": "rollback", "version": "v0001", "from": "v0003"}
    assert store.current() == "v0001" and store.history()[-1]["action"] == "rollback"


def test_online_updater_skips_an_update_without_labelled_defects_and_keeps_going(tmp_path):
    pytest.importorskip("torch")
    from aivd.collab.drift_monitor import TriggerConfig
    from aivd.training.online_update import OnlineUpdater

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))
    updater = OnlineUpdater(store, tmp_path, buffer=ReplayBuffer(validation_every=2), trigger=UpdateTrigger(TriggerConfig(every=4)))
    records = [updater.observe(f"clean{i}", image(), None, dets([]), 1, np.array([True]), i) for i in range(8)]
    skipped = [r for r in records if r]
    assert [r["action"] for r in skipped] == ["skip", "skip"] and "no labelled defect" in skipped[0]["reason"]
    assert store.versions() == ["v0001"] and store.current() == "v0001"


def test_models_cli_publishes_promotes_rolls_back_and_inspect_serves_the_store(tmp_path):
    import json

    from aivd.pipeline.demo import SAMPLES


    store = tmp_path / "store"
    assert aivd("models", "publish", BUILTIN_MODEL, "--store", store, "--promote").stdout.strip() == "v0001"
    assert aivd("models", "publish", BUILTIN_MODEL, "--store", store, "--parent", "v0001").stdout.strip() == "v0002"
    aivd("models", "promote", "v0002", "--store", store)
    listed = json.loads(aivd("models", "list", "--store", store).stdout)
    assert listed["current"] == "v0002" and [v["parent"] for v in listed["versions"]] == [None, "v0001"]
    assert (store / "versions" / "v0002" / REFINER.name).is_file()  # the refiner the detector names came along
    assert aivd("models", "rollback", "--store", store).stdout.strip() == "v0001"
    assert "no version 'v0009'" in aivd("models", "promote", "v0009", "--store", store, rc=2).stderr
    assert "not a model store" in aivd("models", "list", "--store", tmp_path, rc=2).stderr
    (tmp_path / "a-file").write_text("")
    assert "a-file: cannot use as a model store" in aivd("models", "publish", BUILTIN_MODEL, "--store", tmp_path / "a-file", rc=2).stderr

    out = tmp_path / "out"
    aivd("inspect", SAMPLES / "00041200_test.jpg", "--out", out, "--edge-only", "--model", store)
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok" and record["detector"] == "builtin:deeppcb_centernet@v0001"
    assert "not a model store" in aivd("inspect", SAMPLES, "--out", out, "--model", tmp_path / "out", rc=2).stderr


@pytest.mark.integration
def test_a_promotion_before_the_monitor_measured_the_parent_is_not_rolled_back_against_zero(tmp_path):
    pytest.importorskip("torch")
    from aivd.collab.drift_monitor import TriggerConfig
    from aivd.training.online_update import LearnerConfig, OnlineUpdater

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))
    # A periodic update after 6 images, while the monitor still fills its 50-region reference: the parent has no rate.
    updater = OnlineUpdater(store, tmp_path, LearnerConfig(detector_steps=0, refiner_epochs=1, threads=1),
                            ReplayBuffer(validation_every=3), AgreementMonitor(reference=50, window=10, tolerance=0.1),
                            UpdateTrigger(TriggerConfig(every=6)), min_gain=-1.0)
    records = [updater.observe(f"{i}-{image_id}", test, template, labels, 1, np.array([True]), i)
               for i, (image_id, test, template, labels) in enumerate(bundled_images())]
    assert records[-1]["action"] == "promote" and updater.monitor.reference_disagreement is None
    # The new model then disagrees with the cloud on 20% of 50 regions: no measure of its parent, so no rollback.
    updater.observe("more", image(), None, dets([]), 0, np.array([True] * 40 + [False] * 10))
    assert store.current() == records[-1]["version"] and [u["action"] for u in updater.updates] == ["promote"]
