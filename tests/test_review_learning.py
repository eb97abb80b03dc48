"""Human reviews teach both tiers: the feed that reads them for the learner, the live learner polling it, the cloud
classifier's swap, and `aivd bench collab --review-share` end to end."""

import numpy as np
import pytest
from conftest import aivd, dets

from aivd.collab.drift_monitor import AgreementMonitor
from aivd.core import DEEPPCB_CLASSES
from aivd.pipeline.engine import ImageResult
from aivd.review import ReviewStore
from aivd.review.learning import ReviewFeed
from aivd.store import ResultStore
from tests.test_review import defect, record


class RecordingUpdater:
    """What ReviewFeed and LiveLearner call on an OnlineUpdater, recorded; its drift monitor a real one."""

    def __init__(self):
        self.reviewed, self.updates = [], []
        self.monitor = AgreementMonitor()

    def observe_review(self, image_id, image, template, labels, rejected=None, position=None):
        self.reviewed.append((image_id, labels.class_names, labels.xyxy.tolist(), rejected.tolist(), position, image.shape))
        return {"action": "promote"} if len(self.reviewed) == 3 else None

    def wants_full_labels(self):
        return False


def reviewed_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'aivd.sqlite'}"
    with ResultStore(url) as results:
        run_id = results.start_run("aivd inspect", {"classes": list(DEEPPCB_CLASSES.names)})
        # Two candidates: one on the defect the reviewer labels, one far from it (a false alarm).
        results.add(run_id, record(tmp_path, 1, [defect((5, 5, 20, 20), "short", 0.4)], [defect((40, 30, 50, 40), "spur", 0.3)]))
        results.add(run_id, record(tmp_path, 2, [defect((5, 5, 20, 20), "open", 0.9)]))
    return url


def test_the_feed_hands_each_newly_reviewed_image_once_with_its_newest_labels_and_the_machines_false_alarms(tmp_path):
    url = reviewed_run(tmp_path)
    updater, feed = RecordingUpdater(), ReviewFeed(url, DEEPPCB_CLASSES)
    with ReviewStore(url) as store:
        store.add(1, "ana", "accepted")
        store.add(1, "ben", "corrected", [{"bbox": [6, 6, 21, 21], "defect_type": "spur", "defect_id": 1}])
        assert feed.teach(updater, 7) == []
        assert updater.reviewed == [("001", ["spur"], [[6, 6, 21, 21]], [[40, 30, 50, 40]], 7, (48, 64))]
        assert feed.teach(updater, 8) == [] and len(updater.reviewed) == 1  # nothing new
        store.add(2, "ana", "good")
        store.add(1, "ana", "corrected", [])  # no defect after all: every candidate is a false alarm
        assert feed.teach(updater, 9) == [{"action": "promote"}]
    assert updater.reviewed[1][:4] == ("002", [], [], [[5, 5, 20, 20]])
    assert updater.reviewed[2][:4] == ("001", [], [], [[5, 5, 20, 20], [40, 30, 50, 40]])
    feed.close()


def test_the_live_learner_reads_new_reviews_after_each_image_it_observes(tmp_path):
    from aivd.pipeline.live_update import Live, LiveLearner

    url = reviewed_run(tmp_path)
    updater = RecordingUpdater()
    learner = LiveLearner(updater, wait=True)
    with ResultStore(url) as results:
        Live(learner, learn_reviews=True).follow_reviews(results, DEEPPCB_CLASSES)
    with ReviewStore(url) as store:
        store.add(2, "ana", "accepted")
    # A cloud failure: the image itself teaches nothing (learn_from), the review stored meanwhile does.
    failed = ImageResult(dets([]), [], cloud_error="timeout")
    learner.offer(0, "x", np.zeros((48, 64), np.uint8), None, failed)
    assert [item[:2] for item in updater.reviewed] == [("002", ["open"])] and updater.reviewed[0][4] == 0
    learner.offer(1, "y", np.zeros((48, 64), np.uint8), None, failed)
    assert len(updater.reviewed) == 1
    learner.close()
    # Without update.reviews the learner never opens the database.
    quiet = LiveLearner(RecordingUpdater(), wait=True)
    with ResultStore(url) as results:
        Live(quiet, learn_reviews=False).follow_reviews(results, DEEPPCB_CLASSES)
    assert quiet.reviews is None
    quiet.close()


def test_the_builtin_cloud_swaps_its_classifier_and_refuses_a_file_that_is_not_one(tmp_path):
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER, BuiltinAnalyzer
    from aivd.edge.detector import BUILTIN_MODEL, ModelError

    analyzer = BuiltinAnalyzer(threads=1)
    copy = tmp_path / "classifier.onnx"
    copy.write_bytes(BUILTIN_CLASSIFIER.read_bytes())
    assert analyzer.swap_classifier(copy) == BUILTIN_CLASSIFIER and analyzer.classifier.path == copy
    with pytest.raises(ModelError, match="not an aivd crop classifier"):
        analyzer.swap_classifier(BUILTIN_MODEL)
    assert analyzer.classifier.path == copy


def test_review_share_needs_the_online_update(tmp_path):
    result = aivd("bench", "collab", "--limit", "2", "--review-share", "0.1", rc=2)
    assert "--review-share needs --update" in result.stderr


@pytest.mark.integration
def test_a_simulated_reviewer_teaches_both_tiers_through_the_review_store(deeppcb_root, tmp_path):
    pytest.importorskip("torch")
    from aivd.bench.collab import OnlineSettings, collect, drift_run
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER, BuiltinAnalyzer
    from aivd.collab.drift_monitor import TriggerConfig
    from aivd.data.deeppcb import holdout_split, load_split
    from aivd.data.drift import DriftPhase
    from aivd.edge.detector import TemplateDetector
    from aivd.model_store import ModelStore
    from aivd.pipeline.engine import EdgeCloudPipeline
    from aivd.training.online_update import LearnerConfig

    samples = holdout_split(load_split(deeppcb_root, "trainval"))[1][:24]
    pipeline = EdgeCloudPipeline(TemplateDetector(), BuiltinAnalyzer(threads=1))
    # A periodic trigger (every 5 hard images): the stream is too short for the drift monitor's reference.
    settings = OnlineSettings(tmp_path, LearnerConfig(refiner_epochs=1, batch_size=4, threads=1), TriggerConfig(every=5),
                              window=8, review_share=0.5)
    online = drift_run(pipeline, samples, collect(pipeline, samples), DriftPhase(start=12, kind="blur", strength=1.2),
                       "threshold", 0.3, 0, settings)["online"]
    trust = online["reviews"].pop("trust")
    assert online["reviews"] == {"share": 0.5, "images": 12, "after_drift": online["reviews"]["after_drift"]}
    assert trust["regions"] > 0 and trust["edge_wins"] + trust["cloud_wins"] <= trust["regions"]  # the reviews judged both tiers
    with ReviewStore(f"sqlite:///{tmp_path / 'reviews.sqlite'}") as store:
        reviews = store.reviewed_since(0)
        assert len(reviews) == 12 and {r.reviewer for r in reviews} == {"simulated"}
        truth = {s.image_id: s.ground_truth() for s in samples}
        for review in reviews:  # the true boxes, read back as the console stored them
            assert [label.bbox for label in review.labels] == [tuple(map(float, box)) for box in truth[review.image_id].xyxy]
        assert all(r.image.endswith("_test.png") for r in reviews)  # the frames as the camera saw them
    cloud = [u for u in online["updates"] if u.get("tier") == "cloud"]
    edge = [u for u in online["updates"] if u.get("tier") == "edge"]
    assert cloud and edge and all(u["action"] in ("promote", "reject", "rollback") for u in cloud)
    cloud_store = ModelStore(tmp_path / "cloud-models")
    assert len(cloud_store.versions()) == 1 + sum(u["action"] != "rollback" for u in cloud)
    assert pipeline.analyzer.classifier.path == BUILTIN_CLASSIFIER  # served again after the pass


def test_a_live_learner_with_the_builtin_cloud_updates_it_in_a_store_of_its_own_unless_reviews_are_off(tmp_path):
    pytest.importorskip("torch")
    from test_live_update import learning_config

    from aivd.pipeline.factory import build_pipeline
    from aivd.pipeline.live_update import build_learner
    from aivd.pipeline.trust import TierTrust
    from aivd.training.cloud_update import CloudLearner

    config = learning_config(tmp_path / "store")
    pipeline = build_pipeline(config)
    learner = build_learner(config.update, pipeline)
    try:
        assert isinstance(learner.updater.cloud, CloudLearner)
        assert isinstance(pipeline.trust, TierTrust) and pipeline.trust.cloud_decides  # reviews will judge the tiers
        assert pipeline.analyzer.classifier.path == tmp_path / "store" / "cloud" / "versions" / "v0001" / "deeppcb_classifier.onnx"
    finally:
        learner.close()
    config = learning_config(tmp_path / "store2", reviews=False)
    pipeline = build_pipeline(config)
    learner = build_learner(config.update, pipeline)
    try:
        assert learner.updater.cloud is None and pipeline.trust is None
    finally:
        learner.close()
