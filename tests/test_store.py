"""The result database: records round-trip through a real SQLite file and a real PostgreSQL server, runs append,
bad URLs fail clearly."""

import sys
import time

import pytest
from sqlalchemy import Result, create_engine, func, select

from aivd.schema.analysis import Measurements
from aivd.schema.records import DefectRecord, InspectionRecord
from aivd.store import ResultStore, StoreError
from aivd.store.database import images, runs


def cloud_record(index: int) -> InspectionRecord:
    """An image the cloud analysed: one reported defect with every field, one rejected candidate."""
    return InspectionRecord(
        image=f"boards/{index:05d}_test.jpg", image_id=f"{index:05d}", template=f"boards/{index:05d}_temp.jpg",
        status="ok", error=None, detector="centernet", analyzer="builtin", cloud_error=None,
        defects=[DefectRecord(
            bbox=(10.5, 20.0, 42.25, 60.0), defect_type="short", confidence=0.93, source="cloud:builtin",
            edge_type="spur", edge_confidence=0.41, severity="critical", likely_causes=["under-etching", "dust on the film"],
            description="Copper bridges two conductors.", recommended_action="Scrap the board; check the etcher.",
            measurements=Measurements(width_px=31.75, height_px=40.0, width_mm=0.79, height_mm=1.0, changed_area_px=210,
                                      joins_conductors=True, splits_conductor=False),
        )],
        rejected=[DefectRecord(
            bbox=(100.0, 100.0, 110.0, 112.0), defect_type="pin-hole", confidence=0.2, source="cloud:builtin",
            edge_type="pin-hole", edge_confidence=0.31, description="Texture of the laminate, not a defect.",
            recommended_action="None.",
        )],
        timings_ms={"read": 1.5, "detect": 12.25, "crop": 0.5, "analyze": 40.0, "total": 54.25},
        bytes_to_cloud=12_345, bytes_from_cloud=678,
    )


def edge_record(index: int, classes=("open", "open", "mousebite")) -> InspectionRecord:
    """An edge-only image: defects without any cloud field."""
    return InspectionRecord(
        image=f"boards/{index:05d}_test.jpg", image_id=f"{index:05d}", template=None, status="ok", error=None,
        detector="centernet",
        defects=[DefectRecord(bbox=(i, i, i + 8.0, i + 9.0), defect_type=name, confidence=0.5 + i / 100, source="edge")
                 for i, name in enumerate(classes)],
        timings_ms={"read": 1.0, "detect": 10.0, "total": 11.0},
    )


def error_record(index: int) -> InspectionRecord:
    return InspectionRecord(image=f"boards/{index:05d}_test.jpg", image_id=f"{index:05d}", template=None, status="error",
                            error="truncated image file", detector="centernet")


def read(url: str, query) -> Result:
    """The rows of `query` as another process would see them: on a connection of its own, closed after."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(query).freeze()()
    finally:
        engine.dispose()


def test_records_round_trip_through_the_database(store_url):
    added = [cloud_record(1), edge_record(2), error_record(3), edge_record(4, classes=())]
    with ResultStore(store_url) as store:
        run_id = store.start_run("aivd inspect boards/", {"detector": "centernet", "out": "out"})
        for record in added:
            store.add(run_id, record)
        store.finish_run(run_id, {"images": 4, "ok": 3, "failed": 1, "defects": 4, "wall_s": 1.0})
    with ResultStore(store_url) as reopened:  # read back from the file, not from anything held in memory
        assert reopened.records(run_id) == added
        assert reopened.defect_counts(run_id) == {"open": 2, "mousebite": 1, "short": 1}
    run = read(store_url, select(runs)).one()
    assert (run.images, run.ok, run.failed, run.defects) == (4, 3, 1, 4)
    assert run.finished_at is not None and run.status == "finished" and run.command == "aivd inspect boards/"


def test_runs_append_to_the_same_database(store_url, tmp_path):
    with ResultStore(store_url) as store:
        first = store.start_run("aivd inspect a", {"out": tmp_path})  # a Path in the config is stored as its text
        store.add(first, edge_record(1))
        store.finish_run(first, {"images": 1, "ok": 1, "failed": 0, "defects": 3})
    with ResultStore(store_url) as store:
        second = store.start_run("aivd inspect b", {})
        store.add(second, cloud_record(1))
        store.add(second, cloud_record(2))
        assert second != first
        assert [r.image_id for r in store.records(first)] == ["00001"]
        assert [r.image_id for r in store.records(second)] == ["00001", "00002"]
        assert store.defect_counts(first) == {"open": 2, "mousebite": 1}
        assert store.defect_counts(second) == {"short": 2}  # the rejected candidates are not counted
    rows = read(store_url, select(runs).order_by(runs.c.id)).all()
    assert [row.command for row in rows] == ["aivd inspect a", "aivd inspect b"]
    assert str(tmp_path) in rows[0].config
    assert rows[1].finished_at is None and rows[1].status == "running"  # never finished: the run is marked as incomplete


def test_each_record_is_committed_when_added(store_url):
    """A killed run loses no record it has added: each is in the file, seen by another connection, at once."""
    store = ResultStore(store_url)
    run_id = store.start_run("aivd inspect", {})
    observer = create_engine(store_url)

    def stored() -> int:
        with observer.connect() as connection:
            return connection.execute(select(func.count()).select_from(images)).scalar_one()

    for index in range(3):
        store.add(run_id, edge_record(index))
        assert stored() == index + 1
    if observer.dialect.name == "sqlite":
        with observer.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    store.close()
    store.close()  # closing twice is harmless
    observer.dispose()


def test_a_stopped_run_is_reopened_and_finished_as_interrupted(store_url):
    with ResultStore(store_url) as store:
        run_id = store.start_run("aivd inspect boards/", {"arguments": {"edge_only": True}})
        store.add(run_id, edge_record(1))
        store.finish_run(run_id, {"images": 1, "ok": 1, "failed": 0, "defects": 3}, "interrupted")
        stopped = store.run(run_id)
        assert (stopped.status, stopped.config) == ("interrupted", {"arguments": {"edge_only": True}})
        assert stopped.finished_at is not None
        store.reopen_run(run_id)
        reopened = store.run(run_id)
        assert (reopened.status, reopened.finished_at) == ("running", None)
        with pytest.raises(StoreError, match="has no run 99"):
            store.run(99)


def test_adding_500_records_is_cheap(store_url):
    """A commit per record: SQLite in WAL mode without an fsync per commit, or a local PostgreSQL server, keeps it
    far below an image's inspection."""
    with ResultStore(store_url) as store:
        run_id = store.start_run("aivd inspect", {})
        started = time.perf_counter()
        for index in range(500):
            store.add(run_id, cloud_record(index) if index % 2 else edge_record(index))
        per_image_ms = (time.perf_counter() - started) * 1000 / 500
        stored = store.records(run_id)
    assert len(stored) == 500, f"{per_image_ms:.3f} ms per image"
    print(f"store ({store_url.split(':')[0]}): {per_image_ms:.3f} ms per image added")


@pytest.mark.parametrize("bad_url, reason", [
    ("not a database url", "Could not parse"),
    ("nosuchdatabase://host/db", "Can't load plugin"),
    ("sqlite:///{tmp}/missing/folder/aivd.sqlite", "unable to open database file"),
    ("sqlite:///{tmp}/a-file/aivd.sqlite", "unable to open database file"),
])
def test_a_url_that_cannot_be_opened_raises_store_error(tmp_path, bad_url, reason):
    (tmp_path / "a-file").write_text("a file, not a folder")
    with pytest.raises(StoreError, match=reason):
        ResultStore(bad_url.format(tmp=tmp_path))


def test_a_missing_driver_is_named_and_the_password_hidden(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed, whether or not it is
    with pytest.raises(StoreError, match="driver is not installed") as raised:
        ResultStore("postgresql+psycopg://inspector:s3cret@db.example/aivd")
    assert "s3cret" not in str(raised.value) and "inspector:***@db.example" in str(raised.value)
