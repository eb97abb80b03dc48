"""Frames of a video file, a camera or a network stream (rtsp, http MJPEG or HLS) as inspection tasks, read
through OpenCV's FFmpeg (or, for a camera index, its V4L2) backend and inspected from memory: no frame is ever
written to a file.

Sampling (`fps`): a video file gives every frame by default, or with `fps` R the first frame at or after each
1/R s of *video* time, so a run is the same however fast the machine is. A live source gives at most R frames a
second of *wall* time, 2 by default: a grabbing thread reads every frame as it comes, so that the frame inspected
is the newest one rather than one that waited in FFmpeg's buffer, and frames the pipeline has no time for are
dropped, never queued.

Ids: `<video stem>-f<frame index>` for a file's frames (stable: a resumed run skips the frames it has done);
`<source name>-<UTC time of the frame>` for a live source's.

A live source that drops (the connection breaks, or no frame comes for `read_timeout_s`) is reopened after 0.5 s,
then 1, 2, 4 ... s, capped at 30 s, until it delivers a frame again or is closed. Each drop and each reconnect is
one log line through `on_event` and is counted (`drops`, `reconnects`); `aivd inspect` prints the lines as they
happen and the counts at the end.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from aivd.core.errors import AivdError
from aivd.core.redaction import redact_url
from aivd.data.templates import TemplateMode
from aivd.pipeline.inputs import InspectionTask, tasks_from_paths

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".ts", ".mts")
STREAM_FPS = 2.0  # a live source's default sampling rate, frames per second of wall time
BACKOFF_S = (0.5, 30.0)  # the first wait before reopening a dropped stream, and the longest


class StreamError(AivdError, RuntimeError):
    """A camera or stream that cannot be opened at all."""


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _gray(frame: np.ndarray) -> Callable[[], np.ndarray]:
    """The frame loader of a task: the conversion to grey runs on the reading thread, with the other decoding."""

    def load() -> np.ndarray:
        if frame.ndim == 2:
            return frame
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)

    return load


def video_tasks(path: Path, name: str, fps: float | None = None, max_frames: int | None = None,
                template: Path | None = None) -> Iterator[InspectionTask]:
    """The sampled frames of the video file at `path`, as tasks with ids `name-fINDEX`. A file that cannot be
    opened or has no readable frame is one failed task, like any other bad input."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        kind = "file not found" if not Path(path).exists() else "not a readable video (FFmpeg cannot open it)"
        yield InspectionTask(name, path, error=kind)
        return
    try:
        rate = capture.get(cv2.CAP_PROP_FPS)
        every_frame = fps is None or not rate or rate <= 0  # without a known frame rate, video time is unknown
        index, taken, due = 0, 0, 0.0
        while max_frames is None or taken < max_frames:
            if not capture.grab():
                break
            at = index / rate if not every_frame else 0.0
            if every_frame or at >= due - 1e-9:
                ok, frame = capture.retrieve()
                if ok:
                    yield InspectionTask(f"{name}-f{index}", f"{path}#f{index}", template, frame=_gray(frame))
                    taken += 1
                    if not every_frame:
                        assert fps is not None  # every frame is taken without one
                        due = (math.floor(at * fps + 1e-9) + 1) / fps
            index += 1
        if index == 0:
            yield InspectionTask(name, path, error="not a readable video (no frame could be decoded)")
    finally:
        capture.release()


def unique_names(paths: Iterable[Path]) -> list[str]:
    """A name per video, its stem, with `-2`, `-3`, ... for a stem seen before: frame ids must not collide."""
    taken: set[str] = set()
    names = []
    for path in paths:
        name, count = Path(path).stem, 1
        while name in taken:
            count += 1
            name = f"{Path(path).stem}-{count}"
        taken.add(name)
        names.append(name)
    return names


def stream_name(source: str) -> str:
    """A short name for frame ids: `cam0` for camera 0, else the URL's host and path, without credentials."""
    if source.isdigit():
        return f"cam{source}"
    without_scheme = re.sub(r"^[a-z][a-z0-9+.-]*://", "", source, flags=re.IGNORECASE)
    without_user = without_scheme.rsplit("@", 1)[-1] if "@" in without_scheme.split("/", 1)[0] else without_scheme
    return re.sub(r"[^A-Za-z0-9._]+", "-", without_user.split("?", 1)[0]).strip("-.") or "stream"


class LiveStream:
    """A camera (`source` a number) or a network stream (a URL), sampled at `fps` frames a second of wall time.

    Opened on construction (StreamError if it cannot be); iterating yields tasks until `max_frames` have been
    given or the stream is closed, reconnecting across drops meanwhile. Use as a context manager."""

    def __init__(self, source: str, fps: float | None = None, max_frames: int | None = None, template: Path | None = None,
                 on_event: Callable[[str], None] = lambda message: None, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0, backoff_s: tuple[float, float] = BACKOFF_S):
        self.source, self.name = source, stream_name(source)
        self.shown = source if source.isdigit() else redact_url(source)  # what records and messages name
        self.period_s = 1.0 / (fps or STREAM_FPS)
        self.max_frames, self.template, self.on_event = max_frames, template, on_event
        self._timeouts_ms = (int(open_timeout_s * 1000), int(read_timeout_s * 1000))
        self.backoff_s = backoff_s
        self.drops = self.reconnects = 0
        self._closed = threading.Event()
        self._fresh = threading.Condition()
        self._latest: tuple[int, np.ndarray, datetime] | None = None  # (sequence number, frame, when it was read)
        capture = self._open()
        if capture is None:
            raise StreamError(f"{self.shown}: cannot open the stream (no frames within {open_timeout_s:g} s)")
        self._grabber = threading.Thread(target=self._grab, args=(capture,), name="aivd-stream", daemon=True)
        self._grabber.start()

    def _open(self) -> cv2.VideoCapture | None:
        if self.source.isdigit():
            capture = cv2.VideoCapture(int(self.source))
        else:
            opening, reading = self._timeouts_ms
            capture = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, opening, cv2.CAP_PROP_READ_TIMEOUT_MSEC, reading])
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _backoff(self, attempt: int) -> float:
        """The wait before reconnect attempt `attempt` (1, 2, ...): doubling from the first wait up to the cap."""
        return min(self.backoff_s[0] * 2 ** (attempt - 1), self.backoff_s[1])

    def _grab(self, capture: cv2.VideoCapture | None) -> None:
        """Read every frame as it comes and publish one per period; reopen the stream when it drops."""
        sequence, due, failures = 0, 0.0, 0
        while not self._closed.is_set():
            if capture is None:
                failures += 1
                if self._closed.wait(self._backoff(failures)):
                    break
                capture = self._open()
                if capture is None:
                    self.on_event(f"{self.shown}: reconnecting failed (attempt {failures}); next try in {self._backoff(failures + 1):g} s")
                    continue
                self.reconnects += 1
                self.on_event(f"{self.shown}: reconnected (attempt {failures})")
            if not capture.grab():
                capture.release()
                capture = None
                self.drops += 1
                self.on_event(f"{self.shown}: stream dropped; reconnecting in {self._backoff(1):g} s")
                continue
            failures = 0  # a frame came: the next drop starts the backoff afresh
            now = time.monotonic()
            if now < due:
                continue
            ok, frame = capture.retrieve()
            if ok:
                due = max(due + self.period_s, now)  # a steady rate, without catching up on a stall
                sequence += 1
                with self._fresh:
                    self._latest = (sequence, frame, datetime.now(timezone.utc))
                    self._fresh.notify_all()
        if capture is not None:
            capture.release()

    def __iter__(self) -> Iterator[InspectionTask]:
        seen, given, last_stamp, repeats = 0, 0, "", 0
        while self.max_frames is None or given < self.max_frames:
            with self._fresh:
                while not self._closed.is_set() and (self._latest is None or self._latest[0] <= seen):
                    self._fresh.wait()
                if self._closed.is_set():
                    return
                assert self._latest is not None  # the wait ends on close or on a newer frame
                seen, frame, at = self._latest
            stamp = at.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
            repeats = repeats + 1 if stamp == last_stamp else 0  # two frames in one millisecond: the ids stay unique
            last_stamp = stamp
            if repeats:
                stamp = f"{stamp}-{repeats + 1}"
            yield InspectionTask(f"{self.name}-{stamp}", f"{self.shown}#{stamp}", self.template, frame=_gray(frame))
            given += 1

    def close(self) -> None:
        self._closed.set()
        with self._fresh:
            self._fresh.notify_all()
        self._grabber.join(timeout=self._timeouts_ms[1] / 1000 + 1)

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def tasks_with_videos(paths: list[Path], template_mode: TemplateMode, template: Path | None, fps: float | None,
                      max_frames: int | None) -> tuple[Iterator[InspectionTask], int | None]:
    """Tasks for PATHS: the image files and folders as `tasks_from_paths` gives them, then the sampled frames of
    each video file (by suffix) in the order given, read as they are inspected; and how many tasks there are when
    that is known (no video). A video's frames take `template` as theirs; `TemplateMode.none` ignores it."""
    videos = [Path(path) for path in paths if is_video(path)]
    images = tasks_from_paths([path for path in paths if not is_video(path)], template_mode, template)
    frame_template = None if template_mode is TemplateMode.none else template

    def tasks() -> Iterator[InspectionTask]:
        yield from images
        for video, name in zip(videos, unique_names(videos)):
            yield from video_tasks(video, name, fps, max_frames, frame_template)

    return tasks(), None if videos else len(images)
