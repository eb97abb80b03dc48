"""The cloud tier's parts that need no server: regions, pixel measurements, the knowledge base, the schema,
the built-in analyzer and the edge-cloud pipeline."""

import json

import cv2
import numpy as np
import pytest
from conftest import SAMPLES, dets

from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.cloud.knowledge import KnowledgeBase, KnowledgeError
from aivd.cloud.measure import measure
from aivd.core import Region, cut_regions
from aivd.data.deeppcb import read_annotation
from aivd.data.images import read_pair
from aivd.edge.detector import load_detector
from aivd.pipeline.engine import EdgeCloudPipeline
from aivd.schema.analysis import Measurements, Severity, analysis_json_schema


def board(*bars) -> np.ndarray:
    """White background with dark copper bars, as DeepPCB's binarised images are."""
    image = np.full((80, 80), 255, np.uint8)
    for x1, y1, x2, y2 in bars:
        cv2.rectangle(image, (x1, y1), (x2, y2), 0, -1)
    return image


def region(image, template, box, scale=None) -> Region:
    return Region("r#0", image, template, box, (0, 0), "open", 0.5, scale)


def test_cut_regions_crop_around_each_box_and_map_back_to_the_image():
    image = np.arange(200 * 300, dtype=np.uint32).reshape(200, 300).astype(np.uint8)
    found = dets([[100, 50, 120, 70], [0, 0, 10, 30]], [0.9, 0.4], [1, 2])
    first, second = cut_regions(image, image.copy(), found, "img", pixels_per_mm=48)
    assert first.region_id == "img#0" and first.edge_class == "short" and first.edge_confidence == pytest.approx(0.9)
    assert first.image.shape == (44, 44)  # 2.2 x 20 pixels
    assert first.image_box == pytest.approx((100, 50, 120, 70))
    x, y = first.origin
    assert np.array_equal(first.image, image[y : y + 44, x : x + 44]) and np.array_equal(first.template, first.image)
    # At the border the window is clipped, not padded: the crop holds only real pixels.
    assert second.origin == (0, 0) and second.image_box == pytest.approx((0, 0, 10, 30)) and second.image.shape == (48, 38)
    assert cut_regions(image, None, found, "img")[0].template is None


def test_region_rejects_inconsistent_crops():
    with pytest.raises(ValueError, match="template shape"):
        Region("x#0", np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8), (1, 1, 5, 5), (0, 0), "open", 0.5)
    with pytest.raises(ValueError, match="2-D uint8"):
        Region("x#0", np.zeros((10, 10, 3), np.uint8), None, (1, 1, 5, 5), (0, 0), "open", 0.5)
    with pytest.raises(ValueError, match="x2 >= x1"):
        Region("x#0", np.zeros((10, 10), np.uint8), None, (5, 1, 1, 5), (0, 0), "open", 0.5)


def test_a_bridge_between_two_conductors_joins_them():
    template = board((10, 10, 69, 25), (10, 45, 69, 60))
    test = board((10, 10, 69, 25), (10, 45, 69, 60), (35, 25, 42, 45))
    m = measure(region(test, template, (32, 22, 46, 48), scale=48))
    assert m.joins_conductors is True and m.splits_conductor is False
    assert m.extra_copper_px == 8 * 19 and m.missing_copper_px == 0
    assert m.width_mm == pytest.approx(14 / 48, abs=1e-3) and m.changed_area_mm2 == pytest.approx(152 / 48**2, abs=1e-4)


def test_a_cut_conductor_is_split_and_a_nick_is_not():
    template = board((10, 30, 69, 45))
    cut = board((10, 30, 35, 45), (42, 30, 69, 45))
    nick = board((10, 30, 69, 45))
    nick[30:36, 35:42] = 255
    assert measure(region(cut, template, (32, 28, 46, 48))).splits_conductor is True
    nicked = measure(region(nick, template, (32, 28, 46, 48)))
    assert nicked.splits_conductor is False and nicked.missing_copper_px == 6 * 7
    assert nicked.width_mm is None  # no scale, no millimetres


def test_without_a_template_only_sizes_are_measured():
    m = measure(region(board((10, 30, 69, 45)), None, (32, 28, 46, 48), scale=48))
    assert m.width_mm is not None and m.joins_conductors is None and m.changed_area_px is None


def test_size_area_and_contrast_are_measured_for_every_region():
    dark_spot = board((30, 30, 39, 39))  # cv2 fills both corners: a 10 x 10 spot
    m = measure(region(dark_spot, None, (30, 30, 40, 40), scale=10))
    assert (m.width_px, m.height_px, m.area_px) == (10, 10, 100)
    assert (m.width_mm, m.height_mm, m.area_mm2) == (1.0, 1.0, 1.0)
    assert m.contrast == -255  # black inside, white all round
    bright_spot = 255 - dark_spot
    assert measure(region(bright_spot, None, (30, 30, 40, 40))).contrast == 255
    # The ring is clipped to the crop: a box in the corner still has surroundings on two sides.
    corner = measure(region(board((0, 0, 9, 9)), None, (0, 0, 10, 10)))
    assert corner.contrast == -255
    # A box that fills the crop leaves no ring to compare with.
    assert measure(region(dark_spot, None, (0, 0, 80, 80))).contrast is None


def test_pcb_facts_need_the_flag_and_a_template():
    template = board((10, 10, 69, 25), (10, 45, 69, 60))
    test = board((10, 10, 69, 25), (10, 45, 69, 60), (35, 25, 42, 45))
    box = (32, 22, 46, 48)
    pcb_fields = ("changed_area_px", "changed_area_mm2", "extra_copper_px", "missing_copper_px", "joins_conductors", "splits_conductor")
    with_facts = measure(region(test, template, box, scale=48), pcb_facts=True)
    assert all(getattr(with_facts, name) is not None for name in pcb_fields)
    for generic in (measure(region(test, template, box, scale=48), pcb_facts=False), measure(region(test, None, box, scale=48))):
        assert all(getattr(generic, name) is None for name in pcb_fields)
        assert generic.area_px == 14 * 26 and generic.area_mm2 is not None and generic.contrast is not None


@pytest.mark.parametrize("scale", [0.0, 1e-300, float("inf"), float("nan"), -48.0])
def test_an_absurd_scale_leaves_out_the_millimetres(scale):
    template = board((10, 30, 69, 45))
    m = measure(region(board((10, 30, 35, 45), (42, 30, 69, 45)), template, (32, 28, 46, 48), scale=scale))
    assert m.width_mm is m.height_mm is m.area_mm2 is m.changed_area_mm2 is None
    assert m.area_px == 14 * 20 and m.splits_conductor is True
    json.loads(m.model_dump_json())  # finite numbers only: valid JSON


def test_rules_can_use_the_generic_measurements(tmp_path):
    path = tmp_path / "kb.yaml"
    path.write_text(
        "version: 1\nname: steel\nclasses:\n  scratch:\n    summary: A scratch.\n    likely_causes: [rolls]\n"
        "    severity:\n      - {when: {max_side_px: {'>=': 30}}, severity: critical}\n"
        "      - {when: {area_px: {'>=': 200}, contrast: {'<': -50}}, severity: major}\n"
        "    default: minor\n    action: {critical: c, major: b, minor: a}\n")
    base = KnowledgeBase.load(path)
    assert base.subject == "industrial parts"  # the neutral default when the file names none

    def severity(width, height, contrast):
        return base.analysis("scratch", 0.9, True, Measurements(width_px=width, height_px=height, area_px=width * height,
                                                                  contrast=contrast), "scratch").severity
    assert severity(10, 30, 0) is Severity.critical
    assert severity(20, 20, -80) is Severity.major
    assert severity(20, 20, -20) is Severity.minor and severity(10, 10, -80) is Severity.minor


def test_knowledge_base_rules_choose_severity_and_compose_text():
    base = KnowledgeBase.load()
    assert set(base.classes) == {"open", "short", "mousebite", "spur", "copper", "pin-hole"}
    joined = Measurements(width_px=20, height_px=20, width_mm=0.42, height_mm=0.42, joins_conductors=True)
    short = base.analysis("short", 0.93, True, joined, "short")
    assert short.severity is Severity.critical and "separate in the template" in short.description and "0.42 x 0.42 mm" in short.description
    assert short.likely_causes and short.recommended_action.startswith("Reject")
    small = Measurements(width_px=10, height_px=10, width_mm=0.2, height_mm=0.2, changed_area_mm2=0.01)
    assert base.analysis("pin-hole", 0.9, True, small, "pin-hole").severity is Severity.minor
    large = small.model_copy(update={"width_mm": 0.6})
    assert base.analysis("pin-hole", 0.9, True, large, "pin-hole").severity is Severity.major
    # Unknown measurements never satisfy a rule: without a scale the default severity applies.
    assert base.analysis("pin-hole", 0.9, True, Measurements(width_px=40, height_px=40), "pin-hole").severity is Severity.minor
    rejected = base.analysis("spur", 0.1, False, small, "spur")
    assert rejected.severity is None and "false alarm" in rejected.description


@pytest.mark.parametrize(
    "content, message",
    [
        ("version: [", "not valid YAML"),
        ("version: 1\nname: x\nclasses: {open: {summary: s, likely_causes: [], default: fatal, action: {}}}", "classes.open.default"),
        ("version: 1\nname: x\nclasses: {open: {summary: s, likely_causes: [], default: minor, "
         "action: {minor: a, major: b}}}", "no text for severity critical"),
        ("version: 1\nname: x\nclasses: {open: {summary: s, likely_causes: [], default: minor, "
         "severity: [{when: {colour: 1}, severity: major}], action: {minor: a, major: b, critical: c}}}", "unknown measurement colour"),
    ],
)
def test_a_broken_knowledge_base_is_reported_with_its_file(tmp_path, content, message):
    path = tmp_path / "kb.yaml"
    path.write_text(content)
    with pytest.raises(KnowledgeError, match=message) as error:
        KnowledgeBase.load(path)
    assert str(path) in str(error.value)


def test_the_llm_schema_limits_classes_and_leaves_measurements_to_aivd():
    schema = analysis_json_schema(["open", "short"])
    assert schema["properties"]["defect_type"]["enum"] == ["open", "short"]
    assert "measurements" not in schema["properties"] and "measurements" not in schema["required"]
    assert schema["additionalProperties"] is False and "Severity" in schema["$defs"]


def _sample(image_id="00041200"):
    image, template = read_pair(SAMPLES / f"{image_id}_test.jpg", SAMPLES / f"{image_id}_temp.jpg")
    return image, template, read_annotation(SAMPLES / f"{image_id}.txt")


def test_builtin_analyzer_recognises_true_defects_on_bundled_samples():
    analyzer = BuiltinAnalyzer()
    correct = total = 0
    for path in sorted(SAMPLES.glob("*_test.jpg")):
        image, template, truth = _sample(path.stem[:-5])
        analyses = analyzer.analyze(cut_regions(image, template, truth, path.stem, pixels_per_mm=48))
        assert len(analyses) == len(truth)
        for analysis, name in zip(analyses, truth.class_names):
            total += 1
            correct += analysis.is_defect and analysis.defect_type == name
            assert analysis.measurements is not None and analysis.measurements.width_mm is not None
            assert analysis.measurements.joins_conductors is not None
    assert correct / total >= 0.9, f"{correct} of {total}"
    # A generic deployment measures no copper, even where there are templates.
    image, template, truth = _sample()
    generic = BuiltinAnalyzer(threads=1, pcb_facts=False).analyze(cut_regions(image, template, truth, "g", pixels_per_mm=48))
    assert all(a.measurements.joins_conductors is None and a.measurements.area_mm2 is not None for a in generic)


def test_pipeline_with_the_cloud_keeps_verified_defects_and_records_the_rest():
    image, template, truth = _sample()
    pipeline = EdgeCloudPipeline(load_detector(), BuiltinAnalyzer(), pixels_per_mm=48)
    result = pipeline.run(image, template, "00041200")
    assert len(result.defects) == len(result.detections) > 0
    assert all(r.edge_confidence >= pipeline.proposal_threshold for r in result.defects + result.rejected)
    assert all(d.source == "cloud:builtin" and d.severity is not None and d.description for d in result.defects)
    assert all(r.severity is None for r in result.rejected)
    assert list(result.detections.confidence) == sorted(result.detections.confidence, reverse=True)
    assert set(result.timings_ms) == {"detect", "crop", "analyze"}
    assert len(pipeline.detect(image, template)) == len(result.detections)
    assert len(pipeline.detect(image, template, min_confidence=1.01)) == 0  # filters the final scores
    edge_only = EdgeCloudPipeline(load_detector()).run(image, template, "00041200")
    assert all(d.source == "edge" and d.severity is None for d in edge_only.defects)


def test_published_json_schemas_match_the_code():
    import json
    from pathlib import Path

    from aivd.pipeline.schemas import schemas

    docs = Path(__file__).resolve().parents[1] / "docs" / "schema"
    for name, schema in schemas().items():
        assert json.loads((docs / name).read_text()) == schema, f"docs/schema/{name} is stale: run `aivd schema`"


class ShortAnswer:
    """A backend that loses one answer, as a buggy model server might."""

    name = "short"

    def __init__(self, inner):
        self.inner = inner

    def analyze(self, regions):
        return self.inner.analyze(regions)[:-1]

    def close(self):
        pass


def test_a_backend_that_loses_answers_is_a_cloud_failure_and_the_edge_result_stands():
    image, template, _ = _sample()
    detector = load_detector()
    pipeline = EdgeCloudPipeline(detector, ShortAnswer(BuiltinAnalyzer()), proposal_threshold=0.2)
    result = pipeline.run(image, template, "00041200")
    assert "answered" in result.cloud_error and "regions" in result.cloud_error
    assert [d.source for d in result.defects] == ["edge"] * len(detector.detect(image, template))


def test_the_classifier_score_blends_the_edge_score_with_its_weight():
    classifier = BuiltinAnalyzer().classifier
    probs = np.zeros((3, 7), np.float32)
    probs[:, classifier.reject_index] = 0.1
    defect_columns = [i for i in range(7) if i != classifier.reject_index]
    probs[:, defect_columns[2]] = 0.9  # the classifier is sure of the third class for all three regions
    edge = np.array([1.0, 0.25, 0.01])
    names, alone, _ = classifier.decide(probs, edge, edge_weight=0.0)
    _, blended, is_defect = classifier.decide(probs, edge, threshold=0.2, edge_weight=0.5)
    assert names == [classifier.class_names[2]] * 3
    np.testing.assert_allclose(alone, 0.9, rtol=1e-6)  # weight 0: the classifier alone, whatever the edge said
    np.testing.assert_allclose(blended, np.sqrt(edge * 0.9), rtol=1e-6)
    assert is_defect.tolist() == [True, True, False]  # a box the edge barely proposed needs more than the classifier's word
