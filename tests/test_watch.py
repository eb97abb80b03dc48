"""`aivd watch` (issue 16, item 4): images inspected as they land in a folder, each exactly once across restarts
and kills, never read half-written, with back-pressure that holds paths rather than images."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from aivd.intake.watch import FolderWatch
from aivd.schema.records import InspectionRecord
from aivd.store import ResultStore, StoreError


def image(path, value: int = 0, side: int = 48):
    """A small PNG whose pixels depend on `value`, so that files differ."""
    pixels = np.random.default_rng(value).integers(0, 255, (side, side), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def record(image_id: str) -> InspectionRecord:
    return InspectionRecord(image=image_id, image_id=image_id, template=None, status="ok", error=None, detector="test", analyzer=None)


@pytest.fixture
def store(store_url):
    """The journal on SQLite and on PostgreSQL."""
    with ResultStore(store_url) as store:
        yield store


class Taken:
    """Tasks taken from a watch on a thread of their own, as the inspector takes them."""

    def __init__(self, watch: FolderWatch):
        self.tasks = []
        self._thread = threading.Thread(target=lambda: self.tasks.extend(watch), daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.tasks) < count:
            assert time.monotonic() < deadline, f"{len(self.tasks)} of {count} tasks came"
            time.sleep(0.02)
        return self.tasks


def test_a_file_version_is_journalled_once_and_its_record_marks_it_done_once(store, tmp_path):
    run = store.start_run("test", {})
    first = store.queue_intake(run, "/in/a.png", 10, 1, "a")
    assert store.queue_intake(run, "/in/a.png", 10, 1, "a") is None  # the same version: never twice
    rewritten = store.queue_intake(run, "/in/a.png", 12, 2, "a")  # a new version, under an id of its own
    assert (first.image_id, rewritten.image_id) == ("a", f"a-{rewritten.id}")
    assert [entry.id for entry in store.queued_intake(run)] == [first.id, rewritten.id]

    store.add(run, record("a"), first.id)
    with pytest.raises(StoreError, match=f"journal entry {first.id} of run {run} is not queued"):
        store.add(run, record("a"), first.id)
    assert [r.image_id for r in store.records(run)] == ["a"]  # the refused record was rolled back with its entry
    assert store.intake_counts(run) == {"done": 1, "queued": 1}
    other_run = store.start_run("test", {})
    with pytest.raises(StoreError):
        store.add(other_run, record("b"), rewritten.id)  # an entry belongs to its run
    assert store.records(other_run) == []


def test_files_there_at_start_and_landing_later_become_tasks_in_order(store, tmp_path):
    folder = tmp_path / "in"
    (folder / "line2").mkdir(parents=True)
    image(folder / "b.png", 1)
    image(folder / "line2" / "a_test.jpg", 2)
    image(folder / "line2" / "a_temp.jpg", 3)  # a template: input to its test image, not inspected itself
    (folder / "notes.txt").write_text("not an image")
    run = store.start_run("test", {})
    with FolderWatch(folder, store, run, settle_s=0.3) as watch:
        taken = Taken(watch)
        taken.wait_for(2)
        image(folder / "c.png", 4)
        (folder / "new").mkdir()
        image(folder / "new" / "d.png", 5)
        tasks = taken.wait_for(4)
        time.sleep(0.5)
    assert [task.image_id for task in tasks] == ["b", "line2-a", "c", "new-d"]
    assert tasks[1].template_path == folder / "line2" / "a_temp.jpg"
    assert [task.intake_id for task in tasks] == [entry.id for entry in store.queued_intake(run)]


def test_a_file_still_being_written_is_taken_only_once_it_is_whole(store, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = (image(tmp_path / "whole.png", 7, side=256)).read_bytes()
    run = store.start_run("test", {})
    with FolderWatch(folder, store, run, settle_s=0.6) as watch:
        taken = Taken(watch)
        with open(folder / "slow.png", "wb") as file:  # no close-after-write event until the end
            for start in range(0, len(data), len(data) // 8):
                file.write(data[start:start + len(data) // 8])
                file.flush()
                time.sleep(0.15)  # slower than the tick, faster than the settling time
            assert taken.tasks == []
        tasks = taken.wait_for(1)
    assert os.path.getsize(tasks[0].image_path) == len(data)
    assert [entry.path for entry in store.queued_intake(run)] == [str(folder / "slow.png")]


def test_a_slow_consumer_holds_back_paths_not_images(store, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(30):
        image(folder / f"{index:02d}.png", index)
    run = store.start_run("test", {})
    with FolderWatch(folder, store, run, queue_size=2, settle_s=0.2) as watch:
        time.sleep(1.0)  # nobody takes: the queue fills and the watcher waits
        assert store.intake_counts(run)["queued"] == 3  # two in the queue, one offered
        tasks = Taken(watch).wait_for(30)
    assert [task.image_id for task in tasks] == [f"{index:02d}" for index in range(30)]


def test_entries_left_queued_are_taken_up_first_and_the_output_folder_is_never_input(store, tmp_path):
    folder = tmp_path / "in"
    out = folder / "out"
    (out / "annotated").mkdir(parents=True)
    image(out / "annotated" / "x.jpg", 1)
    left = image(folder / "left.png", 2)
    run = store.start_run("test", {})
    status = left.stat()
    entry = store.queue_intake(run, str(left), status.st_size, status.st_mtime_ns, "left")
    image(folder / "new.png", 3)
    with FolderWatch(folder, store, run, exclude=(out,)) as watch:
        taken = Taken(watch)
        tasks = taken.wait_for(2)
        time.sleep(0.3)
        assert watch.recovered == 1
    assert [(task.image_id, task.intake_id) for task in tasks] == [("left", entry.id), ("new", entry.id + 1)]


# ---------------------------------------------------------------------------------------------------------------
# The service in subprocesses, killed and restarted while 1,000 images land.

TOTAL = 1000


def start_watch(folder, out, config):
    return subprocess.Popen([sys.executable, "-m", "aivd.cli.main", "watch", folder, "--config", config, "--out", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def done(out) -> int:
    path = out / "aivd.sqlite"
    if not path.is_file():
        return 0
    with sqlite3.connect(path) as connection:
        try:
            return connection.execute("SELECT count(*) FROM intake_files WHERE state = 'done'").fetchone()[0]
        except sqlite3.OperationalError:  # the tables are not created yet
            return 0


def wait_until_done(process, out, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while done(out) < count:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{done(out)} of {count} images done"
        time.sleep(0.05)


def drop(folder, indices) -> None:
    for index in indices:
        image(folder / f"part{index // 100}" / f"{index:04d}.png", index)


@pytest.mark.integration
def test_a_thousand_images_are_each_inspected_once_across_a_kill_and_a_stop(tmp_path):
    folder, out, config = tmp_path / "in", tmp_path / "out", tmp_path / "watch.yaml"
    for part in range(TOTAL // 100):
        (folder / f"part{part}").mkdir(parents=True)
    config.write_text("cloud: {backend: none}\noutputs: {annotate: false, report: false}\n")
    started = time.monotonic()

    first = start_watch(folder, out, config)
    dropping = threading.Thread(target=drop, args=(folder, range(0, 400)))
    dropping.start()  # landing while the service runs
    wait_until_done(first, out, 150)
    first.kill()  # SIGKILL in the middle of it
    first.wait()
    with ResultStore(f"sqlite:///{out / 'aivd.sqlite'}") as store:
        assert store.intake_counts(1)["queued"] > 0  # images were in hand: the next start must take them up
    dropping.join()
    drop(folder, range(400, 600))  # landing while it is down

    second = start_watch(folder, out, config)
    dropping = threading.Thread(target=drop, args=(folder, range(600, 800)))
    dropping.start()
    wait_until_done(second, out, 500)
    second.send_signal(signal.SIGTERM)
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 143 and "Traceback" not in stderr, stderr
    dropping.join()
    drop(folder, range(800, TOTAL))

    third = start_watch(folder, out, config)
    wait_until_done(third, out, TOTAL)
    third.send_signal(signal.SIGTERM)
    _, stderr = third.communicate(timeout=60)
    assert third.returncode == 143, stderr
    elapsed = time.monotonic() - started

    with sqlite3.connect(out / "aivd.sqlite") as connection:
        runs = connection.execute("SELECT count(*), max(status) FROM runs").fetchone()
        images = connection.execute("SELECT image, count(*) FROM images GROUP BY image").fetchall()
        journal = connection.execute("SELECT state, count(*), count(DISTINCT path), count(DISTINCT image_row_id) FROM intake_files "
                                     "GROUP BY state").fetchall()
    expected = {str(folder / f"part{index // 100}" / f"{index:04d}.png") for index in range(TOTAL)}
    assert runs == (1, "interrupted")  # one run, continued by each restart
    assert len(images) == TOTAL and {path for path, _ in images} == expected and all(count == 1 for _, count in images)
    assert journal == [("done", TOTAL, TOTAL, TOTAL)]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == TOTAL and {InspectionRecord.model_validate_json(line).image for line in lines} == expected
    print(f"1,000 images through a SIGKILL, a SIGTERM and two restarts: {elapsed:.1f} s")
    assert elapsed < 90


@pytest.mark.integration
def test_watch_refuses_a_folder_an_output_or_a_config_it_cannot_use_in_one_line_each(tmp_path):
    def refused(*args) -> list[str]:
        result = subprocess.run([sys.executable, "-m", "aivd.cli.main", "watch", *map(str, args)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        return result.stderr.splitlines()

    folder = tmp_path / "in"
    folder.mkdir()
    assert refused(tmp_path / "nowhere", "--out", tmp_path / "out") == [f"error: {tmp_path / 'nowhere'}: no such folder to watch"]
    config = tmp_path / "bad.yaml"
    config.write_text("cloud: {backend: telepathy}\noffload: {budget: 2}\n")
    lines = refused(folder, "--config", config, "--out", tmp_path / "out")
    assert len(lines) == 2 and all(line.startswith(f"error: {config}: ") for line in lines)
    inspected = tmp_path / "inspected"
    image(folder / "a.png")
    subprocess.run([sys.executable, "-m", "aivd.cli.main", "inspect", folder, "--edge-only", "--out", inspected], check=True,
                   capture_output=True, timeout=120)
    assert refused(folder, "--out", inspected) == [f"error: {inspected} holds run 1, which is not a watch of {folder}: give another --out"]
