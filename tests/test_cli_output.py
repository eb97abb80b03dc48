"""What the CLI prints of names it did not choose: markup and control characters cannot break or forge a line."""

import json
import shutil
import subprocess
import sys

import pytest

from aivd.cli.ui import shown
from tests.conftest import SAMPLES


def test_shown_escapes_markup_and_control_characters():
    assert shown("b[/]_test.jpg") == "b\\[/]_test.jpg"
    assert shown("a\nerror: forged") == "a\\nerror: forged"
    assert shown("x\x1b[31mred\x07") == "x\\x1b[31mred\\x07"
    assert shown("plain/path_test.jpg") == "plain/path_test.jpg"


@pytest.mark.integration
def test_inspect_survives_names_with_markup_and_newlines(tmp_path):
    """issue 15 item 4: `b[/]_test.jpg` crashed the run with a MarkupError; a newline could forge a log line."""
    images = tmp_path / "in"
    images.mkdir()
    (images / "b[").mkdir()
    shutil.copy(SAMPLES / "00041200_test.jpg", images / "b[" / "]_test.jpg")  # the path reads b[/]_test.jpg
    (images / "b[" / "bad\nerror: forged_test.jpg").write_bytes(b"not an image")  # its error line names b[/]bad...
    result = subprocess.run([sys.executable, "-m", "aivd.cli.main", "inspect", images, "--edge-only", "--out", tmp_path / "out"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert not any(line.startswith("error: forged") for line in result.stderr.splitlines())
    assert "bad\\nerror: forged_test.jpg" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["error", "ok"]


@pytest.mark.integration
def test_hostile_files_are_one_error_record_each(tmp_path):
    """issue 15 item 3: a FIFO hung the run for good and a link to /dev/zero ended it with a MemoryError."""
    import os

    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(SAMPLES / "00041200_test.jpg", images / "good_test.jpg")
    os.mkfifo(images / "fifo_test.jpg")
    (images / "zero_test.jpg").symlink_to("/dev/zero")
    # The old hang on the FIFO ends here as a TimeoutExpired.
    result = subprocess.run([sys.executable, "-m", "aivd.cli.main", "inspect", images, "--edge-only", "--out", tmp_path / "out"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    records = {json.loads(line)["image_id"]: json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert records["good"]["status"] == "ok"
    assert "not a regular file" in records["fifo"]["error"] and "not a regular file" in records["zero"]["error"]


@pytest.mark.integration
def test_bench_hostile_inputs_writes_a_row_for_each_and_exits_1():
    from aivd.bench.hostile_inputs import bench_hostile_inputs

    report = bench_hostile_inputs(timeout_s=240)
    assert report["rows"] == report["inputs"] == 7 and report["ok"] == 3
    assert report["exit_code"] == 1 and not report["traceback"] and not report["timed_out"]
    reasons = sorted(report["errors"].values())
    assert [r.split(" (")[0] for r in reasons] == [
        "not a decodable image", "not a regular file", "not a regular file", "unsupported size"]


def test_an_aivd_error_no_command_caught_is_one_line_and_exit_2(monkeypatch, capsys):
    from aivd.cli import main as cli
    from aivd.data.dataset import DatasetError

    def broken():
        raise DatasetError("data.yaml: names is missing")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == "error: data.yaml: names is missing"
