"""The detector trainer: export parity and a small, deterministic run through the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import SAMPLES  # noqa: E402

from aivd.core import DEEPPCB_CLASSES  # noqa: E402
from aivd.data.deeppcb import read_annotation  # noqa: E402
from aivd.data.images import read_pair  # noqa: E402
from aivd.edge.centernet import make_input  # noqa: E402
from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector  # noqa: E402
from aivd.training.detector import (  # noqa: E402
    CropSampler,
    DetectorTrainConfig,
    LoadedSample,
    dihedral,
    export_onnx,
    predict,
)
from aivd.training.detector_net import CenterNetLite  # noqa: E402


def loaded_sample(image_id: str, scale: float = 0.5) -> LoadedSample:
    test, template = read_pair(SAMPLES / f"{image_id}_test.jpg", SAMPLES / f"{image_id}_temp.jpg")
    truth = read_annotation(SAMPLES / f"{image_id}.txt")
    planes = np.round(make_input(test, template, scale)[0, :2] * 255).astype(np.uint8)
    return LoadedSample(image_id, planes, np.stack([test, template]), truth.xyxy * scale, truth.class_id.copy(), (640, 640), truth)


def test_onnx_export_gives_the_torch_models_detections(tmp_path):
    torch.manual_seed(3)
    net = CenterNetLite(len(DEEPPCB_CLASSES))
    torch.nn.init.zeros_(net.heat[-1].bias)  # undo the 0.01 prior so an untrained net has objectness near 0.5
    net.eval()
    path = tmp_path / "m.onnx"
    meta = {"aivd_model": "centernet-lite", "labels": list(DEEPPCB_CLASSES.names), "input_scale": 0.5, "output_stride": 4, "score_threshold": 0.0}
    export_onnx(net, path, meta)
    sample = loaded_sample("00041200")
    (_, from_torch, _), = predict(net, [sample], 0.5, min_confidence=0.05)
    test, template = read_pair(SAMPLES / "00041200_test.jpg", SAMPLES / "00041200_temp.jpg")
    from_onnx = TemplateDetector(path, min_confidence=0.05).detect(test, template)
    assert len(from_torch) > 0 and len(from_onnx) == len(from_torch)
    np.testing.assert_allclose(from_onnx.xyxy, from_torch.xyxy, atol=0.05)
    np.testing.assert_allclose(from_onnx.confidence, from_torch.confidence, atol=1e-4)


def test_dihedral_transform_moves_boxes_with_the_pixels():
    planes = np.zeros((2, 8, 8), np.uint8)
    planes[:, 1:3, 5:8] = 255  # rows 1-2, columns 5-7
    box = np.array([[5, 1, 8, 3]], np.float32)
    for k in range(4):
        for flip in (False, True):
            moved, boxes = dihedral(planes, box, k, flip)
            x1, y1, x2, y2 = boxes[0]
            ys, xs = np.nonzero(moved[0])
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)


def test_training_targets_put_a_peak_at_each_centre():
    sample = loaded_sample("00041200")
    config = DetectorTrainConfig(crop=320, template_dropout=0.0, misalign_prob=0.0)
    sampler = CropSampler(config, 6, np.random.default_rng(0))
    heat, class_target, class_weight, size, offset, mask = sampler._targets(sample.boxes, sample.classes, 80)
    assert int(mask.sum()) == len(sample.boxes)
    for (x1, y1, x2, y2), class_id in zip(sample.boxes / 4, sample.classes):
        ix, iy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        assert heat[0, iy, ix] == 1.0
        assert class_target[iy, ix] == class_id and class_weight[iy, ix] == 1.0
        assert size[:, iy, ix].tolist() == pytest.approx([x2 - x1, y2 - y1])


@pytest.mark.integration
def test_cli_training_runs_learns_and_is_deterministic(tmp_path, deeppcb_root):
    def train(out):
        command = [sys.executable, "-m", "aivd.cli.main", "train", "detector", "--deeppcb", str(deeppcb_root),
                   "--out", str(out), "--epochs", "3", "--limit", "30", "--batch-size", "8", "--seed", "7"]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        return json.loads((out / "training.json").read_text())

    first, second = train(tmp_path / "a"), train(tmp_path / "b")
    losses = [epoch["loss"] for epoch in first["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert [e["loss"] for e in second["history"]] == losses
    detector = TemplateDetector(tmp_path / "a" / "detector.onnx")
    assert detector.labels == DEEPPCB_CLASSES
    assert detector.min_confidence == first["best"]["threshold"]


@pytest.mark.integration
def test_cli_refiner_training_packages_a_detector_that_uses_it(tmp_path, deeppcb_root):
    def run(*args):
        subprocess.run([sys.executable, "-m", "aivd.cli.main", *map(str, args)], check=True, capture_output=True, timeout=600)

    # The shipped detector (its own refiner is left out when mining), so that there are false alarms to learn from.
    run("train", "refiner", "--deeppcb", deeppcb_root, "--detector", BUILTIN_MODEL, "--out", tmp_path / "ref", "--epochs", "1", "--limit", "20")
    record = json.loads((tmp_path / "ref" / "training.json").read_text())
    detector = TemplateDetector(tmp_path / "ref" / "deeppcb_centernet.onnx")
    assert detector.refiner is not None and detector.refiner_reject == len(DEEPPCB_CLASSES)
    assert record["train_rejects"] > 0  # the detector's false alarms became no-defect examples
    assert detector.min_confidence == record["pipeline"]["threshold"]
    assert record["pipeline"]["val"]["images"] == 2  # scored on the held-out pairs alone, not their perturbed copies
    test, template = read_pair(SAMPLES / "00041200_test.jpg", SAMPLES / "00041200_temp.jpg")
    assert isinstance(detector.detect(test, template).class_names, list)


@pytest.mark.integration
def test_cli_refiner_training_learns_from_a_teacher_when_asked(tmp_path, deeppcb_root):
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER

    args = [sys.executable, "-m", "aivd.cli.main", "train", "refiner", "--deeppcb", str(deeppcb_root), "--detector", str(BUILTIN_MODEL),
            "--out", str(tmp_path / "ref"), "--epochs", "1", "--limit", "10", "--threads", "1"]
    subprocess.run([*args, "--distill-from", str(BUILTIN_CLASSIFIER), "--distill-weight", "0.7", "--temperature", "2"],
                   check=True, capture_output=True, timeout=600)
    config = json.loads((tmp_path / "ref" / "training.json").read_text())["config"]
    assert (config["distill_from"], config["distill_weight"], config["temperature"]) == (str(BUILTIN_CLASSIFIER), 0.7, 2.0)
    missing = subprocess.run([*args, "--distill-from", str(tmp_path / "none.onnx")], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "classifier model not found" in missing.stdout + missing.stderr


def _packaged_refiner(tmp_path, head_bias, labels=(*DEEPPCB_CLASSES.names, "no-defect"), reject="no-defect"):
    """The shipped detector beside a refiner whose answer is `head_bias`'s softmax for every crop."""
    import shutil

    from aivd.edge.detector import BUILTIN_MODEL
    from aivd.training.common import write_metadata
    from aivd.training.crop_training import export_probabilities
    from aivd.training.refiner import RefinerNet

    tmp_path.mkdir()
    net = RefinerNet(len(labels))
    torch.nn.init.zeros_(net.head.weight)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor(head_bias, dtype=torch.float32))
    meta = {"aivd_model": "crop-refiner", "labels": list(labels)}
    export_probabilities(net, tmp_path / "refiner.onnx", 48, {**meta, "reject_label": reject} if reject else meta)
    shutil.copyfile(BUILTIN_MODEL, tmp_path / "detector.onnx")
    write_metadata(tmp_path / "detector.onnx", {"refiner": "refiner.onnx"})
    return tmp_path / "detector.onnx"


def test_a_refiner_with_a_reject_class_takes_the_no_defect_mass_out_of_the_confidence(tmp_path):
    from aivd.edge.detector import ModelError

    test, template = read_pair(SAMPLES / "00041200_test.jpg", SAMPLES / "00041200_temp.jpg")
    plain = TemplateDetector(_packaged_refiner(tmp_path / "a", [0, 0, 5, 0, 0, 0, 0]), min_confidence=0.1)
    rejecting = TemplateDetector(_packaged_refiner(tmp_path / "b", [0, 0, 5, 0, 0, 0, 5]), min_confidence=0.1)
    raw = TemplateDetector(plain.path, min_confidence=0.1, use_refiner=False)
    assert plain.refiner_reject == 6 and raw.refiner is None
    found, halved = plain.detect(test, template), rejecting.detect(test, template, min_confidence=0.0)
    assert len(found) > 0 and set(found.class_names) == {"mousebite"}
    # Every box keeps its place and class; the refiner's doubt that it is a defect about halves its confidence.
    assert len(halved) >= len(found)
    ratio = (np.exp(5) + 6) / (2 * np.exp(5) + 5)  # p(mousebite) with the reject class over p(mousebite) without
    np.testing.assert_allclose(halved.confidence[:len(found)], found.confidence * ratio, rtol=1e-4)
    with pytest.raises(ModelError, match="do not match"):
        TemplateDetector(_packaged_refiner(tmp_path / "c", [0] * 7, labels=("a", "b", "c", "d", "e", "f", "no-defect")))


def test_training_window_matches_the_inference_input_when_not_augmented():
    sample = loaded_sample("00041200")
    config = DetectorTrainConfig(crop=224, misalign_prob=0.0, thickness_prob=0.0)
    window = CropSampler(config, 6, np.random.default_rng(0))._window(sample.originals, 48, 96, 224)
    np.testing.assert_array_equal(window, sample.planes[:, 48:272, 96:320])


def test_change_thickness_grows_or_shrinks_conductors_by_about_a_pixel():
    from aivd.training.common import change_thickness

    board = np.full((100, 100), 255, np.uint8)
    board[40:60, 10:90] = 0  # a 20 px wide conductor
    copper_rows = {int((change_thickness(board, np.random.default_rng(seed)) < 128).sum(axis=0)[50]) for seed in range(20)}
    assert copper_rows == {18, 22}


@pytest.mark.integration
def test_cli_classifier_training_exports_a_calibrated_cloud_model(tmp_path, deeppcb_root):
    from aivd.cloud.builtin import BuiltinAnalyzer
    from aivd.core import cut_regions

    subprocess.run([sys.executable, "-m", "aivd.cli.main", "train", "classifier", "--deeppcb", str(deeppcb_root),
                    "--out", str(tmp_path), "--epochs", "1", "--limit", "20"], check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["train_rejects"] > 0  # the edge's false alarms became no-defect examples
    chosen = record["calibration"]["chosen"]
    # Never above the edge's own threshold: the cloud sees every region the edge would report.
    assert all(row["proposal_threshold"] <= record["calibration"]["edge_threshold"] for row in record["calibration"]["table"])
    analyzer = BuiltinAnalyzer(tmp_path / "deeppcb_classifier.onnx")
    assert analyzer.proposal_threshold == chosen["proposal_threshold"]
    assert analyzer.classifier.score_threshold == chosen["score_threshold"]
    assert analyzer.classifier.reject_label == "no-defect" and len(analyzer.classifier.class_names) == 6
    test, template = read_pair(SAMPLES / "00041200_test.jpg", SAMPLES / "00041200_temp.jpg")
    truth = read_annotation(SAMPLES / "00041200.txt")
    assert len(analyzer.analyze(cut_regions(test, template, truth, "00041200"))) == len(truth)


def test_calibration_pairs_add_a_copy_with_a_thicker_or_thinner_template(deeppcb_root):
    from aivd.data.deeppcb import holdout_split, load_split
    from aivd.training.calibration_set import PERTURBED_SUFFIX, calibration_pairs

    samples = holdout_split(load_split(deeppcb_root, "trainval"))[1][:3]
    pairs, again = list(calibration_pairs(samples)), list(calibration_pairs(samples))
    assert [p[0] for p in pairs] == [i for s in samples for i in (s.image_id, s.image_id + PERTURBED_SUFFIX)]
    for (_, image, template, truth), (_, copy_image, copy_template, copy_truth) in zip(pairs[::2], pairs[1::2]):
        assert copy_image is image and copy_truth is truth
        changed = np.abs(copy_template.astype(int) - template.astype(int)) > 64
        assert 0.005 < changed.mean() < 0.2  # conductor edges only
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(pairs, again))  # seeded


@pytest.mark.integration
def test_cli_calibrate_rewrites_the_classifier_thresholds_for_a_detector(tmp_path, deeppcb_root):
    import shutil

    from aivd.cloud.builtin import BUILTIN_CLASSIFIER, BuiltinAnalyzer
    from aivd.training.classifier_calibration import EDGE_WEIGHTS
    from aivd.training.common import write_metadata

    classifier = tmp_path / "classifier.onnx"
    shutil.copyfile(BUILTIN_CLASSIFIER, classifier)
    write_metadata(classifier, {"proposal_threshold": "0.9", "score_threshold": "0.9"})
    done = subprocess.run([sys.executable, "-m", "aivd.cli.main", "train", "calibrate", "--classifier", str(classifier),
                           "--deeppcb", str(deeppcb_root)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    analyzer = BuiltinAnalyzer(classifier)
    assert analyzer.proposal_threshold <= TemplateDetector().min_confidence
    assert f"chosen: proposal threshold {analyzer.proposal_threshold}" in " ".join((done.stdout + done.stderr).split())
    assert analyzer.classifier.edge_weight in EDGE_WEIGHTS
    assert f"edge weight {analyzer.classifier.edge_weight}" in " ".join((done.stdout + done.stderr).split())
    missing = subprocess.run([sys.executable, "-m", "aivd.cli.main", "train", "calibrate", "--classifier", str(tmp_path / "none.onnx")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "classifier model not found" in missing.stdout + missing.stderr


def test_distillation_mixes_the_labels_with_the_teachers_softened_probabilities():
    from torch.nn import functional as F

    from aivd.training.crop_training import Distillation

    torch.manual_seed(0)
    logits, targets, crops = torch.randn(8, 7), torch.randint(0, 7, (8,)), np.zeros((8, 3, 48, 48), np.float32)
    own = torch.softmax(logits, dim=1).numpy()
    hard = F.cross_entropy(logits, targets)
    # A teacher that agrees with the student adds nothing, at any temperature: only the labels' share is left.
    for temperature in (1.0, 4.0):
        agreeing = Distillation(lambda _: own, weight=0.3, temperature=temperature)
        torch.testing.assert_close(agreeing.loss(logits, crops, targets), 0.7 * hard)
    assert Distillation(lambda _: own[::-1].copy(), weight=0.0, temperature=4.0).loss(logits, crops, targets) == hard
    disagreeing = Distillation(lambda _: own[::-1].copy(), weight=0.3, temperature=4.0).loss(logits, crops, targets)
    assert disagreeing > 0.7 * hard


def test_the_cloud_classifier_teaches_in_the_refiners_label_order_and_refuses_other_classes():
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER
    from aivd.edge.detector import ModelError
    from aivd.training.refiner import RefinerTrainConfig, teacher

    config = RefinerTrainConfig(distill_from=str(BUILTIN_CLASSIFIER), threads=1)
    labels = [*DEEPPCB_CLASSES.names, "no-defect"]
    crops = np.random.default_rng(0).random((4, 3, 48, 48), dtype=np.float32)
    in_order = teacher(config, labels).teacher(crops)
    reversed_order = teacher(config, labels[::-1]).teacher(crops)
    np.testing.assert_allclose(reversed_order, in_order[:, ::-1])
    with pytest.raises(ModelError, match="--reject"):
        teacher(RefinerTrainConfig(distill_from=str(BUILTIN_CLASSIFIER), reject=False), list(DEEPPCB_CLASSES.names))
