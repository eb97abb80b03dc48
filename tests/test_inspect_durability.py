"""`aivd inspect` runs that are killed, stopped, resumed, rerun or started twice on one output folder (issue 15,
item 9): every record is in both results.jsonl and the database or in neither, and nothing is lost or doubled."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import SAMPLES

from aivd.edge.detector import TemplateDetector
from aivd.pipeline.inputs import tasks_from_paths
from aivd.pipeline.inspect import InspectOptions, inspect_tasks
from aivd.pipeline.run_folder import OutputBusy, OutputLock, ResumeError, read_marker, resume_database, write_marker
from aivd.schema.records import InspectionRecord
from aivd.store import ResultStore
from aivd.store.errors import StoreError

PAIRS = sorted(path.name.removesuffix("_test.jpg") for path in SAMPLES.glob("*_test.jpg"))


def make_boards(folder, copies: int):
    """`copies` renamed copies of each bundled DeepPCB pair: many small images with their templates."""
    folder.mkdir(parents=True)
    for copy in range(copies):
        for pair in PAIRS:
            for kind in ("test", "temp"):
                shutil.copy(SAMPLES / f"{pair}_{kind}.jpg", folder / f"{pair}c{copy:02d}_{kind}.jpg")
    return folder


def written(out) -> list[InspectionRecord]:
    """results.jsonl, every line of which must be a whole record."""
    return [InspectionRecord.model_validate_json(line) for line in (out / "results.jsonl").read_text().splitlines()]


def stored(out) -> tuple[object, list[InspectionRecord]]:
    """The run OUT holds, as its database has it, and its records."""
    run_id = read_marker(out).run_id
    with ResultStore(f"sqlite:///{out / 'aivd.sqlite'}") as store:
        return store.run(run_id), store.records(run_id)


def without_timings(records: list[InspectionRecord]) -> list[InspectionRecord]:
    return [record.model_copy(update={"timings_ms": {}}) for record in records]


# ---------------------------------------------------------------------------------------------------------------
# In process, with the template-difference detector: fast.


@pytest.fixture
def six_boards(tmp_path):
    return make_boards(tmp_path / "boards", copies=1)


def test_a_folder_is_locked_by_one_run_at_a_time(tmp_path):
    held = OutputLock(tmp_path)
    with pytest.raises(OutputBusy, match=rf"is in use by another aivd inspect run \(pid {os.getpid()}\)"):
        OutputLock(tmp_path)
    held.release()
    OutputLock(tmp_path).release()


def test_a_new_run_replaces_the_files_of_the_previous_one_and_the_database_keeps_both(six_boards, tmp_path):
    out = tmp_path / "out"
    inspect_tasks(tasks_from_paths([six_boards]), TemplateDetector(), out, InspectOptions(deeppcb_results=True))
    assert len(list((out / "annotated").iterdir())) == len(list((out / "deeppcb").iterdir())) == 6
    one = tasks_from_paths([six_boards / f"{PAIRS[0]}c00_test.jpg"])
    inspect_tasks(one, TemplateDetector(), out, InspectOptions(report=False))
    assert [record.image_id for record in written(out)] == [f"{PAIRS[0]}c00"]
    assert [path.name for path in (out / "annotated").iterdir()] == [f"{PAIRS[0]}c00.jpg"]
    assert list((out / "deeppcb").iterdir()) == [] and not (out / "report.html").exists()  # not written by this run
    run, records = stored(out)
    assert run.id == 2 and run.status == "finished" and records == written(out)
    with ResultStore(f"sqlite:///{out / 'aivd.sqlite'}") as store:
        assert len(store.records(1)) == 6


def test_a_stopped_run_is_closed_as_interrupted_and_resumed_to_the_same_records(six_boards, tmp_path):
    tasks = tasks_from_paths([six_boards])
    inspect_tasks(tasks, TemplateDetector(), tmp_path / "whole", InspectOptions())
    out, seen = tmp_path / "out", []
    summary = inspect_tasks(tasks, TemplateDetector(), out, InspectOptions(), seen.append, should_stop=lambda: len(seen) >= 1)
    assert summary.interrupted and 1 <= summary.images < 6  # the images in hand are finished, no new one started
    run, records = stored(out)
    assert (run.status, run.images) == ("interrupted", summary.images) and run.finished_at is not None
    assert records == written(out) and (out / "report.html").is_file()

    resumed: list[InspectionRecord] = []
    summary = inspect_tasks(tasks, TemplateDetector(), out, InspectOptions(resume=True), resumed.append)
    assert not summary.interrupted and (summary.images, summary.resumed) == (6, len(records))
    assert [r.image_id for r in resumed] == [t.image_id for t in tasks[len(records):]]  # the done ones are skipped
    run, records = stored(out)
    assert (run.id, run.status, run.images) == (1, "finished", 6)
    assert records == written(out)
    assert without_timings(records) == without_timings(written(tmp_path / "whole"))


def test_a_failing_database_write_ends_the_run_with_its_error_and_the_records_before_it_kept(six_boards, tmp_path, monkeypatch):
    # Records are written on a thread of their own: its failure must still reach the caller, with nothing after the
    # failing image written (a --resume redoes it) and the records before it in both stores.
    add, calls = ResultStore.add, []

    def failing_third(store, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise StoreError("disk full")
        return add(store, *args, **kwargs)

    monkeypatch.setattr(ResultStore, "add", failing_third)
    out, seen = tmp_path / "out", []
    with pytest.raises(StoreError, match="disk full"):
        inspect_tasks(tasks_from_paths([six_boards]), TemplateDetector(), out, InspectOptions(), seen.append)
    assert len(calls) == 3 and len(seen) == 2
    monkeypatch.setattr(ResultStore, "add", add)
    assert [r.image_id for r in stored(out)[1]] == [r.image_id for r in written(out)] == [r.image_id for r in seen]


def test_resume_rewrites_results_jsonl_from_the_database(six_boards, tmp_path):
    """A kill can cut the last line short, or fall between a record's commit and its line: the database decides."""
    tasks, out = tasks_from_paths([six_boards]), tmp_path / "out"
    seen: list[InspectionRecord] = []
    inspect_tasks(tasks, TemplateDetector(), out, InspectOptions(), seen.append, should_stop=lambda: len(seen) >= 2)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-1]) + lines[-1][:40])  # the last line torn
    inspect_tasks(tasks, TemplateDetector(), out, InspectOptions(resume=True))
    _, records = stored(out)
    assert [r.image_id for r in records] == [t.image_id for t in tasks]
    assert written(out) == records


def test_resume_finds_the_run_and_its_database_or_says_why_not(tmp_path):
    with pytest.raises(ResumeError, match="no aivd inspect run to resume"):
        read_marker(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ResumeError, match="run.json: not a run marker"):
        read_marker(tmp_path)
    secret = "postgresql+psycopg://inspector:s3cret@db.example/aivd"
    write_marker(tmp_path, 7, secret)
    marker = read_marker(tmp_path)
    assert marker.run_id == 7 and "s3cret" not in (tmp_path / "run.json").read_text()
    with pytest.raises(ResumeError, match=r"give its URL again with --db"):
        resume_database(tmp_path, marker, "")
    with pytest.raises(ResumeError, match="not in postgresql"):
        resume_database(tmp_path, marker, "postgresql+psycopg://inspector:x@other.example/aivd")
    assert resume_database(tmp_path, marker, secret) == secret
    write_marker(tmp_path, 8, "")
    assert resume_database(tmp_path, read_marker(tmp_path), "") == f"sqlite:///{tmp_path / 'aivd.sqlite'}"


# ---------------------------------------------------------------------------------------------------------------
# The CLI in subprocesses, as a user or a service manager stops it.


def aivd(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aivd.cli.main", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finished(process: subprocess.Popen, code: int) -> str:
    """The stderr of `process` once it has exited with `code`; never a traceback."""
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    return stderr


def wait_for_lines(process: subprocess.Popen, out, count: int) -> None:
    """Until results.jsonl has `count` lines; the run must still be going then."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        path = out / "results.jsonl"
        if path.is_file() and path.read_bytes().count(b"\n") >= count:
            assert process.poll() is None, "the run ended before it could be stopped: give it more images"
            return
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    pytest.fail(f"results.jsonl did not reach {count} lines")


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    return make_boards(tmp_path_factory.mktemp("durability") / "boards", copies=20)


@pytest.fixture(scope="module")
def uninterrupted(boards) -> list[InspectionRecord]:
    """The records of one run over `boards` from start to end."""
    out = boards.parent / "uninterrupted"
    finished(aivd("inspect", boards, "--out", out, "--no-report"), 0)
    return without_timings(written(out))


@pytest.mark.integration
def test_sigkill_leaves_both_stores_agreeing_and_resume_completes_the_run(boards, uninterrupted, tmp_path):
    out = tmp_path / "out"
    run = aivd("inspect", boards, "--out", out)
    wait_for_lines(run, out, 10)
    run.kill()
    run.wait()
    lines, (row, committed) = written(out), stored(out)
    assert row.status == "running" and row.finished_at is None
    # A record's line follows its commit at once: a kill between the two leaves the database one record ahead
    # (never behind, never a line without its record); --resume then rewrites results.jsonl from the database.
    assert committed[: len(lines)] == lines and len(committed) - len(lines) in (0, 1)

    stderr = finished(aivd("inspect", "--resume", out), 0)  # the killed run's lock died with it
    assert f"{len(uninterrupted)} of {len(uninterrupted)} images inspected ({len(committed)} before resuming)" in stderr
    row, records = stored(out)
    assert row.status == "finished" and written(out) == records
    assert without_timings(records) == uninterrupted
    assert sorted(path.stem for path in (out / "annotated").iterdir()) == sorted(r.image_id for r in records)


@pytest.mark.integration
def test_sigterm_and_sigint_close_the_run_and_resume_continues_it(boards, uninterrupted, tmp_path):
    out = tmp_path / "out"
    run = aivd("inspect", boards, "--out", out)
    wait_for_lines(run, out, 5)
    run.send_signal(signal.SIGTERM)
    stderr = finished(run, 143)
    assert f"continue with: aivd inspect --resume {out}" in stderr
    row, records = stored(out)
    assert (row.status, row.images) == ("interrupted", len(records)) and row.finished_at is not None
    assert 5 <= len(records) < len(uninterrupted) and written(out) == records
    assert "Latency" in (out / "report.html").read_text()

    refused = finished(aivd("inspect", "--resume", out, "--edge-only"), 2)
    assert refused.strip() == f"error: --resume continues run {row.id} with its own options: --edge-only was False there; leave it out"

    run = aivd("inspect", "--resume", out)
    wait_for_lines(run, out, len(records) + 5)
    run.send_signal(signal.SIGINT)
    finished(run, 130)
    row, more = stored(out)
    assert row.status == "interrupted" and more[: len(records)] == records and len(more) >= len(records) + 5

    finished(aivd("inspect", "--resume", out), 0)
    row, records = stored(out)
    assert (row.status, row.images) == ("finished", len(uninterrupted)) and written(out) == records
    assert without_timings(records) == uninterrupted


@pytest.mark.integration
def test_a_second_run_on_a_busy_folder_is_refused_and_the_first_completes(boards, uninterrupted, tmp_path):
    out = tmp_path / "out"
    first = aivd("inspect", boards, "--out", out)
    wait_for_lines(first, out, 1)
    refused = finished(aivd("inspect", boards, "--out", out, "--edge-only"), 2)
    assert refused.strip() == f"error: {out} is in use by another aivd inspect run (pid {first.pid})"
    finished(first, 0)
    records = written(out)
    assert without_timings(records) == uninterrupted
    assert json.loads((out / "run.json").read_text())["run_id"] == 1 and stored(out)[1] == records
