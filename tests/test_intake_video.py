"""Video files, cameras and live streams as input (issue 16, item 4): frames sampled by video or wall time,
inspected from memory under stable ids, and a live stream that drops is reopened."""

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from conftest import SAMPLES

from aivd.data.templates import TemplateMode
from aivd.edge.detector import TemplateDetector
from aivd.intake.video import LiveStream, StreamError, stream_name, tasks_with_videos, video_tasks
from aivd.pipeline.inspect import InspectOptions, inspect_tasks
from aivd.schema.records import InspectionRecord

BOARDS = sorted(SAMPLES.glob("*_test.jpg"))


def write_video(path, frames: int, fps: float = 10.0):
    """An MJPG .avi of `frames` DeepPCB boards (the bundled samples in turn), each frame's number in its corner,
    so a frame read back can be told from its neighbours."""
    boards = [cv2.imread(str(board)) for board in BOARDS]
    height, width = boards[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for index in range(frames):
        frame = boards[index % len(boards)].copy()
        cv2.putText(frame, str(index), (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 3)
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "line1.avi", frames=20, fps=10.0)


def ids(tasks) -> list[str]:
    return [task.image_id for task in tasks]


def test_a_file_gives_every_frame_by_default_and_samples_by_video_time(clip):
    assert ids(video_tasks(clip, "line1")) == [f"line1-f{index}" for index in range(20)]
    # 10 frames a second of video: at 4/s the first frame at or after 0, 0.25, 0.5, ... s.
    assert ids(video_tasks(clip, "line1", fps=4)) == [f"line1-f{index}" for index in (0, 3, 5, 8, 10, 13, 15, 18)]
    assert ids(video_tasks(clip, "line1", fps=50)) == ids(video_tasks(clip, "line1"))  # never more than the video has
    assert ids(video_tasks(clip, "line1", fps=1, max_frames=2)) == ["line1-f0", "line1-f10"]


def test_frames_are_grey_images_in_memory_named_by_source_and_index(clip):
    task = next(video_tasks(clip, "line1"))
    frame = task.frame()
    assert task.image_path == f"{clip}#f0" and frame.dtype == np.uint8 and frame.shape == (640, 640)
    # MJPG is lossy: the frame is the board, not a bit-exact copy.
    board = cv2.imread(str(BOARDS[0]), cv2.IMREAD_GRAYSCALE)
    assert np.abs(frame[100:].astype(int) - board[100:]).mean() < 4


def test_an_unreadable_video_is_one_failed_task_and_images_come_first(clip, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    board = tmp_path / "board.jpg"
    board.write_bytes(BOARDS[0].read_bytes())
    tasks, total = tasks_with_videos([broken, clip, board, tmp_path / "gone.avi"], TemplateMode.auto, None, fps=1, max_frames=None)
    tasks = list(tasks)
    assert total is None and ids(tasks) == ["board", "broken", "line1-f0", "line1-f10", "gone"]
    assert tasks[1].error.startswith("not a readable video") and tasks[4].error == "file not found"
    assert ids(tasks_with_videos([board], TemplateMode.auto, None, None, None)[0]) == ["board"]
    assert tasks_with_videos([board], TemplateMode.auto, None, None, None)[1] == 1


def test_two_videos_with_one_name_get_distinct_frame_ids(clip, tmp_path):
    other = write_video(tmp_path / "line1.avi", frames=2)
    tasks, _ = tasks_with_videos([clip, other], TemplateMode.auto, None, fps=None, max_frames=1)
    assert ids(tasks) == ["line1-f0", "line1-2-f0"]


def test_video_frames_are_inspected_from_memory_and_a_rerun_gives_the_same_records(clip, tmp_path):
    template = SAMPLES / BOARDS[0].name.replace("_test", "_temp")
    detector = TemplateDetector()
    records = []
    for out in (tmp_path / "a", tmp_path / "b"):
        tasks, _ = tasks_with_videos([clip], TemplateMode.auto, template, fps=2, max_frames=None)
        summary = inspect_tasks(tasks, detector, out, InspectOptions(report=False))
        records.append([record.model_copy(update={"timings_ms": {}}) for record in _read(out)])
        # Nothing but the run's own outputs, here or beside the video: no frame was written out to be read back.
        assert sorted(path.name for path in out.iterdir()) == [".lock", "aivd.sqlite", "annotated", "results.jsonl", "run.json", "summary.json"]
        assert [path.name for path in clip.parent.iterdir()] == [clip.name]
    assert summary.images == summary.ok == 4 and records[0] == records[1]
    first = records[0][0]
    assert (first.image_id, first.image, first.template) == ("line1-f0", f"{clip}#f0", str(template))
    # Frame 0 is the template's own board (the sample): the template detector finds its defects.
    assert first.defects


def _read(out) -> list[InspectionRecord]:
    return [InspectionRecord.model_validate_json(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_stream_names_hide_credentials():
    assert stream_name("rtsp://inspector:s3cret@cam7.line:554/live?tcp") == "cam7.line-554-live"
    assert stream_name("3") == "cam3"


def test_a_stream_that_cannot_be_opened_is_one_error(tmp_path):
    port = _free_port()
    with pytest.raises(StreamError, match=rf"^http://127.0.0.1:{port}/: cannot open the stream"):
        LiveStream(f"http://127.0.0.1:{port}/", open_timeout_s=2)


# ---------------------------------------------------------------------------------------------------------------
# A live MJPEG-over-HTTP stream, served by a real server process that the tests kill and restart.

MJPEG_SERVER = r"""
import http.server, socketserver, sys, time
import cv2, numpy as np

class Frames(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        board = cv2.imread(sys.argv[2])
        index = 0
        try:
            while True:
                frame = board.copy()
                cv2.putText(frame, str(index), (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 3)
                data = cv2.imencode(".jpg", frame)[1].tobytes()
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n")
                index += 1
                time.sleep(0.04)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server(("127.0.0.1", int(sys.argv[1])), Frames).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-c", MJPEG_SERVER, str(port), str(BOARDS[0])])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            assert server.poll() is None, "the MJPEG server died"
            time.sleep(0.05)
    server.kill()
    pytest.fail("the MJPEG server did not start")


@pytest.fixture
def mjpeg():
    port = _free_port()
    servers = [_serve(port)]
    yield port, servers
    for server in servers:
        server.kill()
        server.wait()


@pytest.mark.integration
def test_a_live_stream_is_sampled_by_wall_time_and_reopened_when_it_drops(mjpeg):
    port, servers = mjpeg
    events = []
    stream = LiveStream(f"http://127.0.0.1:{port}/", fps=5, on_event=events.append, read_timeout_s=2, backoff_s=(0.2, 1.0))
    with stream:
        frames = iter(stream)
        started = time.monotonic()
        before = [next(frames) for _ in range(5)]
        # 25 frames a second come in; 5 a second go out, the newest each time.
        assert 0.6 <= time.monotonic() - started <= 2.5
        servers[0].kill()
        servers[0].wait()
        time.sleep(1.5)  # down long enough for a failed reconnect or two
        servers.append(_serve(port))
        after = [next(frames) for _ in range(3)]
    assert stream.drops >= 1 and stream.reconnects >= 1
    assert any("stream dropped" in event for event in events) and any("reconnected" in event for event in events)
    tasks = before + after
    assert len({task.image_id for task in tasks}) == 8 and all(task.image_id.startswith(f"127.0.0.1-{port}-") for task in tasks)
    assert all(task.frame().shape == (640, 640) for task in tasks)


@pytest.mark.integration
def test_aivd_inspect_reads_a_stream_until_max_frames_or_a_signal(mjpeg, tmp_path):
    port, _ = mjpeg
    url = f"http://127.0.0.1:{port}/"
    secret = f"http://inspector:s3cret@127.0.0.1:{port}/"  # the server ignores it; aivd must not write it anywhere
    limited = subprocess.run([sys.executable, "-m", "aivd.cli.main", "inspect", "--stream", secret, "--fps", "4", "--max-frames", "3",
                              "--edge-only", "--no-report", "--out", tmp_path / "limited"], capture_output=True, text=True, timeout=120)
    assert limited.returncode == 0, limited.stderr
    records = _read(tmp_path / "limited")
    shown = f"http://inspector:***@127.0.0.1:{port}/#"
    assert len(records) == 3 and all(record.status == "ok" and record.image.startswith(shown) for record in records)
    assert "stream: 0 drops, 0 reconnects" in limited.stderr
    assert not [path for path in (tmp_path / "limited").rglob("*") if path.is_file() and b"s3cret" in path.read_bytes()]

    out = tmp_path / "endless"
    endless = subprocess.Popen([sys.executable, "-m", "aivd.cli.main", "inspect", "--stream", url, "--edge-only", "--no-report",
                                "--out", out], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / "results.jsonl").is_file() and (out / "results.jsonl").read_text().count("\n") >= 2):
        assert endless.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    endless.send_signal(signal.SIGINT)
    _, stderr = endless.communicate(timeout=60)
    assert endless.returncode == 130 and "Traceback" not in stderr
    assert "interrupted" in (out / "summary.json").read_text()


@pytest.mark.integration
def test_aivd_inspect_refuses_video_options_that_cannot_apply(clip, tmp_path):
    def refused(*args) -> str:
        result = subprocess.run([sys.executable, "-m", "aivd.cli.main", "inspect", *map(str, args), "--out", tmp_path / "out"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        return result.stderr.strip()

    assert refused(BOARDS[0], "--fps", "2") == "error: --fps and --max-frames apply to video files and --stream"
    assert refused(clip, "--stream", "0") == "error: give one of image or video PATHS, --deeppcb ROOT or --stream URL"
    assert refused(clip, "--templates", "require") == ("error: --templates require: video frames have no template beside them; "
                                                       "give --template FILE")


@pytest.mark.integration
def test_a_run_stored_before_the_video_options_existed_still_resumes(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "aivd.cli.main", "inspect"]
    subprocess.run([*command, BOARDS[0], "--edge-only", "--no-report", "--out", out], check=True, capture_output=True, timeout=120)
    with sqlite3.connect(out / "aivd.sqlite") as connection:  # as an aivd without --stream, --fps, --max-frames stored it
        config = json.loads(connection.execute("SELECT config FROM runs").fetchone()[0])
        for name in ("stream", "fps", "max_frames"):
            del config["arguments"][name]
        connection.execute("UPDATE runs SET config = ?", (json.dumps(config),))
    resumed = subprocess.run([*command, "--resume", out], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and "1 of 1 images inspected (1 before resuming)" in resumed.stderr, resumed.stderr
