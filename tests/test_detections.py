import numpy as np
import pytest
from conftest import dets

from aivd.core import DEEPPCB_CLASSES, Detections, LabelMap
from aivd.core.detections import box_iou


def test_rejects_inconsistent_lengths_and_bad_boxes():
    with pytest.raises(ValueError, match="lengths differ"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2), DEEPPCB_CLASSES)
    with pytest.raises(ValueError, match="x2 >= x1"):
        dets([[10, 10, 5, 20]])
    with pytest.raises(ValueError, match="class ids"):
        dets([[0, 0, 1, 1]], classes=[6])


def test_is_immutable_and_selectable():
    d = dets([[0, 0, 10, 10], [5, 5, 20, 20]], scores=[0.2, 0.9], classes=[1, 4])
    with pytest.raises(ValueError):
        d.xyxy[0, 0] = 3
    top = d.sorted_by_confidence()
    assert top.class_names == ["copper", "short"]
    assert len(d.with_min_confidence(0.5)) == 1
    assert d[np.array([True, False])].class_names == ["short"]
    assert d.to_records()[1] == {"bbox": [5.0, 5.0, 20.0, 20.0], "defect_type": "copper", "confidence": 0.9}


def test_box_iou_uses_continuous_areas():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]))
    assert iou[0] == pytest.approx([50 / 150, 0.0, 1.0])


def test_merge_concatenates_parts_in_order_and_needs_one_label_map():
    first = dets([[0, 0, 10, 10]], scores=[0.3], classes=[2])
    second = dets([[5, 5, 20, 20], [1, 1, 2, 2]], scores=[0.9, 0.5], classes=[4, 0])
    merged = Detections.merge([first, second])
    assert merged.xyxy.tolist() == [[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]]
    assert merged.class_names == ["mousebite", "copper", "open"]
    assert merged.confidence.tolist() == pytest.approx([0.3, 0.9, 0.5])
    other = Detections(np.array([[0, 0, 1, 1]]), np.ones(1), np.zeros(1), LabelMap(("scratch",)))
    with pytest.raises(ValueError, match="different labels"):
        Detections.merge([first, other])
    with pytest.raises(ValueError, match="different labels"):
        Detections.merge([first], labels=other.labels)


def test_merge_of_nothing_needs_labels():
    with pytest.raises(ValueError, match="needs labels="):
        Detections.merge([])
    empty = Detections.merge([], labels=DEEPPCB_CLASSES)
    assert len(empty) == 0 and empty.labels == DEEPPCB_CLASSES


def test_extra_per_box_fields_follow_selection_clipping_and_merge():
    found = dets([[0, 0, 10, 10], [5, 5, 90, 90], [20, 20, 30, 30]], scores=np.array([0.2, 0.9, 0.5]))
    found = Detections(found.xyxy, found.confidence, found.class_id, found.labels, {"source": np.array(["edge", "cloud", "edge"])})
    ranked = found.sorted_by_confidence()
    assert ranked.data["source"].tolist() == ["cloud", "edge", "edge"]
    assert found.with_min_confidence(0.4).data["source"].tolist() == ["cloud", "edge"]
    assert found.clipped(50, 50).data["source"].tolist() == ["edge", "cloud", "edge"]
    merged = Detections.merge([found[[0]], found[[1, 2]]])
    assert merged.data["source"].tolist() == ["edge", "cloud", "edge"]
    with pytest.raises(ValueError, match="different data fields"):
        Detections.merge([found, dets([[0, 0, 1, 1]])])


def test_extra_fields_need_one_entry_per_box_and_are_copied():
    with pytest.raises(ValueError, match=r"data\['sent'\] must have one entry per box \(2\)"):
        Detections(np.zeros((2, 4)), np.ones(2), np.zeros(2), DEEPPCB_CLASSES, {"sent": np.array([True])})
    flags = np.array([True, False])
    found = Detections(np.zeros((2, 4)), np.ones(2), np.zeros(2), DEEPPCB_CLASSES, {"sent": flags})
    flags[0] = False  # the caller's array stays theirs
    assert found.data["sent"].tolist() == [True, False]
    with pytest.raises(ValueError):
        found.data["sent"][0] = False  # and the Detections' own is read-only
