"""Model packs: the manifest, loading, the edge's choice of detector, and `aivd train pack` end to end."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from aivd.cloud.builtin import BUILTIN_CLASSIFIER
from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE
from aivd.edge.detector import BUILTIN_MODEL, TemplateDetector
from aivd.packs import PackError, builtin_pack, load_pack
from aivd.packs.pack import PackDetectors, PackManifest, write_manifest
from tests.conftest import SAMPLES


def _pack(folder: Path, **changes) -> Path:
    """A pack of the shipped DeepPCB files, copied, with `changes` to its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (BUILTIN_MODEL, BUILTIN_MODEL.with_name("deeppcb_refiner.onnx"), BUILTIN_CLASSIFIER, DEFAULT_KNOWLEDGE):
        shutil.copy(path, folder / path.name)
    manifest = PackManifest(name="copy", labels=list(builtin_pack().labels.names), domain="pcb",
                            detectors=PackDetectors(template=BUILTIN_MODEL.name), classifier=BUILTIN_CLASSIFIER.name,
                            knowledge=DEFAULT_KNOWLEDGE.name)
    write_manifest(folder, manifest)
    if changes:
        data = yaml.safe_load((folder / "pack.yaml").read_text())
        data.update(changes)
        (folder / "pack.yaml").write_text(yaml.safe_dump(data))
    return folder


def _sample():
    from aivd.data.images import read_pair

    return read_pair(SAMPLES / "00041200_test.jpg", SAMPLES / "00041200_temp.jpg")


def test_manifest_round_trips(tmp_path):
    pack = load_pack(_pack(tmp_path / "p"))
    assert pack.name == "copy" and pack.labels.names == builtin_pack().labels.names
    assert pack.template_detector == (tmp_path / "p" / BUILTIN_MODEL.name).resolve()
    assert pack.image_detector is None and pack.pcb_facts
    again = load_pack(tmp_path / "p" / "pack.yaml")
    assert again.manifest == pack.manifest


@pytest.mark.parametrize("changes, message", [
    ({"knowledge": "../deeppcb.yaml"}, "outside the pack folder"),
    ({"classifier": "missing.onnx"}, "not found"),
    ({"detectors": {"image": None, "template": None}}, "name an image-only or a template-aware detector"),
    ({"tile_size": 3}, "tile_size"),
    ({"pixels_per_mm": 0}, "pixels_per_mm"),
    ({"format": 2}, "format"),
    ({"extra": 1}, "extra"),
])
def test_bad_manifests_are_one_clear_error(tmp_path, changes, message):
    with pytest.raises(PackError, match=message):
        load_pack(_pack(tmp_path / "p", **changes))


def test_a_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(PackError, match="not a model pack"):
        load_pack(tmp_path)


def test_labels_that_differ_from_the_models_are_refused(tmp_path):
    labels = list(builtin_pack().labels.names)
    pack = load_pack(_pack(tmp_path / "p", labels=labels[::-1]))
    with pytest.raises(PackError, match="differ from the pack's"):
        pack.load_detector()


def test_pack_edge_uses_the_template_aware_detector_only_with_a_template(tmp_path):
    folder = _pack(tmp_path / "p", detectors={"image": BUILTIN_MODEL.name, "template": "template.onnx"})
    shutil.copy(BUILTIN_MODEL, folder / "template.onnx")
    shutil.copy(BUILTIN_MODEL.with_name("deeppcb_refiner.onnx"), folder / "deeppcb_refiner.onnx")
    detector = load_pack(folder).load_detector()
    image, template = _sample()
    reference = TemplateDetector(BUILTIN_MODEL)
    with_template = detector.detect(image, template)
    np.testing.assert_allclose(with_template.xyxy, reference.detect(image, template).xyxy)
    assert detector._for(template) is detector.template_aware and detector._for(None) is detector.image_only
    np.testing.assert_allclose(detector.detect(image).xyxy, reference.detect(image).xyxy)


def test_builtin_pack_detects_as_the_builtin_detector():
    image, template = _sample()
    found = builtin_pack().load_detector().detect(image, template)
    expected = TemplateDetector(BUILTIN_MODEL).detect(image, template)
    np.testing.assert_allclose(found.xyxy, expected.xyxy)
    assert found.class_names == expected.class_names


def test_builtin_pack_sends_an_image_without_template_to_its_image_only_detector():
    from aivd.packs.pack import BUILTIN_TEMPLATE_FREE

    image, template = _sample()
    detector = builtin_pack().load_detector(tile_size=0)
    assert detector.image_only.path == BUILTIN_TEMPLATE_FREE
    assert detector.image_only.refiner_path == BUILTIN_TEMPLATE_FREE.with_name("deeppcb_image_only_refiner.onnx")
    alone = detector.detect(image)
    np.testing.assert_allclose(alone.xyxy, TemplateDetector(BUILTIN_TEMPLATE_FREE).detect(image).xyxy)
    assert len(alone) and detector.threshold_for(None) != detector.threshold_for(template)


def _run(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "aivd.cli.main", *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _synthetic(tmp_path: Path, layout: str, templates: bool) -> Path:
    from aivd.data.synthetic import SyntheticConfig, write_dataset

    root = tmp_path / f"{layout}-{'templates' if templates else 'alone'}"
    write_dataset(root, 24, SyntheticConfig(size=160, n_defects=(1, 3), seed=3), layout)
    if not templates:
        for folder in ("Templates", "templates"):
            shutil.rmtree(root / folder, ignore_errors=True)
    return root


@pytest.mark.integration
# The synthetic COCO layout keeps its templates as NAME_temp beside NAME_test (COCO has no place for them).
@pytest.mark.parametrize("layout, templates", [("yolo", False), ("voc", True), ("coco", True)])
def test_data_check_train_pack_inspect_eval(tmp_path, layout, templates):
    """What a user with a new line runs, in order, on a data set in each layout, with a tiny time budget."""
    data = _synthetic(tmp_path, layout, templates)
    data_arg = data / "data.yaml" if (data / "data.yaml").is_file() else data
    _run("data", "check", data_arg)
    out = tmp_path / "run"
    _run("train", "pack", "--data", data_arg, "--out", out, "--time-budget", "0.3", "--seed", "1")
    pack = load_pack(out / "pack")
    assert (pack.template_detector is not None) == templates and (pack.image_detector is None) == templates
    card = (out / "pack" / "MODEL_CARD.md").read_text()
    assert "--time-budget 0.3" in card and "Seed 1" in card
    from aivd.data.sources import open_data

    images = [sample.image_path for sample in open_data(data_arg).split("train").samples[:3]]
    _run("inspect", *images, "--pack", out / "pack", "--out", tmp_path / "inspected")
    records = [json.loads(line) for line in (tmp_path / "inspected" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    assert all(d["defect_type"] in pack.labels.names for r in records for d in r["defects"])
    result = json.loads(_run("eval", "--data", data_arg, "--split", "train", "--pack", out / "pack", "--json").stdout)
    assert {"map50", "map50_95", "precision", "recall", "fscore", "per_class", "images", "errors"} <= set(result)
    assert set(result["per_class"]) == set(pack.labels.names)
    assert 0.0 <= result["map50"] <= 1.0 and result["errors"] == 0


@pytest.mark.integration
def test_resume_continues_where_a_run_stopped(tmp_path):
    """A run stopped after its first stage continues with --resume: the detector is not trained again."""
    from aivd.training.pack import PackPlan, train_pack

    data = _synthetic(tmp_path, "voc", False)
    plan = PackPlan(str(data), str(tmp_path / "run"), 0.3, 0, "test")
    seen = []

    def stop_after_detector(stage, record):
        seen.append(stage)
        if stage == "refiner":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_pack(plan, stop_after_detector)
    state = json.loads((tmp_path / "run" / "work" / "state.json").read_text())
    assert list(state["done"]) == ["detector"]
    resumed = []
    record = train_pack(plan, lambda stage, r: resumed.append(stage), resume=True)
    assert "detector" not in resumed and "refiner" in resumed
    assert record["stages"]["detector"] == state["done"]["detector"]
    assert load_pack(tmp_path / "run" / "pack").image_detector is not None


@pytest.mark.integration
def test_publish_a_pack_to_a_model_store(tmp_path):
    folder = _pack(tmp_path / "p")
    version = _run("models", "publish", "--store", tmp_path / "store", folder).stdout.strip()
    published = sorted(path.name for path in (tmp_path / "store" / "versions" / version).iterdir())
    assert {"pack.yaml", BUILTIN_MODEL.name, "deeppcb_refiner.onnx", BUILTIN_CLASSIFIER.name} <= set(published)
    info = json.loads((tmp_path / "store" / "versions" / version / "version.json").read_text())
    assert info["detector"] == BUILTIN_MODEL.name
    (folder / "pack.yaml").write_text("name: [\n")
    result = _run("models", "publish", "--store", tmp_path / "store", folder, check=False)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_cluster_config_takes_a_pipeline_file_relative_to_it_and_says_where_the_old_pack_key_went(tmp_path):
    from aivd.pipeline.factory import edge_classes
    from aivd.runtime.config import ConfigError, load_cluster_config

    config = tmp_path / "cluster.yaml"
    (tmp_path / "pipeline.yaml").write_text(f"edge: {{pack: {_pack(tmp_path / 'p')}}}\ncloud: {{backend: none}}\n")
    config.write_text("edge: [{name: a}]\npipeline: pipeline.yaml\n")
    pipeline = load_cluster_config(config).pipeline
    assert pipeline.cloud.backend == "none" and edge_classes(pipeline.edge)[1].name == "copy"
    (tmp_path / "pipeline.yaml").write_text("edge: {pack: p, model: x.onnx}\n")
    with pytest.raises(ConfigError, match=r"pipeline: .*pipeline.yaml: edge: give edge.pack or edge.model, not both"):
        load_cluster_config(config)
    config.write_text(f"edge: [{{name: a}}]\npack: {tmp_path / 'p'}\ncloud: {{enabled: false}}\n")
    with pytest.raises(ConfigError, match=r"pack: now pipeline.edge.pack; cloud.enabled: now pipeline.cloud.backend"):
        load_cluster_config(config)
    config.write_text("edge: [{name: a}]\n")
    assert edge_classes(load_cluster_config(config).pipeline.edge)[1].name == "deeppcb"


@pytest.mark.integration
def test_deeppcb_split_without_templates_drops_them(tmp_path):
    """`--templates none` applies to a DeepPCB split too (it used to be ignored), and `--template` is refused there."""
    _run("synth", "--out", tmp_path / "data", "--count", "6", "--size", "320")
    _run("inspect", "--deeppcb", tmp_path / "data", "--split", "test", "--templates", "none", "--edge-only", "--out", tmp_path / "out")
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert records and all(r["status"] == "ok" and r["template"] is None for r in records)
    refused = _run("inspect", "--deeppcb", tmp_path / "data", "--template", SAMPLES / "00041200_temp.jpg", "--out", tmp_path / "x",
                   check=False)
    assert refused.returncode == 2 and "--template does not apply to --deeppcb" in refused.stderr


@pytest.mark.integration
def test_bench_inspect_runs_a_pack_on_any_data(tmp_path):
    data = _synthetic(tmp_path, "voc", False)
    result = json.loads(_run("bench", "inspect", "--data", data, "--split", "train", "--pack", _pack(tmp_path / "p"),
                             "--edge-only", "--limit", "4").stdout)
    assert result["images"] == 4 and result["pipeline"] == "pack:copy"


def test_detector_training_resumes_from_its_last_epoch(tmp_path):
    """Two epochs, stopped after the first, then resumed: the same history as two epochs in one go."""
    from aivd.core import DEEPPCB_CLASSES
    from aivd.data.synthetic import SyntheticConfig, generate_pair
    from aivd.training.common import seed_everything
    from aivd.training.detector import DetectorRun, DetectorTrainConfig, fit_detector, loaded_sample

    pairs = [generate_pair(i, SyntheticConfig(size=128, n_defects=(1, 2))) for i in range(6)]
    images = [loaded_sample(p.image_id, p.test, None, p.ground_truth, 1.0) for p in pairs]
    config = DetectorTrainConfig(batch_size=3, input_scale=1.0, crop=128).without_templates()

    def select(predictions):
        return {"score": float(sum(len(d) for _, d, _ in predictions)), "threshold": 0.5}

    def fit(out, epochs, stop_after=None, resume=False):
        def progress(record):
            if record["epoch"] == stop_after:
                raise KeyboardInterrupt

        seed_everything(0, 1)
        return fit_detector(images[:4], images[4:], out, config, DetectorRun(DEEPPCB_CLASSES, select, epochs=epochs), progress, resume)

    straight = fit(tmp_path / "straight", 2)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "stopped", 2, stop_after=1)
    resumed = fit(tmp_path / "stopped", 2, resume=True)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
