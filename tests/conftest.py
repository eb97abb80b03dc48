import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.data.deeppcb import default_root

SAMPLES = Path(__file__).resolve().parents[1] / "aivd" / "data" / "samples" / "deeppcb"


def dets(boxes, scores=None, classes=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else scores
    classes = np.zeros(len(boxes), int) if classes is None else classes
    return Detections(boxes, scores, classes, DEEPPCB_CLASSES)


def write_file(path, text: str):
    """A text file at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def blank_image(path, width: int = 64, height: int = 48):
    """A white grey image file at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), 255, np.uint8))
    return path


@pytest.fixture(scope="session")
def deeppcb_root() -> Path:
    """The real DeepPCB data set. CI sets AIVD_REQUIRE_DATA=1 so that a missing data set fails instead of skipping."""
    root = default_root()
    if root is None or not (root / "PCBData").is_dir():
        if os.environ.get("AIVD_REQUIRE_DATA") == "1":
            pytest.fail("DeepPCB not found: set AIVD_DEEPPCB_ROOT or place it at ../shared/data/deeppcb")
        pytest.skip("DeepPCB data set not available")
    return root


@pytest.fixture(scope="session")
def neu_det_root() -> Path:
    """The real NEU-DET data set (Pascal VOC layout): $AIVD_NEU_DET_ROOT, else ../shared/data/neu-det beside the
    checkout; skipped without it unless AIVD_REQUIRE_DATA=1."""
    root = Path(os.environ.get("AIVD_NEU_DET_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data" / "neu-det")
    if not (root / "Annotations").is_dir():
        if os.environ.get("AIVD_REQUIRE_DATA") == "1":
            pytest.fail("NEU-DET not found: set AIVD_NEU_DET_ROOT or place it at ../shared/data/neu-det")
        pytest.skip("NEU-DET data set not available")
    return root


@pytest.fixture
def one_torch_thread():
    """The tiny VLM is faster on one thread, and much faster than on two when other work shares the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny randomly initialised Qwen2-VL (`aivd.cloud.llm.tiny`), built once per test session."""
    from aivd.cloud.llm.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))
