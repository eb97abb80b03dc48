"""Pascal VOC and YOLO readers: round trips through the synthetic writer, class-name matching and bad files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from aivd.core import DEEPPCB_CLASSES, Detections, LabelMap
from aivd.data.box_samples import BoxSample
from aivd.data.deeppcb import DatasetError
from aivd.data.synthetic import generate_pair, write_dataset
from aivd.data.voc import format_voc_annotation, load_voc_dataset, normalise_class_name, read_voc_annotation
from aivd.data.yolo import format_yolo_annotation, load_yolo_dataset, read_yolo_annotation

# The PKU/HRIPCB classes, as that set's VOC files spell them.
HRIPCB = LabelMap(("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"))


def _voc_xml(*objects: str, filename: str = "board.jpg") -> str:
    return f"<annotation><filename>{filename}</filename>{''.join(objects)}</annotation>"


def _voc_object(name: str, box: tuple = (10, 20, 30, 40)) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _image(path, width: int = 64, height: int = 48):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), 255, np.uint8))
    return path


# --- round trips through the synthetic writer --------------------------------------------------------------------


def test_voc_layout_round_trips_the_generator_boxes(tmp_path):
    write_dataset(tmp_path, 6, layout="voc")
    labels, samples = load_voc_dataset(tmp_path, labels=DEEPPCB_CLASSES)
    assert labels == DEEPPCB_CLASSES
    assert [s.image_id for s in samples] == [f"{i:08d}" for i in range(6)]
    for sample in samples:
        expected = generate_pair(int(sample.image_id)).ground_truth
        truth = sample.ground_truth()
        np.testing.assert_array_equal(truth.xyxy, expected.xyxy)
        np.testing.assert_array_equal(truth.class_id, expected.class_id)
        assert sample.image_path == tmp_path / "JPEGImages" / f"{sample.image_id}.jpg"
        assert sample.template_path == tmp_path / "Templates" / f"{sample.image_id}.jpg"


def test_voc_split_lists_select_samples_in_list_order(tmp_path):
    write_dataset(tmp_path, 6, layout="voc")
    _, test = load_voc_dataset(tmp_path, DEEPPCB_CLASSES, split="test")
    _, trainval = load_voc_dataset(tmp_path, DEEPPCB_CLASSES, split="trainval")
    assert [s.image_id for s in test] == ["00000002", "00000005"]
    assert len(trainval) == 4


def test_voc_without_labels_infers_sorted_names_and_keeps_each_box_class(tmp_path):
    write_dataset(tmp_path, 6, layout="voc")
    labels, samples = load_voc_dataset(tmp_path)
    assert list(labels.names) == sorted(labels.names)
    assert set(labels.names) <= set(DEEPPCB_CLASSES.names)
    for sample in samples:
        expected = generate_pair(int(sample.image_id)).ground_truth
        assert sample.ground_truth().class_names == expected.class_names


def test_yolo_layout_round_trips_the_generator_boxes_within_a_pixel(tmp_path):
    write_dataset(tmp_path, 6, layout="yolo")
    labels, train = load_yolo_dataset(tmp_path, "train")
    _, val = load_yolo_dataset(tmp_path, "val")
    assert labels == DEEPPCB_CLASSES
    assert [s.image_id for s in val] == ["00000002", "00000005"] and len(train) == 4
    for sample in train + val:
        expected = generate_pair(int(sample.image_id)).ground_truth
        truth = sample.ground_truth()
        np.testing.assert_allclose(truth.xyxy, expected.xyxy, atol=1.0)
        np.testing.assert_array_equal(truth.class_id, expected.class_id)
        assert sample.template_path is not None and sample.template_path.is_file()


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


def test_read_voc_matches_class_names_loosely_and_accepts_float_coordinates(tmp_path):
    path = _write(
        tmp_path / "a.xml",
        _voc_xml(_voc_object("Mouse-Bite", (1.5, 2, 30.25, 40)), _voc_object("open circuit"), _voc_object("MISSING_HOLE")),
    )
    truth = read_voc_annotation(path, HRIPCB)
    assert truth.class_names == ["mouse_bite", "open_circuit", "missing_hole"]
    np.testing.assert_array_equal(truth.xyxy[0], [1.5, 2, 30.25, 40])
    np.testing.assert_array_equal(truth.confidence, 1.0)


def test_read_voc_with_no_objects_gives_no_boxes(tmp_path):
    assert len(read_voc_annotation(_write(tmp_path / "a.xml", _voc_xml()), HRIPCB)) == 0


def test_format_voc_annotation_reads_back(tmp_path):
    detections = Detections(np.array([[1, 2, 3.5, 4], [5, 6, 7, 8]]), np.ones(2), np.array([5, 0]), DEEPPCB_CLASSES)
    path = _write(tmp_path / "a.xml", format_voc_annotation(detections, "a.jpg", 640, 640))
    truth = read_voc_annotation(path, DEEPPCB_CLASSES)
    np.testing.assert_array_equal(truth.xyxy, detections.xyxy)
    assert truth.class_names == ["pin-hole", "open"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<annotation><object>", "not well-formed XML"),
        (_voc_xml(_voc_object("short"), _voc_object("scratch")), "object 2: unknown class 'scratch'"),
        (_voc_xml("<object><name>short</name></object>"), "object 1 (short): missing <bndbox>"),
        (_voc_xml(_voc_object("short", (30, 20, 10, 40))), "xmax < xmin"),
        (_voc_xml(_voc_object("short", (10, "a", 30, 40))), "numeric"),
        (_voc_xml("<object><bndbox/></object>"), "object 1: missing <name>"),
    ],
)
def test_bad_voc_files_raise_dataset_errors_naming_the_file(tmp_path, body, message):
    path = _write(tmp_path / "bad_board.xml", body)
    with pytest.raises(DatasetError, match=r"bad_board.xml") as error:
        read_voc_annotation(path, HRIPCB)
    assert message in str(error.value)


def test_load_voc_finds_the_image_by_stem_when_filename_is_wrong(tmp_path):
    _write(tmp_path / "Annotations" / "b1.xml", _voc_xml(_voc_object("spur"), filename="C:\\scans\\renamed.jpg"))
    _image(tmp_path / "JPEGImages" / "b1.PNG")
    _, (sample,) = load_voc_dataset(tmp_path, HRIPCB)
    assert sample.image_path == tmp_path / "JPEGImages" / "b1.PNG"
    assert sample.template_path is None
    assert sample.ground_truth().class_names == ["spur"]


def test_load_voc_fails_early_on_a_missing_image_or_unknown_class(tmp_path):
    _write(tmp_path / "Annotations" / "b1.xml", _voc_xml(_voc_object("spur")))
    with pytest.raises(DatasetError, match=r"b1.xml: no image"):
        load_voc_dataset(tmp_path, HRIPCB)
    _image(tmp_path / "JPEGImages" / "board.jpg")
    with pytest.raises(DatasetError, match=r"b1.xml: object 1: unknown class 'spur'"):
        load_voc_dataset(tmp_path, LabelMap(("short",)))


def test_load_voc_split_naming_a_missing_annotation_fails(tmp_path):
    (tmp_path / "Annotations").mkdir()
    _write(tmp_path / "ImageSets" / "Main" / "test.txt", "\nb9\n")
    with pytest.raises(DatasetError, match=r"test.txt:2: no annotation"):
        load_voc_dataset(tmp_path, HRIPCB, split="test")


def test_load_voc_needs_an_annotations_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"not a VOC root"):
        load_voc_dataset(tmp_path)


# --- YOLO --------------------------------------------------------------------------------------------------------


def test_read_yolo_scales_normalised_boxes_to_pixels(tmp_path):
    path = _write(tmp_path / "a.txt", "1 0.5 0.5 0.25 0.5\n\n0 0.1 0.2 0.2 0.2\n")
    truth = read_yolo_annotation(path, 200, 100, HRIPCB)
    np.testing.assert_allclose(truth.xyxy, [[75, 25, 125, 75], [0, 10, 40, 30]])
    assert truth.class_names == ["mouse_bite", "missing_hole"]


def test_read_yolo_tolerates_rounding_just_past_the_edge_and_clips(tmp_path):
    truth = read_yolo_annotation(_write(tmp_path / "a.txt", "0 1.0005 0.5 0.001 0.2\n"), 100, 100, HRIPCB)
    assert truth.xyxy[0, 2] == 100


def test_format_yolo_annotation_reads_back(tmp_path):
    detections = Detections(np.array([[10, 20, 50, 60]]), np.ones(1), np.array([3]), DEEPPCB_CLASSES)
    text = format_yolo_annotation(detections, 640, 480)
    assert text == "3 0.046875 0.083333 0.062500 0.083333\n"
    truth = read_yolo_annotation(_write(tmp_path / "a.txt", text), 640, 480, DEEPPCB_CLASSES)
    np.testing.assert_allclose(truth.xyxy, detections.xyxy, atol=1e-3)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "(5 fields), got 4"),
        ("0 0.5 0.5 0.2 0.2 0.9", "(5 fields), got 6"),
        ("0 0.5 1.2 0.2 0.2", "normalised to [0, 1]"),
        ("0 -0.01 0.5 0.2 0.2", "normalised to [0, 1]"),
        ("6 0.5 0.5 0.2 0.2", "class id 6 outside 0..5"),
        ("1.5 0.5 0.5 0.2 0.2", "class id 1.5"),
        ("0 0.5 x 0.2 0.2", "non-numeric"),
    ],
)
def test_bad_yolo_lines_raise_dataset_errors_naming_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "bad_board.txt", f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(DatasetError, match=r"bad_board.txt:2: ") as error:
        read_yolo_annotation(path, 100, 100, HRIPCB)
    assert message in str(error.value)


def test_a_missing_label_file_means_no_boxes(tmp_path):
    _write(tmp_path / "classes.txt", "short\nspur\n")
    _image(tmp_path / "images" / "train" / "a.jpg")
    _image(tmp_path / "images" / "train" / "b.png")
    _write(tmp_path / "images" / "train" / "notes.md", "not an image")
    _write(tmp_path / "labels" / "train" / "b.txt", "1 0.5 0.5 0.5 0.5\n")
    labels, (a, b) = load_yolo_dataset(tmp_path)
    assert labels.names == ("short", "spur")
    assert len(a.ground_truth()) == 0
    np.testing.assert_allclose(b.ground_truth().xyxy, [[16, 12, 48, 36]])


@pytest.mark.parametrize(
    "data_yaml",
    [
        "path: ../pcb\ntrain: images/train\nnames: [short, 'spur', \"open circuit\"]  # three\n",
        "train: images/train\nnames:\n  0: short\n  1: spur\n  # a comment\n  2: 'open circuit'\nnc: 3\n",
    ],
)
def test_class_names_come_from_data_yaml_in_either_form(tmp_path, data_yaml):
    _write(tmp_path / "data.yaml", data_yaml)
    (tmp_path / "images" / "train").mkdir(parents=True)
    labels, samples = load_yolo_dataset(tmp_path)
    assert labels.names == ("short", "spur", "open circuit") and samples == []


def test_data_yaml_names_must_be_numbered_from_zero(tmp_path):
    _write(tmp_path / "data.yaml", "names:\n  0: short\n  2: spur\n")
    with pytest.raises(DatasetError, match=r"data.yaml:1: class ids under 'names:' must be 0..N-1"):
        load_yolo_dataset(tmp_path)


def test_yolo_needs_class_names_and_the_split_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"no classes.txt or data.yaml"):
        load_yolo_dataset(tmp_path)
    _write(tmp_path / "classes.txt", "short\n")
    with pytest.raises(DatasetError, match=r"no images/val folder"):
        load_yolo_dataset(tmp_path, "val")


def test_box_sample_rejects_an_unknown_annotation_format(tmp_path):
    sample = BoxSample("a", tmp_path / "a.jpg", None, tmp_path / "a.json", HRIPCB)
    with pytest.raises(DatasetError, match=r"a.json: unsupported annotation format"):
        sample.ground_truth()


def test_box_sample_reports_an_unreadable_image_for_yolo_boxes(tmp_path):
    label = _write(tmp_path / "a.txt", "0 0.5 0.5 0.1 0.1\n")
    sample = BoxSample("a", tmp_path / "missing.jpg", None, label, HRIPCB)
    with pytest.raises(DatasetError, match=r"missing.jpg: cannot read the image"):
        sample.ground_truth()
