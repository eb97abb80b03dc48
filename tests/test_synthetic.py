"""The synthetic DeepPCB generator: deterministic pairs whose boxes say exactly where the test image differs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from aivd.core import DEEPPCB_CLASSES
from aivd.core.detections import box_iou
from aivd.data.deeppcb import load_split, read_annotation
from aivd.data.synthetic import SyntheticConfig, generate_board, generate_pair, inject_defects, write_dataset

N_PAIRS = 20


@pytest.fixture(scope="module")
def pairs():
    return [generate_pair(index) for index in range(N_PAIRS)]


def _boxes(pair) -> np.ndarray:
    return pair.ground_truth.xyxy.astype(int)


def test_same_seed_and_index_give_identical_pairs():
    a, b = generate_pair(7), generate_pair(7)
    assert a.image_id == b.image_id == "00000007"
    assert a.test.tobytes() == b.test.tobytes()
    assert a.template.tobytes() == b.template.tobytes()
    np.testing.assert_array_equal(a.ground_truth.xyxy, b.ground_truth.xyxy)
    np.testing.assert_array_equal(a.ground_truth.class_id, b.ground_truth.class_id)


def test_different_index_or_seed_gives_a_different_board():
    base = generate_pair(3)
    assert generate_pair(4).template.tobytes() != base.template.tobytes()
    assert generate_pair(3, SyntheticConfig(seed=1)).template.tobytes() != base.template.tobytes()


def test_images_are_binarised_black_copper_on_white(pairs):
    for pair in pairs:
        for image in (pair.test, pair.template):
            assert image.shape == (640, 640) and image.dtype == np.uint8
            assert set(np.unique(image)) <= {0, 255}
        copper_fraction = np.mean(pair.template == 0)
        assert 0.03 < copper_fraction < 0.6  # a board, mostly substrate, as DeepPCB's crops are


def test_every_class_appears_and_counts_stay_in_range(pairs):
    seen = set()
    for pair in pairs:
        assert len(pair.ground_truth) <= 10
        assert pair.ground_truth.labels == DEEPPCB_CLASSES
        seen.update(pair.ground_truth.class_names)
    assert seen == set(DEEPPCB_CLASSES.names)
    assert np.mean([len(pair.ground_truth) for pair in pairs]) >= 3


def test_boxes_lie_inside_the_image_and_are_annotator_sized(pairs):
    for pair in pairs:
        boxes = _boxes(pair)
        assert np.all(boxes >= 0) and np.all(boxes <= 640)
        sides = boxes[:, 2:] - boxes[:, :2]
        assert np.all(sides >= 10) and np.all(sides <= 80), sides
        np.testing.assert_array_equal(pair.ground_truth.confidence, 1.0)


def test_boxes_do_not_overlap(pairs):
    for pair in pairs:
        iou = box_iou(pair.ground_truth.xyxy, pair.ground_truth.xyxy)
        np.fill_diagonal(iou, 0)
        assert np.all(iou == 0)


def test_each_box_holds_a_change_and_nothing_changes_outside_the_boxes(pairs):
    for pair in pairs:
        outside = np.ones(pair.test.shape, bool)
        for x1, y1, x2, y2 in _boxes(pair):
            assert np.any(pair.test[y1:y2, x1:x2] != pair.template[y1:y2, x1:x2])
            outside[y1:y2, x1:x2] = False
        np.testing.assert_array_equal(pair.test[outside], pair.template[outside])


def _copper_components(image: np.ndarray) -> int:
    return cv2.connectedComponents((image == 0).astype(np.uint8), connectivity=8)[0] - 1


# Per class: whether it adds copper, and how it changes the number of separate conductors inside its box.
_EFFECTS = {
    "open": (False, +1),
    "short": (True, -1),
    "mousebite": (False, 0),
    "spur": (True, 0),
    "copper": (True, +1),
    "pin-hole": (False, 0),
}


def test_defects_change_the_copper_as_their_class_says(pairs):
    for pair in pairs:
        for (x1, y1, x2, y2), name in zip(_boxes(pair), pair.ground_truth.class_names):
            test, template = pair.test[y1:y2, x1:x2], pair.template[y1:y2, x1:x2]
            adds_copper, component_change = _EFFECTS[name]
            assert (np.sum(test == 0) > np.sum(template == 0)) == adds_copper, name
            assert _copper_components(test) - _copper_components(template) == component_change, name


def test_inject_defects_on_a_given_board_leaves_the_board_alone():
    config = SyntheticConfig(size=320, n_defects=(4, 4))
    board = generate_board(np.random.default_rng(5), config)
    before = board.copy()
    test, truth = inject_defects(board, np.random.default_rng(6), config)
    np.testing.assert_array_equal(board, before)
    assert test.shape == (320, 320) and len(truth) == 4
    assert np.all(truth.xyxy <= 320)


def test_deeppcb_layout_reads_back_with_the_deeppcb_reader(tmp_path):
    write_dataset(tmp_path, 6, layout="deeppcb")
    trainval, test = load_split(tmp_path, "trainval"), load_split(tmp_path, "test")
    assert [s.image_id for s in trainval] == ["00000000", "00000001", "00000003", "00000004"]
    assert [s.image_id for s in test] == ["00000002", "00000005"]
    assert (tmp_path / "PCBData" / "group00000" / "00000" / "00000002_test.jpg").is_file()
    for sample in trainval + test:
        expected = generate_pair(int(sample.image_id))
        truth = read_annotation(sample.annotation_path)
        np.testing.assert_array_equal(truth.xyxy, expected.ground_truth.xyxy)
        np.testing.assert_array_equal(truth.class_id, expected.ground_truth.class_id)
        for path, image in ((sample.image_path, expected.test), (sample.template_path, expected.template)):
            written = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            assert written.shape == image.shape
            assert np.mean(np.abs(written.astype(int) - image)) < 3  # JPEG, as DeepPCB ships


def test_write_dataset_rejects_an_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_dataset(tmp_path, 1, layout="labelme")
