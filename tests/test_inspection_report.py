"""The inspection report: one self-contained HTML file with the counts, the worst boards and the failures."""

import base64
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES

from aivd.schema.analysis import Measurements
from aivd.schema.records import DefectRecord, InspectionRecord
from aivd.web import annotated_image_loader, write_inspection_report

CHROMIUM = Path("/usr/bin/chromium")


def defect(name, severity=None, **fields) -> DefectRecord:
    source = "cloud:builtin" if severity else "edge"
    return DefectRecord(bbox=(10, 20, 50, 44), defect_type=name, confidence=0.9, source=source, severity=severity, **fields)


def record(image_id, defects=(), status="ok", error=None, timings=None, **fields) -> InspectionRecord:
    return InspectionRecord(
        image=f"boards/{image_id}_test.jpg", image_id=image_id, template=None, status=status, error=error, detector="centernet",
        defects=list(defects), timings_ms=timings if timings is not None else {}, **fields,
    )


def sample_run() -> list[InspectionRecord]:
    critical = defect(
        "short", "critical", edge_type="spur", edge_confidence=0.45, likely_causes=["under-etching", "film dust"],
        description="Copper <b>bridges</b> two nets & fails", recommended_action="Scrap the board.",
        measurements=Measurements(width_px=40, height_px=24, width_mm=1.02, height_mm=0.61),
    )
    return [
        record("minor-board", [defect("spur", "minor"), defect("spur", "minor"), defect("copper", "minor")],
               timings={"read": 2, "detect": 20, "analyze": 30, "total": 52}, analyzer="builtin",
               bytes_to_cloud=20_000, bytes_from_cloud=1_000),
        record("critical-board", [critical], timings={"read": 1, "detect": 10, "analyze": 40, "total": 51}, analyzer="builtin",
               rejected=[defect("pin-hole", "minor", edge_type="pin-hole", edge_confidence=0.3)],
               bytes_to_cloud=30_000, bytes_from_cloud=2_000),
        record("edge-only-board", [defect("open"), defect("mousebite")], timings={"read": 3, "detect": 30, "total": 33},
               cloud_error="cloud unreachable: connection refused"),
        record("clean-board", timings={"read": 1, "detect": 10, "total": 11}),
        record("broken-file", status="error", error="truncated image file <0 bytes>"),
    ]


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An output folder with real annotated images, as `aivd inspect` leaves it (no image for the failed file)."""
    (tmp_path / "annotated").mkdir()
    samples = sorted(SAMPLES.glob("*_test.jpg"))
    for sample, image_id in zip(samples, ["minor-board", "critical-board", "edge-only-board", "clean-board"]):
        image = cv2.imread(str(sample))
        cv2.rectangle(image, (10, 20), (50, 44), (0, 0, 213), 2)
        cv2.imwrite(str(tmp_path / "annotated" / f"{image_id}.jpg"), image)
    return tmp_path


def test_the_report_has_the_totals_the_worst_boards_first_and_the_failures(out_dir):
    path = write_inspection_report(out_dir, sample_run(), title="Line 3 <night shift>", extra={"model": "centernet"},
                                   image_loader=annotated_image_loader(out_dir))
    assert path == out_dir / "report.html"
    html = path.read_text(encoding="utf-8")

    for count, label in [(5, "images"), (4, "inspected"), (1, "failed"), (3, "images with defects"), (6, "defects"),
                         (1, "candidates rejected by the cloud")]:
        assert f"{count}<small>{label}</small>" in html
    assert "<td>spur</td><td>2</td><td>33.3 %</td>" in html
    assert "<td>minor</td><td>3</td><td>50.0 %</td>" in html and "<td>not rated</td><td>2</td>" in html
    assert "<td>detect</td><td>4</td><td>17.50</td><td>15.00</td>" in html  # mean and median of 20, 10, 30, 10 ms
    assert "<td>analyze</td><td>2</td>" in html and html.index("<td>analyze</td>") < html.index("<td>total</td>")
    assert "<td>50.0 kB</td><td>3.0 kB</td><td>2</td><td>26.5 kB</td>" in html  # bytes to and from the cloud

    # worst first: the critical board, then the one with the most defects; the clean board has no card
    cards = re.findall(r'<div class="card" data-image-id="([^"]+)"', html)
    assert cards == ["critical-board", "minor-board", "edge-only-board"]
    assert "1.02 × 0.61 mm" in html and "40 × 24 px" in html  # millimetres when measured, else the box in pixels
    assert "under-etching; film dust" in html and "edge: spur 0.45" in html
    assert "Rejected by the cloud: pin-hole" in html
    assert "cloud unreachable: connection refused" in html

    # every text escaped: a defect description or an error message cannot inject markup
    assert "Copper &lt;b&gt;bridges&lt;/b&gt; two nets &amp; fails" in html and "<b>bridges</b>" not in html
    assert "<title>Line 3 &lt;night shift&gt;</title>" in html
    assert '<tr class="failed"><td>broken-file</td>' in html and "truncated image file &lt;0 bytes&gt;" in html

    # self-contained: thumbnails are embedded, shrunk to 480 px, and nothing is fetched from elsewhere
    thumbnails = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', html)
    assert len(thumbnails) == 3
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(thumbnails[0]), np.uint8), cv2.IMREAD_COLOR)
    assert max(decoded.shape[:2]) == 480
    assert not re.search(r'(src|href)="(?!data:)', html) and "<link" not in html


def test_a_run_without_defects_or_cloud_still_reports(tmp_path):
    records = [record("clean-board", timings={"read": 1, "detect": 10, "total": 11}), record("bad", status="error", error="empty file")]
    html = write_inspection_report(tmp_path, records).read_text(encoding="utf-8")
    assert "No defects found." in html and "No image has a defect." in html
    assert "Cloud traffic" not in html and 'id="filter-class"' not in html
    assert "<td>critical</td><td>0</td>" in html and "not rated" not in html
    assert "<td>bad</td>" in html and "empty file" in html


def test_the_gallery_is_limited_to_the_worst_images(tmp_path):
    records = [record(f"board-{i}", [defect("open", "minor")] * (i + 1)) for i in range(5)]
    html = write_inspection_report(tmp_path, records, gallery_limit=2).read_text(encoding="utf-8")
    assert re.findall(r'data-image-id="([^"]+)"', html) == ["board-4", "board-3"]
    assert "The 2 worst of 5 images with defects are shown." in html


@pytest.mark.integration
def test_the_report_renders_offline_in_chromium_and_filters_by_class(out_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    path = write_inspection_report(out_dir, sample_run(), image_loader=annotated_image_loader(out_dir))
    requested = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            assert page.title() == "AIVD inspection report"
            cards = page.locator(".card")
            assert cards.count() == 3
            # the thumbnails decoded: the browser knows their size
            widths = page.eval_on_selector_all(".card img", "images => images.map(image => image.naturalWidth)")
            assert widths == [480, 480, 480]
            assert page.text_content("#filter-count") == "3 of 3 images shown"

            page.select_option("#filter-class", "spur")
            visible = [card.get_attribute("data-image-id") for card in cards.all() if card.is_visible()]
            assert visible == ["minor-board"]
            assert page.locator('.card[data-image-id="minor-board"] tr.defect:visible').count() == 2  # the copper row is hidden
            assert page.text_content("#filter-count") == "1 of 3 images shown"

            page.select_option("#filter-class", "")
            page.select_option("#filter-severity", "critical")
            assert [card.get_attribute("data-image-id") for card in cards.all() if card.is_visible()] == ["critical-board"]
            page.select_option("#filter-severity", "")
            assert all(card.is_visible() for card in cards.all())
        finally:
            browser.close()
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
