"""Each kind of bad input gets one clear reason naming the file, and never stops the run."""

import json
import shutil
import struct

import cv2
import numpy as np
import pytest
from conftest import SAMPLES

from aivd.data.images import ImageError, read_gray, read_pair
from aivd.edge.detector import TemplateDetector
from aivd.pipeline.inputs import TemplateMode, tasks_from_paths
from aivd.pipeline.inspect import InspectOptions, inspect_tasks

GOOD = SAMPLES / "00041200_test.jpg"


def write_png(path, array):
    ok, data = cv2.imencode(".png", array)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: p.write_bytes(GOOD.read_bytes()[:4000]), "truncated image file"),
        (lambda p: p.write_text("not an image at all"), "not a decodable image"),
        (lambda p: write_png(p, np.zeros((64, 64), np.uint16)), "unsupported bit depth uint16"),
        (lambda p: write_png(p, np.zeros((16, 64), np.uint8)), "unsupported size 64x16"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_image_files_get_a_clear_reason(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageError) as error:
        read_gray(path)
    assert reason in str(error.value)
    assert str(path) in str(error.value)


def five_channel_tiff(width: int = 64, height: int = 64, samples: int = 5) -> bytes:
    """An uncompressed multispectral TIFF (OpenCV cannot encode one), as a camera with extra bands writes."""
    pixels = bytes(width * height * samples)
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, samples, "bps"), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, "data"), (277, 3, 1, samples), (278, 3, 1, height), (279, 4, 1, len(pixels)),
               (284, 3, 1, 1), (338, 3, samples - 1, "extra")]
    bps_at = 8 + 2 + 12 * len(entries) + 4
    offsets = {"bps": bps_at, "extra": bps_at + 2 * samples, "data": bps_at + 2 * samples + 2 * (samples - 1)}
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        if isinstance(value, str):
            out += struct.pack("<HHII", tag, kind, count, offsets[value])
        else:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, count, value)
    return out + struct.pack("<I", 0) + struct.pack(f"<{samples}H", *[8] * samples) + bytes(2 * (samples - 1)) + pixels


def test_multispectral_tiff_is_rejected_without_decoder_noise(tmp_path, capfd):
    path = tmp_path / "bands.tiff"
    path.write_bytes(five_channel_tiff())
    with pytest.raises(ImageError, match="not a decodable image"):
        read_gray(path)
    assert capfd.readouterr().err == ""


def test_colour_and_alpha_images_are_converted_to_grey(tmp_path):
    colour = write_png(tmp_path / "c.png", np.full((64, 80, 3), 200, np.uint8))
    alpha = write_png(tmp_path / "a.png", np.full((64, 80, 4), 100, np.uint8))
    assert read_gray(colour).shape == (64, 80)
    assert read_gray(alpha).shape == (64, 80)


def test_missing_file_and_mismatched_template(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        read_gray(tmp_path / "nope.jpg")
    small = write_png(tmp_path / "t.png", np.zeros((320, 320), np.uint8))
    with pytest.raises(ImageError, match="is 320x320 but the image is 640x640"):
        read_pair(GOOD, small)
    with pytest.raises(ImageError, match=r"template .*empty file"):
        read_pair(GOOD, write_empty(tmp_path / "e.jpg"))


def write_empty(path):
    path.write_bytes(b"")
    return path


def test_template_required_but_missing_is_an_error(tmp_path):
    shutil.copy(GOOD, tmp_path / "board_test.jpg")
    (task,) = tasks_from_paths([tmp_path], TemplateMode.require)
    assert task.error and "no aligned template" in task.error
    (task,) = tasks_from_paths([tmp_path], TemplateMode.auto)
    assert task.error is None and task.template_path is None


def test_a_run_goes_on_past_bad_inputs_and_records_every_one(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLES / "00041200_test.jpg", inputs / "00041200_test.jpg")
    shutil.copy(SAMPLES / "00041200_temp.jpg", inputs / "00041200_temp.jpg")
    (inputs / "a_empty.jpg").write_bytes(b"")
    (inputs / "b_text.png").write_text("hello")
    shutil.copy(SAMPLES / "13000198_test.jpg", inputs / "c_test.jpg")
    write_png(inputs / "c_temp.png", np.zeros((100, 100), np.uint8))  # wrong size template
    tasks = tasks_from_paths([inputs, tmp_path / "missing.jpg"])
    summary = inspect_tasks(tasks, TemplateDetector(), tmp_path / "out", InspectOptions())
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "error", "error", "error", "error"]
    by_image = {r["image"].rsplit("/", 1)[-1]: r for r in records}
    assert "empty file" in by_image["a_empty.jpg"]["error"]
    assert "not a decodable image" in by_image["b_text.png"]["error"]
    assert "100x100 but the image is 640x640" in by_image["c_test.jpg"]["error"]
    assert by_image["missing.jpg"]["error"] == "no such file or folder"
    assert (summary.ok, summary.failed) == (1, 4)
    assert (tmp_path / "out" / "annotated" / "00041200.jpg").is_file()


class ExplodingDetector:
    """A detector that fails on one particular image, as a model can on an input it was never meant for."""

    name = "exploding"
    uses_template = False

    def __init__(self, inner):
        self.inner = inner
        self.labels = inner.labels
        self.min_confidence = inner.min_confidence

    def detect(self, image, template=None, min_confidence=None):
        if image.shape[1] == 700:
            raise RuntimeError("ONNX Runtime: invalid dimensions")
        return self.inner.detect(image, template, min_confidence)


def test_a_detector_failure_on_one_image_is_recorded_and_the_run_goes_on(tmp_path):
    write_png(tmp_path / "a_odd.png", np.full((640, 700), 255, np.uint8))
    shutil.copy(GOOD, tmp_path / "b.jpg")
    records = []
    summary = inspect_tasks(tasks_from_paths([tmp_path]), ExplodingDetector(TemplateDetector()), tmp_path / "out", InspectOptions(), records.append)
    assert [r.status for r in records] == ["error", "ok"]
    assert records[0].error == "detector failed: RuntimeError: ONNX Runtime: invalid dimensions"
    assert (summary.ok, summary.failed) == (1, 1)


def test_images_with_the_same_name_in_different_folders_keep_their_own_outputs(tmp_path):
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        shutil.copy(GOOD, tmp_path / folder / "x.jpg")
    shutil.copy(GOOD, tmp_path / "a" / "x-2.jpg")  # an id the renaming must not reuse
    tasks = tasks_from_paths([tmp_path], TemplateMode.none)
    # Sorted walk: a/x-2.jpg, a/x.jpg, b/x.jpg, c/x.jpg.
    assert [t.image_id for t in tasks] == ["x-2", "x", "x-3", "x-4"]
    inspect_tasks(tasks, TemplateDetector(), tmp_path / "out", InspectOptions())
    assert len(list((tmp_path / "out" / "annotated").iterdir())) == 4
