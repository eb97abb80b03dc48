"""Many edge writers at once (issue 17, item 4): processes that open one new result database together create its
tables once, and records they add into one run at the same time are all stored, none twice."""

import os
import subprocess
import sys
import textwrap

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, select

from aivd.store import ResultStore
from aivd.store.database import defects, images, timings
from aivd.store.migrate import MIGRATIONS

WRITERS, RECORDS = 8, 40
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()

# A writer: opens the store on "open" (all writers get it at once), then adds RECORDS records into the run whose id
# it is sent, each with two defects and two timings, and says "done".
WRITER = textwrap.dedent("""
    import sys
    from aivd.schema.records import DefectRecord, InspectionRecord
    from aivd.store import ResultStore

    url, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert sys.stdin.readline() == "open\\n"
    store = ResultStore(url)
    print(store.schema.before, flush=True)
    run_id = int(sys.stdin.readline())
    for index in range(count):
        store.add(run_id, InspectionRecord(
            image=f"{writer}/{index}.png", image_id=f"{writer}-{index}", template=None, status="ok", error=None, detector="edge",
            defects=[DefectRecord(bbox=(i, i, i + 5.0, i + 5.0), defect_type="open", confidence=0.9, source="edge") for i in range(2)],
            timings_ms={"detect": 1.0, "total": 2.0}))
    store.close()
    print("done", flush=True)
""")


@pytest.mark.integration
def test_writers_in_eight_processes_lose_nothing_and_double_nothing(store_url):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the aivd under test, not an installed one
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, store_url, str(writer), str(RECORDS)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
               for writer in range(WRITERS)]
    try:
        for writer in writers:  # all started (imports done in each) before any opens the database
            assert writer.stdin is not None
            writer.stdin.write("open\n")
        for writer in writers:
            writer.stdin.flush()
        opened = [writer.stdout.readline().strip() for writer in writers]
        # The new database was migrated by exactly one of them; the others waited for it and found it current.
        assert sorted(opened) == [HEAD] * (WRITERS - 1) + ["None"], [writer.stderr.read() for writer in writers if writer.poll()]
        with ResultStore(store_url) as store:
            run_id = store.start_run("aivd watch (8 edge writers)", {})
            for writer in writers:
                writer.stdin.write(f"{run_id}\n")
            for writer in writers:
                writer.stdin.flush()
            outputs = [writer.communicate(timeout=120) for writer in writers]
            assert [writer.returncode for writer in writers] == [0] * WRITERS, [stderr for _, stderr in outputs]
            stored = store.records(run_id)
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
    expected = {f"{writer}-{index}" for writer in range(WRITERS) for index in range(RECORDS)}
    assert len(stored) == len(expected) and {record.image_id for record in stored} == expected
    engine = create_engine(store_url)
    with engine.connect() as connection:
        counts = [connection.execute(select(func.count()).select_from(table)).scalar_one() for table in (images, defects, timings)]
    engine.dispose()
    assert counts == [WRITERS * RECORDS, 2 * WRITERS * RECORDS, 2 * WRITERS * RECORDS]
