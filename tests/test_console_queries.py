"""The console's read queries (aivd.console.queries) on a database filled as inspections fill it (ResultStore.add)."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, update

from aivd.console import queries
from aivd.console.queries import ImageFilter
from aivd.schema.records import DefectRecord, InspectionRecord, OffloadNote
from aivd.store import ResultStore
from aivd.store.database import images, reviews

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def defect(name, confidence, severity=None, source="cloud:builtin", sent=True, box=(10, 10, 20, 20)) -> DefectRecord:
    return DefectRecord(bbox=box, defect_type=name, confidence=confidence, source=source, severity=severity,
                        edge_type=name, edge_confidence=confidence, offload=OffloadNote(sent=sent, reason="hard" if sent else "easy"))


def record(image, found=(), rejected=(), status="ok", detector="centernet:v0001", timings=None) -> InspectionRecord:
    return InspectionRecord(image=image, image_id=image.rsplit("/", 1)[-1], template=None, status=status,
                            error="unreadable" if status == "error" else None, detector=detector, defects=list(found),
                            rejected=list(rejected), timings_ms=timings or {"detect": 10.0, "total": 20.0})


@pytest.fixture
def filled(store_url):
    """Two runs: run 1 has 6 images from line-a, run 2 has 4 from line-b; image i was inspected at T0 + i minutes."""
    with ResultStore(store_url) as store:
        first, second = store.start_run("inspect a", {}), store.start_run("inspect b", {})
        specs = [
            (first, "line-a/0.jpg", [defect("open", 0.95, "critical")], [], "ok"),
            (first, "line-a/1.jpg", [defect("short", 0.40, "major")], [defect("spur", 0.2)], "ok"),
            (first, "line-a/2.jpg", [], [], "error"),
            (first, "line-a/3.jpg", [defect("open", 0.55, "minor"), defect("spur", 0.70, "major")], [], "ok"),
            (first, "line-a/4.jpg", [], [defect("open", 0.1)], "ok"),
            (first, "line-a/5.jpg", [defect("copper", 0.99, "minor", source="edge", sent=False)], [], "ok"),
            (second, "line-b/6.jpg", [defect("open", 0.30, "critical")], [], "ok"),
            (second, "line-b/7.jpg", [defect("short", 0.85, "critical")], [], "ok"),
            (second, "line-b/8.jpg", [], [], "ok"),
            (second, "line-b/9.jpg", [defect("pin-hole", 0.65, "minor")], [], "ok"),
        ]
        for run_id, path, found, rejected, status in specs:
            store.add(run_id, record(path, found, rejected, status))
        with store.engine.begin() as connection:
            for index in range(len(specs)):
                connection.execute(update(images).where(images.c.id == index + 1).values(inspected_at=T0 + timedelta(minutes=index)))
            connection.execute(reviews.insert().values(image_row_id=2, reviewer="ann", reviewed_at=T0, verdict="corrected",
                                                       labels=json.dumps([{"bbox": [1, 1, 5, 5], "defect_type": "open", "defect_id": 2}])))
        yield store


def ids(page) -> list[int]:
    return [item.id for item in page.items]


@pytest.mark.parametrize("filters, expected", [
    (ImageFilter(), [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]),
    (ImageFilter(run_id=2), [10, 9, 8, 7]),
    (ImageFilter(source="line-a/"), [6, 5, 4, 3, 2, 1]),
    (ImageFilter(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=5)), [5, 4]),
    (ImageFilter(defect_type="open"), [7, 4, 1]),  # image 5's open is a rejected candidate: not reported
    (ImageFilter(severity="critical"), [8, 7, 1]),
    (ImageFilter(min_confidence=0.5, max_confidence=0.9), [10, 8, 4]),
    (ImageFilter(defect_type="open", max_confidence=0.6), [7, 4]),  # one defect must match class and range at once
    (ImageFilter(defect_type="open", severity="major"), []),
    (ImageFilter(status="error"), [3]),
    (ImageFilter(reviewed=True), [2]),
    (ImageFilter(reviewed=False, run_id=1), [6, 5, 4, 3, 1]),
])
def test_each_filter_selects_exactly_its_images(filled, filters, expected):
    with filled.engine.connect() as connection:
        page = queries.list_images(connection, filters, limit=50)
    assert ids(page) == expected
    assert (page.total, page.total_capped, page.next_after) == (len(expected), False, None)


def test_a_source_prefix_is_matched_literally_not_as_a_pattern(filled):
    with filled.engine.connect() as connection:
        assert ids(queries.list_images(connection, ImageFilter(source="line_a"))) == []
        assert ids(queries.list_images(connection, ImageFilter(source="%"))) == []


def test_pages_by_keyset_cover_every_image_once_newest_first(filled):
    seen, after = [], None
    with filled.engine.connect() as connection:
        while True:
            page = queries.list_images(connection, ImageFilter(), limit=3, after=after)
            seen += ids(page)
            assert page.total == 10
            if page.next_after is None:
                break
            after = page.next_after
    assert seen == list(range(10, 0, -1))


def test_each_page_sums_up_its_images_defects_and_reviews(filled):
    with filled.engine.connect() as connection:
        rows = {row.id: row for row in queries.list_images(connection, ImageFilter(run_id=1)).items}
    assert (rows[4].defects, rows[4].classes, rows[4].worst_severity, rows[4].min_confidence) == (2, {"open": 1, "spur": 1}, "major", 0.55)
    assert (rows[5].defects, rows[5].worst_severity, rows[5].min_confidence) == (0, None, None)
    assert rows[2].reviewed and not rows[1].reviewed
    assert rows[1].inspected_at == T0


def test_a_page_costs_the_same_queries_whatever_its_size(filled):
    """No query per row: a page of 10 images asks as many queries as a page of 1."""
    statements = []

    def count(*_args):
        statements.append(1)

    event.listen(filled.engine, "before_cursor_execute", count)
    try:
        with filled.engine.connect() as connection:
            queries.list_images(connection, ImageFilter(), limit=1)
            one = len(statements)
            statements.clear()
            queries.list_images(connection, ImageFilter(), limit=10)
    finally:
        event.remove(filled.engine, "before_cursor_execute", count)
    assert len(statements) == one == 4  # the page, its defects, its reviews, the bounded count


def test_counts_stop_at_the_limit(filled, monkeypatch):
    monkeypatch.setattr(queries, "COUNT_LIMIT", 4)
    with filled.engine.connect() as connection:
        page = queries.list_images(connection, ImageFilter(), limit=2)
        assert (page.total, page.total_capped) == (4, True)
        exact = queries.list_images(connection, ImageFilter(run_id=2), limit=2)
        assert (exact.total, exact.total_capped) == (4, False)


def test_a_defect_filter_counts_among_the_newest_images_only(filled, monkeypatch):
    monkeypatch.setattr(queries, "COUNT_SCAN", 4)
    with filled.engine.connect() as connection:
        newest = queries.list_images(connection, ImageFilter(defect_type="open"), limit=2)  # opens: 7, 4, 1
        assert (ids(newest), newest.total, newest.total_capped) == ([7, 4], 1, True)  # 7 among 10, 9, 8, 7
        in_run = queries.list_images(connection, ImageFilter(defect_type="open", run_id=2), limit=2)  # 4 images: all read
        assert (in_run.total, in_run.total_capped) == (1, False)
        monkeypatch.setattr(queries, "COUNT_LIMIT", 1)
        many = queries.list_images(connection, ImageFilter(min_confidence=0.5), limit=2)  # 10 and 8 among the newest 4
        assert (many.total, many.total_capped) == (1, True)


def test_an_image_shows_every_region_its_timings_and_reviews(filled):
    with filled.engine.connect() as connection:
        found = queries.image_detail(connection, 2)
        assert queries.image_detail(connection, 999) is None
        assert queries.image_path(connection, 2) == "line-a/1.jpg"
        assert queries.defect_region(connection, found["defects"][1]["id"]) == ("line-a/1.jpg", (10, 10, 20, 20))
    assert [(d["defect_type"], d["rejected"]) for d in found["defects"]] == [("short", False), ("spur", True)]
    assert found["defects"][0]["offload"] == {"sent": True, "reason": "hard", "uncertainty": None, "cutoff": None}
    assert found["timings_ms"] == {"detect": 10.0, "total": 20.0}
    assert [(r["reviewer"], r["verdict"], r["labels"][0]["defect_id"]) for r in found["reviews"]] == [("ann", "corrected", 2)]


def test_runs_list_with_the_images_recorded_so_far(filled):
    with filled.engine.connect() as connection:
        page = queries.list_runs(connection, limit=1)
        assert [(run["id"], run["recorded"], run["status"]) for run in page.items] == [(2, 4, "running")]
        assert page.next_after == 2
        rest = queries.list_runs(connection, limit=1, after=page.next_after)
    assert [(run["id"], run["recorded"]) for run in rest.items] == [(1, 6)]
    assert rest.next_after is None


def test_live_view_covers_the_last_minute_only(filled):
    now = T0 + timedelta(minutes=9, seconds=30)  # images 9 (T0+8 min) and 10 (T0+9 min) are in [now-60 s, now]
    with filled.engine.connect() as connection:
        live = queries.live_stats(connection, now=now, window_s=90)
    assert (live["images"], live["errors"], live["error_rate"]) == (2, 0, 0.0)
    assert live["throughput_per_s"] == pytest.approx(2 / 90)
    assert (live["regions"], live["offloaded"], live["offload_ratio"]) == (1, 1, 1.0)
    assert live["latency_ms"]["total"] == {"p50": 20.0, "p95": 20.0, "count": 2}
    assert live["models"] == {"centernet:v0001": 2}
    assert live["last_detector"] == "centernet:v0001"


def test_live_view_counts_errors_and_regions_kept_on_the_edge(filled):
    now = T0 + timedelta(minutes=5, seconds=30)  # images 3..6 (minutes 2..5): one error, regions of 4, 5 (rejected) and 6 (kept)
    with filled.engine.connect() as connection:
        live = queries.live_stats(connection, now=now, window_s=211)
    assert (live["images"], live["errors"], live["error_rate"]) == (4, 1, 0.25)
    assert (live["regions"], live["offloaded"]) == (4, 3)
