"""The result database's schema migrations (aivd.store.migrate): databases written by older aivd keep their rows
and reach the newest schema; the migrations build exactly the tables aivd.store.database declares."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select

from aivd.schema.records import DefectRecord, InspectionRecord
from aivd.store import ResultStore, StoreError
from aivd.store.database import defects, images, metadata
from aivd.store.migrate import MIGRATIONS, alembic_config

# SQL dumps of result databases that aivd wrote at these commits, before it versioned its schema: a run of two
# records (made with each commit's own ResultStore, then sqlite3's iterdump).
OLD_DATABASES = Path(__file__).parent / "data" / "store"
REVISIONS = [script.revision for script in reversed(list(ScriptDirectory(str(MIGRATIONS)).walk_revisions()))]
HEAD = REVISIONS[-1]


def schema_differences(url: str) -> list:
    """What Alembic's autogenerate would add or change to make the database match the declared tables."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()


def at_revision(url: str, revision: str, versioned: bool) -> None:
    """Migrate a new database up to `revision`, add a run as the code of that time would, and, unless `versioned`,
    drop alembic_version: what aivd before Alembic left behind."""
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)
        connection.exec_driver_sql("INSERT INTO runs (started_at, command, config) VALUES ('2026-11-23 18:00:00+00', 'aivd inspect old', '{}')")
        if not versioned:
            connection.exec_driver_sql("DROP TABLE alembic_version")
    engine.dispose()


def test_the_migrations_build_the_tables_the_store_declares(store_url):
    """`alembic check`: after the migrations, autogenerate finds nothing to add, drop or change."""
    with ResultStore(store_url) as store:
        assert (store.schema.before, store.schema.after) == (None, HEAD)
    assert schema_differences(store_url) == []
    with ResultStore(store_url) as store:  # opened again: nothing to do
        assert (store.schema.before, store.schema.after) == (HEAD, HEAD)


@pytest.mark.parametrize("revision", REVISIONS)
def test_a_database_from_before_versioning_is_stamped_at_its_revision_and_upgraded(store_url, revision):
    at_revision(store_url, revision, versioned=False)
    with ResultStore(store_url) as store:
        assert (store.schema.before, store.schema.after) == (revision, HEAD)
        assert store.run(1).command == "aivd inspect old"
        assert store.run(1).status is None  # a run older than the column, or added without it
        run_id = store.start_run("aivd watch new", {})
        entry = store.queue_intake(run_id, "/in/a.png", 10, 1, "a")  # intake_files, the newest table, works
        assert entry is not None
        store.add(run_id, InspectionRecord(image="a.png", image_id="a", template=None, status="ok", error=None), entry.id)
        assert store.intake_counts(run_id) == {"done": 1}
    assert schema_differences(store_url) == []


def test_a_versioned_database_at_an_older_revision_is_upgraded(store_url):
    at_revision(store_url, REVISIONS[0], versioned=True)
    with ResultStore(store_url) as store:
        assert (store.schema.before, store.schema.after) == (REVISIONS[0], HEAD)
        assert store.run(1).command == "aivd inspect old"
    assert schema_differences(store_url) == []


def old_sqlite_file(tmp_path, dump: str) -> str:
    """The URL of a SQLite file made from one of OLD_DATABASES' dumps."""
    path = tmp_path / "aivd.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript((OLD_DATABASES / dump).read_text())
    connection.close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize("dump, revision", [("d574e17.sql", "0001"), ("fe89ace.sql", "0002")])
def test_a_sqlite_file_written_by_an_older_aivd_keeps_its_rows(tmp_path, dump, revision):
    url = old_sqlite_file(tmp_path, dump)
    with ResultStore(url) as store:
        assert (store.schema.before, store.schema.after) == (revision, HEAD)
        stored = store.records(1)
        assert store.defect_counts(1) == {"short": 1}
        assert store.run(1).images == 2
    assert [record.image_id for record in stored] == ["00001", "00002"]
    first = stored[0]
    assert first.defects == [DefectRecord(
        bbox=(10.5, 20.0, 42.25, 60.0), defect_type="short", confidence=0.93, source="cloud:builtin", edge_type="spur",
        edge_confidence=0.41, severity="critical", likely_causes=["under-etching"], description="Copper bridges two conductors.",
        recommended_action="Scrap the board.")]
    assert [d.defect_type for d in first.rejected] == ["pin-hole"] and first.defects[0].offload is None
    assert first.timings_ms == {"read": 1.5, "detect": 12.25, "total": 54.25} and first.bytes_to_cloud == 12345
    assert (stored[1].status, stored[1].error) == ("error", "truncated image file")
    assert schema_differences(url) == []


def test_every_revision_downgrades_and_upgrades_again(store_url):
    ResultStore(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    with engine.connect() as connection:
        assert inspect(connection).get_table_names() == ["alembic_version"]
    engine.dispose()
    with ResultStore(store_url) as store:
        assert (store.schema.before, store.schema.after) == (None, HEAD)
    assert schema_differences(store_url) == []


def test_a_database_from_a_newer_aivd_is_refused_in_one_line(store_url):
    ResultStore(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(StoreError, match=r"has schema revision '9999', which this aivd does not know .* written by a newer aivd"):
        ResultStore(store_url)


@pytest.mark.integration
def test_aivd_db_upgrade_says_what_it_did_in_one_line(tmp_path):
    def aivd_db_upgrade(url: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aivd.cli.main", "db", "upgrade", "--db", url],
                              capture_output=True, text=True, timeout=120)

    url = old_sqlite_file(tmp_path, "fe89ace.sql")
    first, second = aivd_db_upgrade(url), aivd_db_upgrade(url)
    assert (first.returncode, first.stdout) == (0, f"{url}: schema upgraded from revision 0002 to {HEAD}\n"), first.stderr
    assert (second.returncode, second.stdout) == (0, f"{url}: schema at revision {HEAD}, up to date\n"), second.stderr
    new = aivd_db_upgrade(f"sqlite:///{tmp_path / 'new.sqlite'}")
    assert new.stdout == f"sqlite:///{tmp_path / 'new.sqlite'}: schema created at revision {HEAD}\n"
    refused = aivd_db_upgrade("postgresql+psycopg://inspector:s3cret@127.0.0.1:1/aivd")  # nothing listens on port 1
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: cannot open the result database postgresql+psycopg://inspector:***@127.0.0.1:1/aivd: ")
    assert refused.stderr.count("\n") == 1 and "s3cret" not in refused.stderr


def test_0008_scores_the_images_of_a_database_at_0007_as_a_new_row_is_scored(store_url):
    """The queue's priority of existing images is backfilled by the migration; their drift stays unknown (null)."""
    engine = create_engine(store_url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0007")
        connection.exec_driver_sql("INSERT INTO runs (started_at, command, config) VALUES ('2026-11-23 18:00:00+00', 'aivd inspect old', '{}')")
        for image_id, status in ((1, "ok"), (2, "ok"), (3, "ok"), (4, "error")):  # ids 1 to 4, as the database numbers them
            connection.execute(images.insert().values(run_id=1, image_id=f"{image_id}", image=f"/b/{image_id}.jpg", status=status,
                                                      bytes_to_cloud=0, bytes_from_cloud=0))
        machine = {"x1": 1, "y1": 1, "x2": 5, "y2": 5, "likely_causes": "[]", "edge_type": None}
        connection.execute(defects.insert(), [
            {**machine, "image_row_id": 1, "rejected": False, "defect_type": "short", "confidence": 0.4, "source": "edge"},
            {**machine, "image_row_id": 1, "rejected": False, "defect_type": "open", "confidence": 0.9, "source": "edge"},
            {**machine, "image_row_id": 2, "rejected": False, "defect_type": "spur", "confidence": 0.9, "source": "cloud", "edge_type": "short"},
            {**machine, "image_row_id": 2, "rejected": True, "defect_type": "spur", "confidence": 0.8, "source": "cloud", "edge_type": "spur"},
        ])
    engine.dispose()
    with ResultStore(store_url) as store:
        assert (store.schema.before, store.schema.after) == ("0007", HEAD)
        new = store.add(1, InspectionRecord(image="/b/5.jpg", image_id="5", template=None, status="ok", error=None, defects=[
            DefectRecord(bbox=(1, 1, 5, 5), defect_type="short", confidence=0.4, source="edge")]))
        with store.engine.connect() as connection:
            rows = connection.execute(select(images.c.id, images.c.priority, images.c.drifted).order_by(images.c.id)).all()
    assert [row.id for row in rows] == [1, 2, 3, 4, new] and [row.drifted for row in rows] == [None] * 5
    assert [row.priority for row in rows] == pytest.approx([0.6, 0.2 + 1 + 1, 0.0, None, 0.6])
    assert rows[0].priority == rows[-1].priority  # to the bit: the same SQL scored both
    assert schema_differences(store_url) == []
