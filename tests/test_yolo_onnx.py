"""A user's own detector in the Ultralytics YOLO ONNX export layout."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from aivd.edge.detector import ModelError, YoloOnnxDetector, load_detector


def constant_yolo_model(path, predictions: np.ndarray, names: dict | None, size: int = 640) -> None:
    """An ONNX graph laid out like `yolo export format=onnx`: images (1,3,H,W) -> output0 (1, 4+C, anchors).

    Its output is fixed (a zero-weighted reduction of the input keeps the input wired in), so the expected boxes
    can be computed by hand.
    """
    const = numpy_helper.from_array(predictions[None].astype(np.float32), "predictions")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["predictions", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "yolo", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, *predictions.shape])], [const, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if names is not None:
        model.metadata_props.add(key="names", value=repr(names))
    onnx.save(model, str(path))


def test_boxes_are_mapped_back_through_the_letterbox(tmp_path):
    # Three anchors, two classes. A 1280x640 image is scaled by 0.5 and padded by 160 px top and bottom.
    predictions = np.array([
        [320.0, 320.0, 100.0],  # cx
        [320.0, 320.0, 100.0],  # cy
        [64.0, 60.0, 10.0],  # w
        [32.0, 30.0, 10.0],  # h
        [0.9, 0.2, 0.1],  # class 0 score
        [0.1, 0.8, 0.2],  # class 1 score
    ])
    path = tmp_path / "yolo.onnx"
    constant_yolo_model(path, predictions, {0: "missing_hole", 1: "short"})
    detector = load_detector(path, min_confidence=0.5)
    assert isinstance(detector, YoloOnnxDetector) and detector.labels.names == ("missing_hole", "short")
    found = detector.detect(np.full((640, 1280), 255, np.uint8))
    # Anchor 0 (0.9, class 0) is kept; anchor 1 (0.8, class 1) overlaps it but is another class (per-class NMS);
    # anchor 2 scores 0.2 and is dropped.
    assert found.class_names == ["missing_hole", "short"]
    expected_first = np.array([(320 - 32) * 2, (320 - 16 - 160) * 2, (320 + 32) * 2, (320 + 16 - 160) * 2])
    np.testing.assert_allclose(found.xyxy[0], expected_first, atol=1e-3)
    assert found.confidence.tolist() == pytest.approx([0.9, 0.8])


def test_models_without_names_or_with_the_wrong_layout_are_refused(tmp_path):
    path = tmp_path / "anonymous.onnx"
    constant_yolo_model(path, np.zeros((6, 3)), None)
    with pytest.raises(ModelError, match="no 'names' metadata"):
        load_detector(path)
    wrong = tmp_path / "wrong.onnx"
    constant_yolo_model(wrong, np.zeros((9, 3)), {0: "a", 1: "b"})
    with pytest.raises(ModelError, match="output has 9 rows, expected 4 \\+ 2"):
        load_detector(wrong).detect(np.zeros((64, 64), np.uint8))
