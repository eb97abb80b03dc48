"""`aivd kb init` and the knowledge base it scaffolds for a new data set's classes."""

import numpy as np
import pytest
from typer.testing import CliRunner

from aivd.cli.main import app
from aivd.cloud.knowledge import KnowledgeBase
from aivd.cloud.knowledge_scaffold import longer_sides, scaffold_knowledge
from aivd.core import Detections, LabelMap
from aivd.data.sources import open_data
from aivd.data.synthetic import SyntheticConfig, write_dataset
from aivd.schema.analysis import Measurements, Severity

NEU_DET = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
runner = CliRunner()


def load(tmp_path, text: str) -> KnowledgeBase:
    path = tmp_path / "kb.yaml"
    path.write_text(text, encoding="utf-8")
    return KnowledgeBase.load(path)


def severity(base: KnowledgeBase, name: str, side: float) -> Severity:
    return base.analysis(name, 0.9, True, Measurements(width_px=side, height_px=side / 2), name).severity


def test_the_scaffold_loads_with_every_class_and_an_action_for_every_severity(tmp_path):
    sides = {name: [float(v) for v in range(10, 50)] for name in NEU_DET}
    base = load(tmp_path, scaffold_knowledge("neu-det", NEU_DET, sides))
    assert base.name == "neu-det" and base.subject == "industrial parts" and list(base.classes) == NEU_DET
    for name, entry in base.classes.items():
        assert entry.summary.startswith("TODO") and name in entry.summary
        assert len(entry.likely_causes) == 1 and name in entry.likely_causes[0]
        assert set(entry.action) == set(Severity) and all(name in text for text in entry.action.values())
        assert entry.default is Severity.minor


def test_boxes_in_the_largest_quarter_of_their_class_are_major(tmp_path):
    sides = {"crazing": [float(v) for v in range(1, 101)], "scratches": [200.0, 200.0, 200.0, 400.0]}
    text = scaffold_knowledge("steel", ["crazing", "scratches", "patches"], sides)
    base = load(tmp_path, text)
    threshold = np.percentile(sides["crazing"], 75)  # 75.25
    assert severity(base, "crazing", threshold + 0.1) is Severity.major
    assert severity(base, "crazing", threshold - 0.1) is Severity.minor
    assert severity(base, "scratches", 250) is Severity.major and severity(base, "scratches", 199) is Severity.minor
    # A class without training boxes has no size rule, and the file says why.
    assert base.classes["patches"].severity == [] and severity(base, "patches", 10_000) is Severity.minor
    assert "no patches boxes in the training split" in text
    assert "75th percentile of the longer sides of 100 crazing boxes" in text


def test_any_class_name_reads_back_unchanged(tmp_path):
    names = ["yes", "1", "null", "a: b", "#hash", "it's \"quoted\"", "rouille é", "trailing "]
    base = load(tmp_path, scaffold_knowledge("odd: name", names, {}))
    assert list(base.classes) == names and base.name == "odd: name"


def test_the_scaffold_refuses_no_classes_and_repeated_ones():
    with pytest.raises(ValueError, match="at least one"):
        scaffold_knowledge("x", [], {})
    with pytest.raises(ValueError, match=r"\['a'\] are named more than once"):
        scaffold_knowledge("x", ["a", "b", "a"], {})


def test_longer_sides_are_collected_per_class():
    labels = LabelMap(("crack", "dent"))
    truths = [
        Detections(np.array([[0, 0, 10, 30], [5, 5, 25, 10]]), np.ones(2), np.array([0, 1]), labels),
        Detections(np.array([[0, 0, 40, 8]]), np.ones(1), np.array([0]), labels),
        Detections.empty(labels),
    ]
    assert longer_sides(truths) == {"crack": [30.0, 40.0], "dent": [20.0]}


def test_kb_init_refuses_to_overwrite_an_existing_file(tmp_path):
    out = tmp_path / "kb.yaml"
    out.write_text("mine\n")
    result = runner.invoke(app, ["kb", "init", "--data", str(tmp_path / "data"), "--out", str(out)])
    assert result.exit_code == 2 and f"{out}: already exists; pass --force" in result.output
    assert out.read_text() == "mine\n"


def test_kb_init_scaffolds_every_class_of_a_data_set_with_size_rules_from_its_training_boxes(tmp_path):
    root = tmp_path / "voc"
    write_dataset(root, 9, SyntheticConfig(size=192, n_defects=(2, 3)), layout="voc")
    broken = sorted((root / "Annotations").glob("*.xml"))[0]
    broken.write_text("<annotation><object><name>open</name></object></annotation>")
    out = tmp_path / "kb" / "voc.yaml"
    result = runner.invoke(app, ["kb", "init", "--data", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"error: {broken}" in result.output  # the bad sample is named and left out; the rest is used
    base = KnowledgeBase.load(out)
    source = open_data(root)
    train, _ = source.training_splits(seed=0)
    assert base.name == "voc" and list(base.classes) == list(source.labels.names)
    for name, sides in longer_sides(sample.truth for sample in train.samples).items():
        (rule,) = base.classes[name].severity
        assert rule.severity is Severity.major and rule.when == {"max_side_px": {">=": round(np.percentile(sides, 75), 1)}}

    again = runner.invoke(app, ["kb", "init", "--data", str(root), "--out", str(out), "--name", "renamed", "--force"])
    assert again.exit_code == 0 and KnowledgeBase.load(out).name == "renamed"
    missing = runner.invoke(app, ["kb", "init", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "x.yaml")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output and not (tmp_path / "x.yaml").exists()
