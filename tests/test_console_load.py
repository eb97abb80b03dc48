"""The console load benchmark's seeding: a database of the shape ResultStore.add writes, seeded, appendable."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, func, select

from aivd.auth.keys import ApiKeys
from aivd.bench.console_load import database_counts, seed_console_db
from aivd.schema.records import InspectionRecord
from aivd.store import ResultStore
from aivd.store.database import defects, images, reviews, runs
from tests.conftest import aivd

END = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def table_rows(url: str, table) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(select(table).order_by(*table.primary_key.columns))]
    finally:
        engine.dispose()


def test_seeded_images_read_back_as_valid_records_and_the_store_goes_on_after_them(store_url):
    seeded = seed_console_db(store_url, 300, days=2, end=END, batch=128)
    assert (seeded.images, seeded.first_image_id, seeded.last_image_id) == (300, 1, 300)
    assert 2_500 < seeded.defects < 3_500  # about ten candidates an image
    with ResultStore(store_url) as store:
        run_id = store.start_run("aivd inspect", {})
        assert run_id == 2  # after the seeded run: PostgreSQL's sequence was moved past the explicit ids
        records = store.records(1)
        assert len(records) == 300
        found = [d for r in records for d in r.defects]
        assert {d.source for d in found} == {"edge", "cloud:classifier"}
        assert {d.severity for d in found if d.source != "edge"} == {"critical", "major", "minor"}
        assert all(d.offload is not None for d in found)
        assert any(r.status == "error" for r in records)  # about 1% fail
        store.add(run_id, InspectionRecord(image="a.jpg", image_id="a", template=None, status="ok", error=None))
        with store.engine.connect() as connection:
            times = connection.execute(select(images.c.inspected_at).where(images.c.run_id == 1).order_by(images.c.id)).scalars().all()
            assert connection.execute(select(func.count()).select_from(reviews)).scalar_one() > 0
    times = [t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in times]  # SQLite gives naive UTC back
    assert times == sorted(times) and END - timedelta(days=2) <= times[0] and times[-1] <= END
    assert database_counts(store_url) == (301, seeded.defects)


def test_seeding_is_determined_by_its_seed_and_appends_after_what_is_there(tmp_path):
    urls = [f"sqlite:///{tmp_path / name}.sqlite" for name in ("a", "b", "c")]
    for url, seed in zip(urls, (0, 0, 1)):
        seed_console_db(url, 60, end=END, seed=seed, batch=25)
    a, b, c = (table_rows(url, defects) for url in urls)
    assert a == b and a != c
    assert table_rows(urls[0], images) == table_rows(urls[1], images)

    again = seed_console_db(urls[0], 40, end=END, batch=25)
    assert (again.images, again.first_image_id, again.last_image_id) == (100, 61, 100)
    assert len(table_rows(urls[0], runs)) == 2


@pytest.mark.integration
def test_bench_console_drives_the_real_server_on_a_seeded_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'console.sqlite'}"
    run = aivd("bench", "console", "--db", url, "--images", 200, "--users", 3, "--duration", 4)
    report = json.loads(run.stdout)
    assert (report["images"], report["backend"]) == (200, "sqlite")
    assert report["failures"] == 0 and report["errors"] == {}, report["errors"]
    reviewer = {"/review", "/api/review/queue", "/api/images/{id}", "/api/classes", "POST /api/reviews"}
    assert {"/api/live", "/api/review/queue", "POST /api/reviews"} <= set(report["endpoints"])  # the live screen, the reviewer
    assert set(report["endpoints"]) - reviewer - {"/api/live"}  # and the operator, whichever pages it chose
    assert all(e["requests"] > 0 and e["p95_ms"] >= e["p50_ms"] for e in report["endpoints"].values())
    assert report["p95_ms_overall"] >= max(e["p50_ms"] for e in report["endpoints"].values())
    with ApiKeys(url) as keys:
        assert keys.active() == 0  # the benchmark's key is revoked after it

    again = json.loads(aivd("bench", "console", "--db", url, "--images", 150, "--users", 1, "--duration", 1).stdout)
    assert again["defects"] == report["defects"]  # seeded already: nothing added
