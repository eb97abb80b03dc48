"""The model store under concurrent publishers, killed publishers, and version names or files reaching outside it."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from aivd.edge.detector import BUILTIN_MODEL
from aivd.edge.hot_swap import HotSwapDetector
from aivd.model_store import ModelStore, ModelStoreError
from aivd.model_store.store import STAGING_PREFIX, STALE_STAGING_S

REFINER = BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"


def leftovers(store: ModelStore) -> list[str]:
    """What a publish may leave behind in versions/ besides complete versions: staging folders, temporary files."""
    complete = set(store.versions())
    return sorted(path.name for path in store.versions_dir.iterdir() if path.name not in complete)


def assert_complete(store: ModelStore, version: str) -> None:
    info = store.info(version)
    assert info["version"] == version and info["detector"] == BUILTIN_MODEL.name
    folder = store.versions_dir / version
    assert sorted(path.name for path in folder.iterdir()) == sorted([BUILTIN_MODEL.name, REFINER.name, "version.json"])
    assert store.detector_path(version).read_bytes() == BUILTIN_MODEL.read_bytes()
    assert (folder / REFINER.name).read_bytes() == REFINER.read_bytes()


def test_publishers_in_threads_get_distinct_complete_versions(tmp_path):
    store = ModelStore(tmp_path)
    published, start = [], threading.Barrier(8)

    def publish():
        start.wait()  # all at once, so that they race for the same numbers
        published.append(ModelStore(tmp_path).publish(BUILTIN_MODEL, [REFINER]))

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(published) == store.versions() == [f"v{n:04d}" for n in range(1, 9)]
    for version in published:
        assert_complete(store, version)
    assert leftovers(store) == []


@pytest.mark.integration
def test_ten_concurrent_cli_publishes_give_ten_complete_versions(tmp_path):
    """The issue's figure: ten `aivd models publish` into one fresh store at once."""
    store_dir = tmp_path / "store"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-m", "aivd.cli.main", "models", "publish", str(BUILTIN_MODEL), "--store", str(store_dir)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment) for _ in range(10)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * 10, [stderr for _, stderr in outputs]
    printed = sorted(stdout.strip() for stdout, _ in outputs)
    store = ModelStore(store_dir)
    assert printed == store.versions() == [f"v{n:04d}" for n in range(1, 11)]
    for version in printed:
        assert_complete(store, version)  # the refiner the detector's metadata names came along
    assert leftovers(store) == []
    plant_evil_version(tmp_path / "evil")
    promote = subprocess.run([sys.executable, "-m", "aivd.cli.main", "models", "promote", "../../evil", "--store", str(store_dir)],
                             capture_output=True, text=True, timeout=120, cwd=store_dir / "versions")
    assert promote.returncode == 2 and promote.stderr.strip() == f"error: {store_dir}: '../../evil' is not a version name (v0001, v0002, ...)"
    assert store.current() is None and not (store_dir / "CURRENT").exists()


# A publish in its own process, killed (SIGKILL: nothing runs after it) right after the first call of the named
# function on a path whose name matches the pattern.
KILLED_PUBLISH = textwrap.dedent("""
    import os, re, shutil, signal, sys
    from aivd.model_store import ModelStore

    module, name, pattern, store, detector, refiner = sys.argv[1:]
    owner = {"os": os, "shutil": shutil}[module]
    original = getattr(owner, name)

    def killed(path, *args, **kwargs):
        result = original(path, *args, **kwargs)
        if re.fullmatch(pattern, os.path.basename(str(path))):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, killed)
    ModelStore(store).publish(detector, [refiner])
""")


@pytest.mark.parametrize("module, function, pattern, moment", [
    ("os", "mkdir", r"\.staging-.*", "after making its staging folder"),
    ("shutil", "copy2", ".*", "after copying the detector into its staging folder"),
    ("os", "mkdir", r"v\d+", "after claiming the version folder, before moving anything in"),
    ("os", "replace", ".*onnx", "after moving one file into the version folder"),
    ("os", "fsync", ".*", "while writing version.json"),
])
def test_a_publish_killed_at_any_moment_is_never_listed_and_never_blocks_the_next(tmp_path, module, function, pattern, moment):
    store = ModelStore(tmp_path)
    first = store.publish(BUILTIN_MODEL, [REFINER])
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, module, function, pattern, str(tmp_path), str(BUILTIN_MODEL), str(REFINER)],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr  # it really died at that moment
    assert leftovers(store), f"killed {moment}, the publish should have left something behind"
    assert store.versions() == [first]
    following = store.publish(BUILTIN_MODEL, [REFINER])
    assert store.versions() == [first, following]
    assert_complete(store, following)


def test_stale_staging_and_partial_version_folders_are_skipped_and_old_staging_removed(tmp_path):
    store = ModelStore(tmp_path)
    old_staging = store.versions_dir / f"{STAGING_PREFIX}dead"
    recent_staging = store.versions_dir / f"{STAGING_PREFIX}busy"  # perhaps another publisher at work
    partial = store.versions_dir / "v0001"  # claimed, then its publisher died before version.json
    for folder in (old_staging, recent_staging, partial):
        folder.mkdir()
        (folder / BUILTIN_MODEL.name).write_bytes(b"half a model")
    long_ago = time.time() - STALE_STAGING_S - 60
    os.utime(old_staging, (long_ago, long_ago))
    assert store.versions() == []
    with pytest.raises(ModelStoreError, match="no version 'v0001'"):
        store.promote("v0001")
    version = store.publish(BUILTIN_MODEL, [REFINER])
    assert version == "v0002" and store.versions() == ["v0002"]
    assert_complete(store, version)
    assert not old_staging.exists() and recent_staging.is_dir() and partial.is_dir()


@pytest.mark.parametrize("name", ["../../evil", "{evil}", "v9999", "v0001/../../../evil", "v0001\n", "CURRENT", "", "v1"])
def test_promote_refuses_anything_but_a_complete_version(tmp_path, name):
    store = ModelStore(tmp_path / "store")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))
    plant_evil_version(tmp_path / "evil")
    with pytest.raises(ModelStoreError, match=r"is not a version name|no version"):
        store.promote(name.format(evil=tmp_path / "evil"))  # {evil}: the absolute path
    assert store.current() == "v0001"


def test_cli_refuses_a_promotion_outside_the_store_and_a_broken_version_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from aivd.cli.main import app

    store = ModelStore(tmp_path / "store")
    store.promote(store.publish(BUILTIN_MODEL, [REFINER]))
    plant_evil_version(tmp_path / "evil")
    result = CliRunner().invoke(app, ["models", "promote", "../../evil", "--store", str(tmp_path / "store")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "'../../evil' is not a version name" in message
    assert store.current() == "v0001" and len(store.history()) == 1
    (store.versions_dir / "v0001" / "version.json").write_text("{not json")
    listed = CliRunner().invoke(app, ["models", "list", "--store", str(tmp_path / "store")])
    assert listed.exit_code == 2 and len(listed.output.strip().splitlines()) == 1 and "version.json: unreadable" in listed.output


@pytest.mark.parametrize("detector", ["/etc/passwd", "../x.onnx", "..", "", "sub/x.onnx", "x.onnx\\..\\..\\y", None, ["x.onnx"]])
def test_a_detector_field_outside_its_version_folder_is_refused(tmp_path, detector):
    store = ModelStore(tmp_path)
    version = store.publish(BUILTIN_MODEL, [REFINER])
    edit_version_json(store, version, detector=detector)
    with pytest.raises(ModelStoreError, match="is not a file name inside"):
        store.detector_path(version)


def test_a_detector_that_links_outside_its_version_folder_is_refused(tmp_path):
    store = ModelStore(tmp_path / "store")
    version = store.publish(BUILTIN_MODEL, [REFINER])
    (tmp_path / "outside.onnx").write_bytes(BUILTIN_MODEL.read_bytes())
    (store.versions_dir / version / "linked.onnx").symlink_to(tmp_path / "outside.onnx")
    edit_version_json(store, version, detector="linked.onnx")
    with pytest.raises(ModelStoreError, match="is not a file name inside"):
        store.detector_path(version)


def test_rollback_refuses_a_parent_outside_the_store(tmp_path):
    store = ModelStore(tmp_path)
    first = store.publish(BUILTIN_MODEL, [REFINER])
    second = store.publish(BUILTIN_MODEL, [REFINER], parent=first)
    store.promote(second)
    edit_version_json(store, second, parent="../../evil")
    with pytest.raises(ModelStoreError, match="is not a version name"):
        store.rollback()
    assert store.current() == second
    with pytest.raises(ModelStoreError, match="no version 'v0042'"):
        store.publish(BUILTIN_MODEL, parent="v0042")


def test_hot_swap_skips_and_logs_a_version_the_store_refuses(tmp_path, caplog):
    store = ModelStore(tmp_path)
    good = store.publish(BUILTIN_MODEL, [REFINER])
    store.promote(good)
    detector = HotSwapDetector(store, poll_s=0.0, threads=1)
    hostile = store.publish(BUILTIN_MODEL, [REFINER], parent=good)
    edit_version_json(store, hostile, detector="/etc/passwd")
    store.promote(hostile)
    test = np.full((128, 128), 255, np.uint8)
    with caplog.at_level(logging.ERROR, logger="aivd.edge.hot_swap"):
        detector.detect(test, test)
        (tmp_path / "CURRENT").write_text("../../evil\n")  # written by hand: promote would refuse it
        detector.detect(test, test)
    assert detector.version == good and detector.swaps == 0
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [f"not swapping to {hostile}", "not swapping to ../../evil"]
    assert "is not a file name inside" in caplog.records[0].getMessage()


def edit_version_json(store: ModelStore, version: str, **changes) -> None:
    path = store.versions_dir / version / "version.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def plant_evil_version(folder) -> None:
    """A folder outside the store that looks like a version: what `promote ../../evil` would reach."""
    folder.mkdir()
    (folder / "version.json").write_text(json.dumps({"version": "evil", "detector": "/etc/passwd", "parent": None}))
