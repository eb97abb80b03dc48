"""Tier trust learnt from reviews (aivd.pipeline.trust), the merge that follows it, and the gate that needs a gain."""

import shutil

import numpy as np
import pytest
from conftest import dets

from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector
from aivd.model_store import ModelStore
from aivd.pipeline.trust import TierTrust, region_verdicts, sign_test
from aivd.schema.analysis import DefectAnalysis

REFINER = BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"


def test_a_tier_is_right_on_a_region_when_it_keeps_a_reviewed_box_with_its_class_or_drops_a_false_alarm():
    truth = dets([[0, 0, 10, 10]], classes=np.array([1]))
    on_defect, elsewhere = [0, 0, 10, 10], [50, 50, 60, 60]
    boxes = np.array([on_defect, on_defect, on_defect, elsewhere, elsewhere], np.float32)
    keeps = np.array([True, True, False, False, True])
    classes = np.array([1, 2, 1, 1, 1])
    assert region_verdicts(boxes, keeps, classes, truth).tolist() == [True, False, False, True, False]
    # An image the reviewer marked good: only dropping is right.
    assert region_verdicts(boxes, keeps, classes, dets([])).tolist() == [False, False, True, True, False]


def test_the_sign_test_is_the_exact_binomial_tail():
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert sign_test(4, 0) == pytest.approx(1 / 16)
    assert sign_test(3, 2) == pytest.approx(0.5)
    assert sign_test(0, 0) == 1.0


def test_the_cloud_stops_deciding_only_once_reviews_show_it_measurably_worse_and_decides_again_as_they_age():
    trust = TierTrust(window=8, alpha=0.05)
    assert trust.cloud_decides  # no evidence: the cloud decides what it is sent, as without a trust
    trust.observe(np.ones(4, bool), np.zeros(4, bool))  # the edge right and the cloud wrong on 4 regions
    assert trust.cloud_decides  # p = 1/16: not enough
    trust.observe(np.array([True, True, False]), np.array([True, False, False]))  # a 5th edge win; ties do not count
    assert not trust.cloud_decides and trust.summary() == {"cloud_decides": False, "regions": 7, "edge_wins": 5, "cloud_wins": 0}
    trust.observe(np.array([False, False]), np.array([True, True]))  # the cloud wins two: 5 against 2 is p 0.23
    assert trust.cloud_decides
    trust = TierTrust(window=5)
    trust.observe(np.ones(5, bool), np.zeros(5, bool))
    assert not trust.cloud_decides
    trust.observe(np.ones(1, bool), np.ones(1, bool))  # the window forgets the oldest edge win
    assert trust.cloud_decides
    with pytest.raises(ValueError):
        TierTrust(window=0)


def _analysis(is_defect: bool, defect_type: str) -> DefectAnalysis:
    return DefectAnalysis(is_defect=is_defect, defect_type=defect_type, confidence=0.9 if is_defect else 0.1,
                          severity="minor" if is_defect else None, description="d", recommended_action="a")


def test_an_overruled_cloud_leaves_the_edges_decisions_in_the_result_and_its_own_answers_to_the_learner(tmp_path):
    from aivd.bench.collab import RecordedAnalyzer
    from aivd.collab.offload import SendAll
    from aivd.core import cut_regions
    from aivd.pipeline.engine import EdgeCloudPipeline, Proposal
    from aivd.pipeline.learning import learn_from

    detector = TemplateDetector()
    names = detector.labels.names
    # Candidate 0: the edge keeps it as class 0, the cloud calls it class 3. Candidate 1: the edge keeps it, the cloud
    # rejects it. Candidate 2: below the edge's threshold, the cloud keeps it.
    candidates = dets([[0, 0, 20, 20], [30, 30, 50, 50], [60, 60, 80, 80]], scores=np.array([0.9, 0.8, 0.01]),
                      classes=np.array([0, 1, 2]))
    image = np.full((100, 100), 128, np.uint8)
    regions = cut_regions(image, image, candidates, "board")
    analyzer = RecordedAnalyzer("recorded")
    answers = [_analysis(True, names[3]), _analysis(False, names[1]), _analysis(True, names[2])]
    analyzer.answers = {region.region_id: (answer, 10) for region, answer in zip(regions, answers)}
    trust = TierTrust()
    pipeline = EdgeCloudPipeline(detector, analyzer, 0.0, None, SendAll(), trust=trust)

    def run():
        decision = pipeline.decide(candidates)
        return pipeline.complete(Proposal(candidates, decision, regions, 0.5, {}))

    believed = run()
    assert believed.detections.class_id.tolist() == [3, 2] and believed.cloud_labels is None
    trust.observe(np.ones(5, bool), np.zeros(5, bool))
    overruled = run()
    assert overruled.detections.class_id.tolist() == [0, 1] and not overruled.detections.data["sent"].any()
    assert {record.source for record in [*overruled.defects, *overruled.rejected]} == {"edge"}
    assert all(record.offload.sent for record in [*overruled.defects, *overruled.rejected])  # the cloud was still asked
    assert overruled.edge_agrees.tolist() == [False, False, False]
    labels, rejected = overruled.cloud_labels
    assert labels.class_id.tolist() == [3, 2] and rejected.tolist() == [[30, 30, 50, 50]]

    pytest.importorskip("torch")
    from aivd.training.online_update import OnlineUpdater

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))
    updater = OnlineUpdater(store, tmp_path)
    learn_from(updater, "board", image, image, overruled, 0)
    [taught] = updater.buffer.items
    assert taught.labels.class_id.tolist() == [3, 2] and taught.rejected.tolist() == [[30, 30, 50, 50]]


def test_a_review_has_both_tiers_judge_every_candidate_the_cloud_could_be_sent(tmp_path):
    from aivd.cloud.builtin import BuiltinAnalyzer
    from aivd.data.deeppcb import read_annotation
    from aivd.data.images import read_pair
    from aivd.pipeline.demo import SAMPLES
    from aivd.pipeline.engine import EdgeCloudPipeline

    label = sorted(SAMPLES.glob("*.txt"))[0]
    test, template = read_pair(SAMPLES / f"{label.stem}_test.jpg", SAMPLES / f"{label.stem}_temp.jpg")
    truth = read_annotation(label)
    trust = TierTrust()
    pipeline = EdgeCloudPipeline(TemplateDetector(), BuiltinAnalyzer(threads=1), trust=trust)
    trust.review(pipeline, test, template, label.stem, truth)
    eligible = pipeline.detector.detect(test, template, pipeline.proposal_threshold)
    assert len(trust.verdicts) == len(eligible) > 0
    # On an undrifted board both tiers get nearly every region right: no evidence against the cloud.
    assert trust.cloud_decides and trust.edge_wins <= 1


def test_a_tie_on_the_validation_images_keeps_the_served_model(tmp_path):
    pytest.importorskip("torch")
    from aivd.training.online_update import EdgeUpdate, OnlineUpdater

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))

    def trained(fscore_after):
        def train(current, train, validation, out_dir, config):
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(current, out_dir / current.name)
            return EdgeUpdate(out_dir / current.name, [], 0.8, fscore_after, 0.5, len(train), len(validation), 0.0)
        return train

    from aivd.collab.drift_monitor import TriggerConfig, UpdateTrigger
    from aivd.collab.replay import ReplayBuffer

    for fscore_after, action, served in ((0.8, "reject", "v0001"), (0.81, "promote", "v0003")):
        updater = OnlineUpdater(store, tmp_path / str(fscore_after), buffer=ReplayBuffer(validation_every=2),
                                trigger=UpdateTrigger(TriggerConfig(every=2)), train=trained(fscore_after))
        records = [updater.observe(f"b{i}", np.zeros((8, 8), np.uint8), None, dets([[0, 0, 4, 4]]), 1, np.array([True]), i)
                   for i in range(2)]
        assert records[-1]["action"] == action and store.current() == served


def test_a_tie_on_the_reviewed_crops_keeps_the_served_cloud_classifier(tmp_path):
    from aivd.cloud.builtin import BuiltinAnalyzer
    from aivd.collab.replay import ReplayBuffer
    from aivd.training.cloud_update import CloudLearner, CloudUpdate

    analyzer = BuiltinAnalyzer(threads=1)
    buffer = ReplayBuffer(validation_every=2)
    for index in range(2):  # one reviewed image to train on, one held out
        buffer.add_reviewed(f"b{index}", np.zeros((8, 8), np.uint8), None, dets([[0, 0, 4, 4]]))

    def trained(accuracy_after):
        def train(current, train, validation, out_dir, config):
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(current, out_dir / current.name)
            return CloudUpdate(out_dir / current.name, 0.9, accuracy_after, len(train), len(validation), 0.0)
        return train

    store = ModelStore(tmp_path / "cloud")
    for accuracy_after, action, served in ((0.9, "reject", "v0001"), (0.95, "promote", "v0003")):
        learner = CloudLearner(store, analyzer, tmp_path / str(accuracy_after), train=trained(accuracy_after))
        [record] = learner.update(buffer, 0)
        assert record["action"] == action and store.current() == served
