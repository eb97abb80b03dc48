"""Hard-example filters and the offload-budget controller."""

import numpy as np
import pytest
from conftest import dets

from aivd.collab.hard_examples import FILTERS, FilterConfig, is_hard, make_filter
from aivd.collab.offload import BudgetController


def boxes(scores):
    n = len(scores)
    return dets([[i, i, i + 5, i + 5] for i in range(n)], scores=np.asarray(scores, float))


def test_threshold_sends_low_scores():
    assert is_hard(make_filter(FilterConfig(name="threshold", params={"threshold": 0.6})), boxes([0.9, 0.59, 0.2])).tolist() == [False, True, True]


def test_cross_entropy_and_margin_use_class_probabilities_when_given():
    probs = np.array([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0]])
    found = boxes([0.98, 0.4, 0.5])
    entropy = make_filter(FilterConfig(name="cross_entropy", params={"threshold": 0.5}))
    assert is_hard(entropy, found, probs).tolist() == [False, True, True]
    margin = make_filter(FilterConfig(name="margin", params={"threshold": 0.2}))
    assert is_hard(margin, found, probs).tolist() == [False, True, True]
    # Without probabilities, the score is a two-way distribution: 0.5 is as unsure as it gets.
    assert is_hard(margin, boxes([0.95, 0.5])).tolist() == [False, True]
    with pytest.raises(ValueError, match="class_probs must be"):
        entropy.uncertainty(found, probs[:2])


def test_ibt_sends_a_whole_image_when_enough_of_its_boxes_are_unsure():
    ibt = make_filter(FilterConfig(name="ibt", params={"threshold_img": 0.5, "threshold_box": 0.5}))
    assert is_hard(ibt, boxes([0.9, 0.3])).tolist() == [True, True]  # half the boxes low: hard
    assert is_hard(ibt, boxes([0.9, 0.8, 0.3])).tolist() == [False, False, False]


def test_edge_only_cloud_only_and_random():
    found = boxes([0.1, 0.5, 0.99] * 100)
    assert not is_hard(make_filter("edge_only"), found).any()
    assert is_hard(make_filter("cloud_only"), found).all()
    share = is_hard(make_filter(FilterConfig(name="random", params={"probability": 0.3, "seed": 1})), found).mean()
    assert 0.22 < share < 0.38


def test_unknown_filter_or_parameter_is_refused():
    with pytest.raises(ValueError, match="known: threshold"):
        make_filter("entropy")
    with pytest.raises(ValueError, match="filter 'margin'"):
        make_filter(FilterConfig(name="margin", params={"cutoff": 0.1}))
    assert set(FILTERS) == {"threshold", "cross_entropy", "margin", "ibt", "random", "edge_only", "cloud_only"}


def test_budget_controller_holds_the_upload_ratio_when_scores_drift():
    rng = np.random.default_rng(0)
    controller = BudgetController(make_filter("threshold"), budget=0.3, window=500)
    shares = []
    for step in range(600):
        # After image 300 the edge grows much less sure (drift): a fixed threshold would send most boxes.
        centre = 0.85 if step < 300 else 0.45
        found = boxes(np.clip(rng.normal(centre, 0.1, 8), 0, 1))
        shares.append(controller.decide(found).sent.mean())
    assert abs(np.mean(shares[100:300]) - 0.3) < 0.05
    assert abs(np.mean(shares[400:]) - 0.3) < 0.05  # recovered within 100 images of the shift
    assert 0.25 < controller.upload_ratio < 0.4
    fixed = make_filter(FilterConfig(name="threshold", params={"threshold": 0.78}))
    assert is_hard(fixed, boxes(np.clip(rng.normal(0.45, 0.1, 800), 0, 1))).mean() > 0.9


def test_the_merge_takes_the_cloud_answer_for_sent_regions_and_the_edge_decision_for_the_rest():
    from aivd.pipeline.engine import CloudAnswers, edge_agrees, merge_tiers

    candidates = dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], scores=np.array([0.9, 0.3, 0.5]),
                      classes=np.array([0, 1, 2]))
    cloud = CloudAnswers(np.array([True, True, False]), np.array([3, 1, 0]), np.array([0.95, 0.8, 0.0], np.float32))
    edge_only = merge_tiers(candidates, np.zeros(3, bool), cloud, edge_threshold=0.35)
    assert edge_only.class_id.tolist() == [0, 2] and edge_only.confidence.tolist() == pytest.approx([0.9, 0.5])
    assert edge_only.data["candidate"].tolist() == [0, 2] and not edge_only.data["sent"].any()
    all_cloud = merge_tiers(candidates, np.ones(3, bool), cloud, edge_threshold=0.35)
    assert all_cloud.class_id.tolist() == [3, 1]  # the cloud relabels the first, finds the second, rejects the third
    mixed = merge_tiers(candidates, np.array([False, True, True]), cloud, edge_threshold=0.35)
    assert mixed.class_id.tolist() == [0, 1] and mixed.data["sent"].tolist() == [False, True]  # sorted by score
    # Edge keeps 0 (class 0; cloud says class 3): wrong. Edge drops 1 (cloud keeps it): wrong. Edge keeps 2, cloud
    # rejects it: wrong. Make them agree and check each flips.
    assert edge_agrees(candidates, cloud, 0.35).tolist() == [False, False, False]
    agreeing = CloudAnswers(np.array([True, False, True]), np.array([0, 0, 2]), np.array([0.95, 0.0, 0.9], np.float32))
    assert edge_agrees(candidates, agreeing, 0.35).tolist() == [True, True, True]


@pytest.mark.integration
def test_bench_collab_prints_the_curve_and_the_budget_run(deeppcb_root):
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "aivd.cli.main", "bench", "collab", "--deeppcb", str(deeppcb_root),
                          "--split", "holdout", "--limit", "12", "--drift", "blur:1.5", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    ratios = [point["offload_ratio"] for point in report["curve"]]
    assert ratios[0] == 0 and ratios[-1] == 1 and ratios == sorted(ratios)
    assert report["curve"][0]["bytes_to_cloud"] == 0 and report["curve"][-1]["fscore"] == report["budget"]["fscore_all_cloud"]
    assert report["curve"][0]["fscore"] == report["budget"]["fscore_edge_only"]
    assert 0 < report["budget"]["offload_ratio"] < 0.5
    assert [run["target"] for run in report["accuracy_target"]] == [0.9, 0.95, 0.98]
    assert all(0 < run["offload_ratio"] <= 1 for run in report["accuracy_target"])
    drift = report["drift"]
    assert drift["phase"] == {"start": 6, "kind": "blur", "strength": 1.5}
    # The same six images blurred: the edge alone loses accuracy.
    assert drift["edge_fscore_after_drift"] < drift["edge_fscore_after_without_drift"]
    assert drift["fscore_after_update"] is None and "online" not in drift  # no --update


@pytest.mark.integration
def test_online_pass_updates_publishes_and_swaps_the_edge_model_inside_the_stream(deeppcb_root, tmp_path):
    pytest.importorskip("torch")
    from aivd.bench.collab import OnlineSettings, collect, drift_run
    from aivd.cloud.builtin import BuiltinAnalyzer
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
    settings = OnlineSettings(tmp_path, LearnerConfig(detector_steps=2, refiner_epochs=1, batch_size=4),
                              TriggerConfig(every=5), window=8)
    drift = drift_run(pipeline, samples, collect(pipeline, samples), DriftPhase(start=12, kind="blur", strength=1.2),
                      "threshold", 0.3, 0, settings)
    online = drift["online"]
    store = ModelStore(tmp_path / "models")
    assert len(online["updates"]) >= 3 and {u["action"] for u in online["updates"]} <= {"promote", "reject", "skip"}
    assert store.versions()[0] == "v0001" and len(store.versions()) == 1 + sum(u["action"] != "skip" for u in online["updates"])
    promoted = [u for u in online["updates"] if u["action"] == "promote"]
    # Every image was served by exactly one version, and promoted versions served the images after them.
    assert sum(online["versions_served"].values()) == 24
    assert set(online["versions_served"]) == {"v0001", *(u["version"] for u in promoted if u["position"] < 23)}
    after = [u for u in promoted if u["position"] >= 12]
    assert (drift["fscore_after_update"] is None) == (not after)
    if after:
        assert drift["images_to_recover"] == after[0]["position"] + 1 - 12 and 0 <= online["edge_fscore_update"] <= 1
    assert [point["from"] for point in online["timeline"]] == [0, 8, 16]


def test_drift_degrades_image_and_template_alike_and_deterministically():
    from aivd.data.drift import DriftPhase, drifted

    image = np.tile(np.array([0, 255], np.uint8).repeat(4), (16, 2))
    phases = [DriftPhase(start=3, kind="contrast_noise", strength=10.0)]
    assert drifted(2, image, image, phases)[0] is image  # before the phase: untouched
    test, template = drifted(5, image, image.copy(), phases, seed=1)
    assert test.shape == image.shape and not np.array_equal(test, image)
    assert np.array_equal(test, drifted(5, image, image, phases, seed=1)[0])  # same seed and position: same noise
    blurred, _ = drifted(0, image, None, [DriftPhase(start=0, kind="blur", strength=1.0)])
    assert len(np.unique(blurred)) > 2  # the black-white edges are softened into greys
    with pytest.raises(ValueError, match="resample strength"):
        drifted(0, image, None, [DriftPhase(start=0, kind="resample", strength=2.0)])


def test_marginal_error_controller_settles_where_the_edge_errs_at_the_tolerated_rate():
    from aivd.collab.offload import MarginalErrorController

    rng = np.random.default_rng(2)
    controller = MarginalErrorController(make_filter("threshold"), target=0.95, band=0.04, step=0.01)
    for _ in range(3000):
        scores = rng.uniform(0, 1, 10)
        decision = controller.decide(boxes(scores))
        hard, uncertainty = decision.sent, decision.uncertainty
        # The edge is wrong with probability equal to its uncertainty (1 - score): 5% errors at score 0.95.
        edge_right = rng.random(10) >= uncertainty
        controller.feedback(decision, edge_right[hard])
    # Tolerating 5% errors, regions the edge scores below about 0.95 go to the cloud: cutoff near 0.05.
    assert 0.02 < controller.filter.cutoff < 0.09
    assert 0.9 < controller.upload_ratio < 0.99
    strict = MarginalErrorController(make_filter("threshold"), target=0.7, band=0.04, step=0.01)
    for _ in range(3000):
        scores = rng.uniform(0, 1, 10)
        decision = strict.decide(boxes(scores))
        strict.feedback(decision, (rng.random(10) >= decision.uncertainty)[decision.sent])
    assert 0.25 < strict.filter.cutoff < 0.35 and strict.upload_ratio < controller.upload_ratio


@pytest.mark.integration
def test_the_bench_replay_gives_what_inspect_with_the_same_config_gives(deeppcb_root, tmp_path):
    """bench collab's budget run is the live path: the same records, region for region, and the same figures."""
    import json

    from conftest import write_file
    from typer.testing import CliRunner

    from aivd.bench.collab import budget_offloader, budget_run, collect, replay
    from aivd.cli.main import app
    from aivd.config import build_config
    from aivd.data.deeppcb import load_split
    from aivd.pipeline.factory import build_pipeline

    samples = load_split(deeppcb_root, "test")[:40]
    config_file = write_file(tmp_path / "line.yaml", "offload: {budget: 0.3, window: 100, warmup: 20}\n"
                                                     "imaging: {pixels_per_mm: 48}\noutputs: {annotate: false, report: false}\n")
    config = build_config(config_file)
    pipeline = build_pipeline(config)
    outcomes = collect(pipeline, samples)
    bench = budget_run(pipeline, outcomes, "threshold", 0.3, config.offload)
    replayed = replay(pipeline, outcomes, budget_offloader("threshold", 0.3, config.offload))

    result = CliRunner().invoke(app, ["inspect", *[str(s.image_path) for s in samples], "--config", str(config_file),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in records] == [o.image_id for o in outcomes]
    for record, image in zip(records, replayed):
        for key in ("defects", "rejected"):
            assert record[key] == [d.model_dump(mode="json") for d in getattr(image, key)], record["image_id"]
    assert summary["offload_ratio"] == bench["offload_ratio"] and 0 < summary["sent"] < summary["candidates"]
