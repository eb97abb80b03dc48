import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.data.deeppcb import default_root
from aivd.serving.server import ServerSettings, server_config

SAMPLES = Path(__file__).resolve().parents[1] / "aivd" / "data" / "samples" / "deeppcb"


@contextmanager
def serving(app, settings: ServerSettings = ServerSettings()):
    """The app under a real uvicorn, as `aivd serve cloud` runs it, on a free port of 127.0.0.1; yields its base URL."""
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


# No schema can say "a valid PNG", so a request the schema allows may still be refused (422): every other check
# (no 5xx, documented status codes, content types and bodies) applies.
UNEXPRESSIBLE = [positive_data_acceptance]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _fuzz_operation(operation, mode, excluded) -> None:
    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case):
        case.call_and_validate(excluded_checks=excluded)

    call()


def fuzz(schema) -> list[str]:
    """Fuzzes an HTTP API with schemathesis from its OpenAPI document against the real server: no 5xx, and every
    answer (status code, content type, body) as the document says; fixed seed, bounded examples. Runs every
    operation of `schema` with valid and invalid data; returns their names. Hypothesis raises the first failure,
    shrunk."""
    names = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # Without a body or parameters there is nothing to make invalid.
        inputs = len(operation.body) + len(operation.query) + len(operation.path_parameters)
        # Multipart form fields travel as untyped text: a boolean "made invalid" for a file or a string field
        # arrives as the valid text "true", so such data cannot be expected to be refused.
        multipart = any(body.media_type.startswith("multipart/") for body in operation.body)
        excluded = UNEXPRESSIBLE + ([negative_data_rejection] if multipart else [])
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 2 if inputs else 1]:
            _fuzz_operation(operation, mode, excluded)
        names.append(f"{operation.method.upper()} {operation.path}")
    return names


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
