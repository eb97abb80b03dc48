"""Test-time augmentation (`aivd.edge.tta`): views and their boxes, the fusion, and the built-in detector with it."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from aivd.config import ConfigError
from aivd.config.pipeline import EdgeConfig
from aivd.data.synthetic import SyntheticConfig, generate_pair
from aivd.edge import tta
from aivd.edge.detector import BUILTIN_MODEL, ModelError, TemplateDetector
from aivd.pipeline.factory import build_detector


@pytest.mark.parametrize(("turns", "mirrored"), tta.VIEWS)
def test_a_box_found_in_a_view_maps_back_to_where_it_is_in_the_image(turns, mirrored):
    image = np.zeros((40, 60), np.uint8)  # not square: quarter turns swap the sides
    image[5:12, 30:50] = 255
    ys, xs = np.nonzero(tta.view(image, turns, mirrored))
    in_view = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    assert tta.boxes_from_view(in_view, turns, mirrored, 60, 40).tolist() == [[30, 5, 50, 12]]


def test_overlapping_candidates_of_the_views_are_one_defect_scored_by_their_mean_over_all_views():
    probs = np.array([[0.9, 0.1]], np.float32)
    seen_twice = np.array([[10, 10, 20, 20]], np.float32)
    per_view = [
        (seen_twice, np.array([0.8], np.float32), probs),
        # the same defect, shifted a pixel, plus a duplicate of it in the same view that must not count twice
        (np.array([[11, 10, 21, 20], [10, 11, 20, 21]], np.float32), np.array([0.4, 0.3], np.float32), np.array([[0.5, 0.5], [0.0, 1.0]], np.float32)),
        (np.array([[100, 100, 110, 110]], np.float32), np.array([0.5], np.float32), probs),  # seen by one view only
        (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32)),
    ]
    boxes, objectness, classes = tta.fuse(per_view, min_objectness=0.2)
    assert objectness.tolist() == pytest.approx([(0.8 + 0.4) / 4])  # the lone box: 0.5 / 4 < 0.2
    assert boxes[0].tolist() == pytest.approx([(10 * 0.8 + 11 * 0.4) / 1.2, 10, (20 * 0.8 + 21 * 0.4) / 1.2, 20])
    assert classes[0].tolist() == pytest.approx([(0.9 * 0.8 + 0.5 * 0.4) / 1.2, (0.1 * 0.8 + 0.5 * 0.4) / 1.2])
    boxes, objectness, _ = tta.fuse(per_view, min_objectness=0.1)
    assert objectness.tolist() == pytest.approx([0.3, 0.125])


def test_the_refiner_sees_all_eight_views_of_every_crop_in_one_run():
    crops = np.zeros((3, 2, 4, 4), np.float32)
    crops[:, :, 0, 0] = 1.0  # a mark in a corner: each view moves it to one of the four corners
    calls = []

    def top_left_marked(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        marked = batch[:, 0, 0, 0]
        return np.stack([marked, 1 - marked], axis=1)

    assert calls == [] and tta.mean_over_views(top_left_marked, crops).tolist() == [[0.25, 0.75]] * 3
    assert calls == [24]


def rotated_detections(detections, turns: int, size: int) -> np.ndarray:
    """The boxes of `detections` in `tta.view(image, turns, False)` of a `size`-px square image."""
    boxes = detections.xyxy.astype(np.float64)
    for _ in range(turns):  # a quarter turn counter-clockwise takes (x, y) to (y, size - x)
        boxes = np.stack([boxes[:, 1], size - boxes[:, 2], boxes[:, 3], size - boxes[:, 0]], axis=1)
    return boxes


def test_with_augmentation_the_built_in_detector_gives_the_same_defects_for_a_turned_image():
    # The eight views of a turned image are the eight views of the image, so the fused boxes must turn with it exactly
    # (up to float rounding). The refiner's crops are resampled around the boxes, and a turn moves pixel centres by
    # up to a pixel, so the confidences agree to interpolation, not bit for bit.
    pair = generate_pair(3, SyntheticConfig(size=256, n_defects=(4, 6)))
    detector = TemplateDetector(augment=True, min_confidence=0.05)
    found = detector.detect(pair.test, pair.template)
    assert len(found) >= 3
    for turns in (1, 2):
        turned = detector.detect(tta.view(pair.test, turns, False), tta.view(pair.template, turns, False))
        order = np.lexsort(turned.xyxy.T[::-1])
        expected = rotated_detections(found, turns, 256)
        assert turned.xyxy[order] == pytest.approx(expected[np.lexsort(expected.T[::-1])], abs=1e-3)
        assert sorted(turned.confidence.tolist()) == pytest.approx(sorted(found.confidence.tolist()), abs=2e-3)


def test_augmentation_uses_its_own_calibrated_threshold_and_refuses_a_model_without_one(tmp_path):
    plain, augmented = TemplateDetector(), TemplateDetector(augment=True)
    assert plain.min_confidence == pytest.approx(0.10) and augmented.min_confidence == pytest.approx(0.24)
    model = onnx.load(str(BUILTIN_MODEL))
    kept = [prop for prop in model.metadata_props if prop.key != tta.AUGMENTED_THRESHOLD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / BUILTIN_MODEL.name
    onnx.save(model, str(old))
    shutil.copy(BUILTIN_MODEL.parent / plain.session.metadata["refiner"], tmp_path)
    TemplateDetector(old)  # the plain threshold is still there
    with pytest.raises(ModelError, match=f"no {tta.AUGMENTED_THRESHOLD_KEY}.*--min-confidence"):
        TemplateDetector(old, augment=True)
    assert TemplateDetector(old, min_confidence=0.3, augment=True).min_confidence == 0.3


def test_a_model_store_refuses_augmentation_in_the_config(tmp_path):
    (tmp_path / "versions").mkdir()
    with pytest.raises(ConfigError, match="edge.augment"):
        build_detector(EdgeConfig(model=tmp_path, augment=True))


def test_the_built_in_pack_augments_both_of_its_detectors():
    detector, _ = build_detector(EdgeConfig(augment=True), threads=1)
    assert detector.threshold_for(np.zeros((8, 8), np.uint8)) == pytest.approx(0.24)
    assert detector.threshold_for(None) != TemplateDetector(BUILTIN_MODEL.parent / "deeppcb_image_only.onnx").min_confidence
