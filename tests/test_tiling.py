"""Large images detected in overlapping tiles: the merge (exactly, with a fake detector), the template's alignment,
the built-in detector on a large synthetic board, and a 9000 x 9000 scan and a decompression bomb end to end."""

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.core.detections import box_iou
from aivd.data.images import ImageError, read_gray
from aivd.data.synthetic import SyntheticConfig, generate_pair
from aivd.edge.detector import TemplateDetector
from aivd.edge.tiling import TiledDetector, tile_origins
from aivd.pipeline.inputs import tasks_from_paths
from aivd.pipeline.inspect import InspectOptions, inspect_tasks

REPO = Path(__file__).resolve().parents[1]


class WhiteSquareDetector:
    """Boxes the white (255) blobs of its input that the template does not have. A blob touching the input's
    border scores higher than a whole one, so that only the merge's rule, not the scores, makes whole views win."""

    name = "white-squares"
    labels = DEEPPCB_CLASSES
    uses_template = True
    min_confidence = 0.5

    def __init__(self):
        self.calls = []  # (image, template) of each call

    def detect(self, image, template=None, min_confidence=None):
        self.calls.append((image.copy(), None if template is None else template.copy()))
        white = image == 255
        if template is not None:
            white &= template != 255
        _, _, stats, _ = cv2.connectedComponentsWithStats(white.astype(np.uint8), connectivity=4)
        height, width = image.shape
        boxes = np.array([(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:]], np.float32).reshape(-1, 4)
        on_border = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 2] == width) | (boxes[:, 3] == height)
        return Detections(boxes, np.where(on_border, 0.9, 0.6), np.zeros(len(boxes)), self.labels).sorted_by_confidence()


def with_squares(shape, boxes, value=255):
    image = np.zeros(shape, np.uint8)
    for x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = value
    return image


def test_tiles_step_by_tile_minus_overlap_and_the_last_is_shifted_inwards():
    assert tile_origins(3034, 640, 160) == [0, 480, 960, 1440, 1920, 2394]
    assert tile_origins(1586, 640, 160) == [0, 480, 946]
    assert tile_origins(640, 640, 160) == [0]
    tiles = TiledDetector(WhiteSquareDetector(), 640).tiles(3034, 1586)
    assert len(tiles) == 18
    assert all((right - left, bottom - top) == (640, 640) for left, top, right, bottom in tiles)
    # A side longer than 1.5 tiles tiles both axes; a short one fits in a single tile row.
    assert TiledDetector(WhiteSquareDetector(), 640).tiles(2000, 500) == [(0, 0, 640, 500), (480, 0, 1120, 500), (960, 0, 1600, 500), (1360, 0, 2000, 500)]


def test_a_square_straddling_tile_borders_is_found_once_with_its_full_extent():
    squares = [
        (600, 100, 700, 180),  # across the first column's right edge (x = 640)
        (1080, 600, 1160, 680),  # across a tile corner (x = 1120, y = 640)
        (500, 300, 600, 380),  # inside the overlap of two columns: seen whole twice
        (1950, 900, 2000, 960),  # on the image's own border, which cuts nothing
    ]
    image = with_squares((1200, 2000), squares)
    fake = WhiteSquareDetector()
    found = TiledDetector(fake, 640, overlap=160).detect(image)
    assert len(fake.calls) == 12
    assert sorted(map(tuple, found.xyxy.tolist())) == sorted(squares)
    by_box = dict(zip(map(tuple, found.xyxy.tolist()), found.confidence.tolist()))
    # The cut pieces scored 0.9 in their tiles; what is left is the whole views (0.6) and the image-border square.
    assert by_box[squares[0]] == pytest.approx(0.6) and by_box[squares[1]] == pytest.approx(0.6)
    assert by_box[squares[3]] == pytest.approx(0.9)
    assert found.confidence.tolist() == sorted(found.confidence.tolist(), reverse=True)


def test_a_defect_no_tile_sees_whole_is_joined_from_its_pieces():
    # Longer than the 160 px overlap, across x = 640 and x = 1120: every tile holding part of it cuts it.
    long_scratch = (460, 100, 1300, 150)
    image = with_squares((1200, 2000), [long_scratch, (1700, 700, 1750, 750)])
    found = TiledDetector(WhiteSquareDetector(), 640, overlap=160).detect(image)
    assert sorted(map(tuple, found.xyxy.tolist())) == [long_scratch, (1700, 700, 1750, 750)]


def test_the_template_is_cut_with_the_image():
    board = [(x, y, x + 40, y + 40) for x in range(20, 2000, 230) for y in range(30, 1200, 170)]
    template = with_squares((1200, 2000), board)
    defect = (1100, 610, 1150, 660)  # across a tile corner, where a misaligned template would show
    image = template.copy()
    image[defect[1]:defect[3], defect[0]:defect[2]] = 255
    fake = WhiteSquareDetector()
    found = TiledDetector(fake, 640).detect(image, template)
    assert found.xyxy.tolist() == [list(defect)]
    assert len(fake.calls) > 1
    for tile_image, tile_template in fake.calls:
        assert tile_image.shape == tile_template.shape == (640, 640)
        assert np.count_nonzero(tile_image != tile_template) <= 50 * 50  # the defect's pixels at most


def test_an_image_up_to_one_and_a_half_tiles_goes_through_whole():
    fake = WhiteSquareDetector()
    tiled = TiledDetector(fake, 640)
    tiled.detect(with_squares((900, 960), [(10, 10, 20, 20)]))
    assert [call[0].shape for call in fake.calls] == [(900, 960)]
    fake.calls.clear()
    tiled.detect(with_squares((900, 961), [(10, 10, 20, 20)]))
    assert len(fake.calls) == 4


def test_the_wrapper_is_the_wrapped_detector_to_the_outside_and_checks_its_arguments():
    fake = WhiteSquareDetector()
    tiled = TiledDetector(fake, 320)
    assert (tiled.name, tiled.labels, tiled.uses_template, tiled.min_confidence) == ("white-squares", DEEPPCB_CLASSES, True, 0.5)
    assert tiled.overlap == 80
    with pytest.raises(ValueError, match="overlap must be 0..319 px"):
        TiledDetector(fake, 320, overlap=320)
    with pytest.raises(ValueError, match="tile size must be at least 32 px"):
        TiledDetector(fake, 16)
    with pytest.raises(ValueError, match="template shape"):
        tiled.detect(np.zeros((700, 700), np.uint8), np.zeros((700, 600), np.uint8))


def paste_boards(canvas_size=(1586, 3034), offsets=((40, 50), (780, 50), (1520, 50), (2260, 50), (40, 810), (780, 810), (1520, 810), (2260, 810))):
    """Synthetic DeepPCB-like pairs pasted onto a white (substrate) canvas: the test and template canvases, each
    board's ground truth in canvas pixels, and the pairs."""
    test, template = np.full(canvas_size, 255, np.uint8), np.full(canvas_size, 255, np.uint8)
    crowded = SyntheticConfig(n_defects=(10, 14))  # so that a dozen defects fall across inner tile edges
    boards = [generate_pair(index, crowded) for index in range(len(offsets))]
    for pair, (x, y) in zip(boards, offsets):
        test[y:y + 640, x:x + 640], template[y:y + 640, x:x + 640] = pair.test, pair.template
    truth = [pair.ground_truth.xyxy + np.array([x, y, x, y], np.float32) for pair, (x, y) in zip(boards, offsets)]
    return test, template, truth, boards


@pytest.mark.integration
def test_the_built_in_detector_finds_defects_in_every_tile_and_across_tile_borders_once():
    test, template, truth, boards = paste_boards()
    detector = TemplateDetector()
    tiled = TiledDetector(detector, 640)
    found = tiled.detect(test, template)
    inner_edges_x = {x for left, _, right, _ in tiled.tiles(3034, 1586) for x in (left, right)} - {0, 3034}
    inner_edges_y = {y for _, top, _, bottom in tiled.tiles(3034, 1586) for y in (top, bottom)} - {0, 1586}
    straddling = found_straddling = 0
    for board_truth in truth:
        iou = box_iou(board_truth, found.xyxy)
        matched = iou.max(axis=1) > 0.33 if len(found) else np.zeros(len(board_truth), bool)
        assert matched.mean() >= 0.5  # every board, wherever the tiles cut it, has its defects found
        for box, hit in zip(board_truth, matched):
            x1, y1, x2, y2 = box
            crosses = any(x1 < x < x2 for x in inner_edges_x) or any(y1 < y < y2 for y in inner_edges_y)
            centres_inside = np.count_nonzero(
                ((found.xyxy[:, 0] + found.xyxy[:, 2]) / 2 >= x1) & ((found.xyxy[:, 0] + found.xyxy[:, 2]) / 2 <= x2)
                & ((found.xyxy[:, 1] + found.xyxy[:, 3]) / 2 >= y1) & ((found.xyxy[:, 1] + found.xyxy[:, 3]) / 2 <= y2)
            )
            assert centres_inside <= 1, f"defect {box.tolist()} reported {centres_inside} times"
            straddling += crosses
            found_straddling += bool(crosses and hit)
    assert straddling >= 10 and found_straddling >= 0.8 * straddling
    # About as good as the detector on each board alone (boxes move a little with the context around them).
    alone = sum(int((box_iou(p.ground_truth.xyxy, detector.detect(p.test, p.template).xyxy).max(axis=1, initial=0) > 0.33).sum()) for p in boards)
    tiled = sum(int((box_iou(t, found.xyxy).max(axis=1, initial=0) > 0.33).sum()) for t in truth)
    assert tiled >= alone - 2


def write_bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares `width` x `height` grey pixels, with a few bytes of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1 + width))) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header_with_one_error_record(tmp_path):
    bomb = write_bomb_png(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(ImageError, match="unsupported size .*megapixels") as error:
        read_gray(bomb)
    assert str(bomb) in str(error.value)
    records = []
    inspect_tasks(tasks_from_paths([bomb]), WhiteSquareDetector(), tmp_path / "out", InspectOptions(report=False), records.append)
    assert time.perf_counter() - started < 5  # refused, not decoded
    assert [(r.status, r.error) for r in records] == [("error", error.value.reason)]
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 1


def test_a_header_over_the_pixel_limit_names_its_size(tmp_path):
    # 13000 x 12000 = 156 Mpx: sides within limits, pixels over them, below Pillow's own refusal.
    with pytest.raises(ImageError, match=r"unsupported size 13000x12000 \(156 megapixels; at most 150 allowed\)"):
        read_gray(write_bomb_png(tmp_path / "wide.png", 13000, 12000))


@pytest.mark.integration
def test_a_9000_pixel_scan_is_inspected_end_to_end(tmp_path):
    scan = np.full((9000, 9000), 230, np.uint8)
    cv2.rectangle(scan, (4000, 4000), (5200, 4600), 20, -1)
    cv2.imwrite(str(tmp_path / "scan.png"), scan)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "aivd.cli.main", "inspect", str(tmp_path / "scan.png"), "--out", str(tmp_path / "out"), "--edge-only"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["detector"] == "pack:deeppcb"
    assert all(0 <= v <= 9000 for d in record["defects"] for v in d["bbox"])
    assert elapsed < 300, f"took {elapsed:.0f} s"
