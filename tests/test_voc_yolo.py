"""Pascal VOC and YOLO files: class-name matching, label lines, the writers' round trips and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.data.dataset import DatasetError
from aivd.data.voc import VocSource, format_voc_annotation, normalise_class_name
from aivd.data.yolo import YoloSource, format_yolo_annotation, label_path, parse_yolo_labels
from tests.conftest import blank_image, write_file


def _voc_xml(*objects: str, filename: str = "board.jpg") -> str:
    return f"<annotation><filename>{filename}</filename>{''.join(objects)}</annotation>"


def _voc_object(name: str, box: tuple = (10, 20, 30, 40)) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _voc_board(root, name: str, *objects: str, filename: str | None = None):
    blank_image(root / "JPEGImages" / f"{name}.jpg")
    return write_file(root / "Annotations" / f"{name}.xml", _voc_xml(*objects, filename=filename or f"{name}.jpg"))


# --- VOC ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("Mouse_bite", "mouse_bite"),
        ("mouse-bite", "mouse_bite"),
        ("  mouse  bite ", "mouse_bite"),
        ("pin-hole", "pin_hole"),
    ],
)
def test_normalise_class_name_ignores_case_and_separators(spelling, key):
    assert normalise_class_name(spelling) == key


def test_voc_classes_are_the_sorted_names_matched_loosely_and_float_coordinates_are_kept(tmp_path):
    _voc_board(tmp_path, "a", _voc_object("mouse_bite", (1.5, 2, 30.25, 40)), _voc_object("open circuit"))
    _voc_board(tmp_path, "b", _voc_object("Mouse-Bite"), _voc_object("MISSING_HOLE"))
    source = VocSource(tmp_path)
    assert source.labels.names == ("MISSING_HOLE", "Mouse-Bite", "open circuit")
    a, b = source.split("train").samples
    assert a.truth.class_names == ["Mouse-Bite", "open circuit"] and b.truth.class_names == ["Mouse-Bite", "MISSING_HOLE"]
    np.testing.assert_array_equal(a.truth.xyxy[0], [1.5, 2, 30.25, 40])
    np.testing.assert_array_equal(a.truth.confidence, 1.0)


def test_a_voc_file_with_no_objects_is_an_image_without_boxes(tmp_path):
    _voc_board(tmp_path, "a")
    (sample,) = VocSource(tmp_path).split("train").samples
    assert len(sample.truth) == 0


def test_format_voc_annotation_reads_back(tmp_path):
    detections = Detections(np.array([[1, 2, 3.5, 4], [5, 6, 7, 8]]), np.ones(2), np.array([5, 0]), DEEPPCB_CLASSES)
    blank_image(tmp_path / "JPEGImages" / "a.jpg")
    write_file(tmp_path / "Annotations" / "a.xml", format_voc_annotation(detections, "a.jpg", 64, 48))
    (sample,) = VocSource(tmp_path).split("train").samples
    np.testing.assert_array_equal(sample.truth.xyxy, detections.xyxy)
    assert sample.truth.class_names == ["pin-hole", "open"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<annotation><object>", "not well-formed XML"),
        (_voc_xml("<object><name>short</name></object>"), "object 1 (short): missing <bndbox>"),
        (_voc_xml(_voc_object("short", (30, 20, 10, 40))), "object 1 (short): box 30,20,10,40 has no area"),
        (_voc_xml(_voc_object("short", (10, "a", 30, 40))), "numeric"),
        (_voc_xml("<object><bndbox/></object>"), "object 1: missing <name>"),
        (_voc_xml(_voc_object("short", (10, 20, 70, 40))), "object 1 (short): box 10,20,70,40 is outside the 64x48 image"),
    ],
)
def test_a_bad_voc_file_is_one_problem_naming_it_and_the_rest_loads(tmp_path, body, message):
    _voc_board(tmp_path, "good", _voc_object("short"))
    blank_image(tmp_path / "JPEGImages" / "bad_board.jpg")
    bad = write_file(tmp_path / "Annotations" / "bad_board.xml", body)
    split = VocSource(tmp_path).split("train")
    assert [s.image_id for s in split.samples] == ["good"]
    assert [p.path for p in split.problems] == [str(bad)] and message in split.problems[0].message


def test_voc_finds_the_image_by_stem_when_filename_is_wrong(tmp_path):
    write_file(tmp_path / "Annotations" / "b1.xml", _voc_xml(_voc_object("spur"), filename="C:\\scans\\renamed.jpg"))
    blank_image(tmp_path / "JPEGImages" / "b1.PNG")
    (sample,) = VocSource(tmp_path).split("train").samples
    assert sample.image_path == tmp_path / "JPEGImages" / "b1.PNG"
    assert sample.template_path is None and sample.truth.class_names == ["spur"]


def test_voc_split_naming_a_missing_annotation_is_a_problem_of_the_list(tmp_path):
    _voc_board(tmp_path, "b1", _voc_object("spur"))
    split_list = write_file(tmp_path / "ImageSets" / "Main" / "test.txt", "b1\n\nb9\n")
    split = VocSource(tmp_path).split("test")
    assert [s.image_id for s in split.samples] == ["b1"]
    assert [str(p) for p in split.problems] == [f"{split_list}: line 3: no annotation {tmp_path / 'Annotations' / 'b9.xml'}"]


def test_voc_needs_an_annotations_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"not a VOC root"):
        VocSource(tmp_path)


# --- YOLO --------------------------------------------------------------------------------------------------------


def _yolo_root(root, labels: dict[str, str], names: str = "[short, spur]", sizes: dict | None = None):
    write_file(root / "data.yaml", f"train: images/train\nnames: {names}\n")
    for name, text in labels.items():
        blank_image(root / "images" / "train" / f"{name}.jpg", *(sizes or {}).get(name, (200, 100)))
        if text is not None:
            write_file(root / "labels" / "train" / f"{name}.txt", text)
    return YoloSource(root / "data.yaml")


def test_label_path_replaces_the_last_images_folder(tmp_path):
    assert label_path(tmp_path / "images" / "x" / "images" / "a.b.jpg") == tmp_path / "images" / "x" / "labels" / "a.b.txt"
    assert label_path(tmp_path / "pics" / "a.png") == tmp_path / "pics" / "a.txt"


def test_yolo_boxes_are_scaled_to_pixels(tmp_path):
    source = _yolo_root(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n\n0 0.1 0.2 0.2 0.2\n"})
    (sample,) = source.split("train").samples
    np.testing.assert_allclose(sample.truth.xyxy, [[75, 25, 125, 75], [0, 10, 40, 30]], atol=1e-4)
    assert sample.truth.class_names == ["spur", "short"] and sample.annotation_path == tmp_path / "labels" / "train" / "a.txt"


def test_yolo_tolerates_rounding_just_past_the_edge_and_clips(tmp_path):
    (sample,) = _yolo_root(tmp_path, {"a": "0 0.9505 0.5 0.1 0.2\n"}).split("train").samples
    assert sample.truth.xyxy[0, 2] == 200


def test_format_yolo_annotation_reads_back():
    detections = Detections(np.array([[10, 20, 50, 60]]), np.ones(1), np.array([3]), DEEPPCB_CLASSES)
    text = format_yolo_annotation(detections, 640, 480)
    assert text == "3 0.046875 0.083333 0.062500 0.083333\n"
    (box,) = parse_yolo_labels(text, len(DEEPPCB_CLASSES))
    np.testing.assert_allclose(np.array(box.xyxy) * (640, 480, 640, 480), detections.xyxy[0], atol=1e-3)
    assert box.class_id == 3 and box.where == "line 1"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "line 2: expected 'class_id cx cy w h' (5 fields), got 4"),
        ("0 0.5 0.5 0.2 0.2 0.9", "(5 fields), got 6"),
        ("0 0.5 1.2 0.2 0.2", "line 2: box 80,110,120,130 is outside the 200x100 image"),
        ("0 0.5 0.5 0 0.2", "line 2: box 100,40,100,60 has no area"),
        ("2 0.5 0.5 0.2 0.2", "line 2: unknown class id 2 (expected 0..1)"),
        ("1.5 0.5 0.5 0.2 0.2", "unknown class id 1.5"),
        ("0 0.5 x 0.2 0.2", "line 2: non-numeric"),
    ],
)
def test_a_bad_yolo_line_is_one_problem_naming_file_and_line(tmp_path, line, message):
    source = _yolo_root(tmp_path, {"bad_board": f"0 0.5 0.5 0.1 0.1\n{line}\n", "good": "1 0.5 0.5 0.1 0.1\n"})
    split = source.split("train")
    assert [s.image_id for s in split.samples] == ["good"]
    assert [p.path for p in split.problems] == [str(tmp_path / "labels" / "train" / "bad_board.txt")]
    assert message in split.problems[0].message


def test_a_missing_or_empty_label_file_means_no_boxes(tmp_path):
    source = _yolo_root(tmp_path, {"a": None, "b": "", "c": "1 0.5 0.5 0.5 0.5\n"})
    (tmp_path / "images" / "train" / "notes.md").write_text("not an image")
    a, b, c = source.split("train").samples
    assert len(a.truth) == 0 and a.annotation_path is None and len(b.truth) == 0
    np.testing.assert_allclose(c.truth.xyxy, [[50, 25, 150, 75]])


@pytest.mark.parametrize(
    "names",
    ["[short, 'spur', \"open circuit\"]  # three", "\n  0: short\n  1: spur\n  # a comment\n  2: 'open circuit'\nnc: 3"],
)
def test_class_names_come_from_data_yaml_as_a_list_or_a_mapping(tmp_path, names):
    source = _yolo_root(tmp_path, {}, names=names)
    assert source.labels.names == ("short", "spur", "open circuit")


def test_data_yaml_name_ids_must_be_numbered_from_zero(tmp_path):
    with pytest.raises(DatasetError, match=r"data.yaml: names: class ids must be 0..N-1, got \[0, 2\]"):
        _yolo_root(tmp_path, {}, names="\n  0: short\n  2: spur")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: images/train\n", r"data.yaml: names: Field required"),
        ("names: [a]\n", r"data.yaml: no train, val or test entry"),
        ("names: [a]\ntrain: [images/train\n", r"data.yaml: not valid YAML"),
        ("- names\n", r"data.yaml: expected a mapping at the top level"),
        ("names: [a, a]\ntrain: images\n", r"data.yaml: names: duplicate class names"),
    ],
)
def test_a_bad_data_yaml_is_one_error_naming_it(tmp_path, text, message):
    with pytest.raises(DatasetError, match=message):
        YoloSource(write_file(tmp_path / "data.yaml", text))


def test_a_missing_split_folder_is_an_error_naming_it(tmp_path):
    source = YoloSource(write_file(tmp_path / "data.yaml", "train: images/train\nval: images/val\nnames: [a]\n"))
    with pytest.raises(DatasetError, match=r"data.yaml: val: .*images/val not found"):
        source.split("val")
    with pytest.raises(DatasetError, match=r"no split 'test' in this yolo data set \(it has: train, val\)"):
        source.split("test")
