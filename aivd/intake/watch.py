"""`aivd watch DIR`: images inspected as they land in a folder (recursively), each exactly once across restarts.

How a file travels:
1. watchdog's observer reports files created, written, closed after writing or moved in; each event only notes
   the file's path (`pending`). At start, the files already in DIR are noted the same way.
2. The settling thread takes a noted file once it is whole: at once after a close-after-write event (inotify's
   IN_CLOSE_WRITE, which watchdog gives on Linux) or when it was moved in (renaming a finished file into place is
   how writers publish one); otherwise (other platforms, files found at start) once its size and modification
   time have not changed for `settle_s`. A writer that closes a file and opens it again to append is not
   covered by the first rule: give such a writer's folder a platform without close events, or let it write
   elsewhere and move the file in.
3. It journals the file as queued (`ResultStore.queue_intake`: path, size, modification time in ns) and puts
   the task in a bounded queue of `queue_size` paths, waiting while the queue is full. That is the back-pressure:
   when the cloud is slow, what waits is paths (noted, or in the queue), the files stay on disk, and at most
   the inspector's prefetch and in-flight images are decoded in memory.
4. `aivd.pipeline.inspect.inspect_tasks` takes tasks from the queue; the record of a task is added to the
   database in the same transaction that marks its journal entry done (`ResultStore.add(..., intake_id)`).

Why each file version (path, size, modification time) gets exactly one record, whenever the process is killed:
- The record and the entry's change from queued to done are one transaction, which refuses an entry that is not
  queued: a kill leaves both or neither, and no entry can get a second record.
- A file version is journalled at most once per run (the lookup and the insert are one transaction, under a
  unique key), so it cannot be queued twice, in one process or across restarts.
- Each process puts every entry into the pipeline once: the entries it journals, and at start the entries left
  queued by the process before it (they were in hand when it stopped). A file that landed while no process ran
  has no entry yet: the scan at start journals it. So every version gets its record, and only one.
A file rewritten later (a new size or modification time) is a new version, inspected again under a new id.
The database is the authority: results.jsonl is rewritten from it on restart (`ResultWriter`'s resume).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from aivd.data.templates import TemplateMode, image_id_of
from aivd.intake import QUEUE_SIZE, SETTLE_S
from aivd.pipeline.inputs import InspectionTask, is_image_to_inspect, template_for
from aivd.store import ResultStore
from aivd.store.database import IntakeEntry

TICK_S = 0.1  # how often noted files are looked at


@dataclass
class _Noted:
    whole: bool  # a close-after-write (or move-in) event came after the last write
    seen: tuple[int, int] | None = None  # (size, mtime_ns) when last looked at
    since: float = 0.0  # time.monotonic() from which `seen` has held


class FolderWatch:
    """The files landing in `folder` as inspection tasks of run `run_id`, journalled in `store`.

    `start()` takes up the entries a stopped process left queued, scans the folder and starts watching; iterating
    yields tasks until `close()`. Paths under `exclude` (the output folder, when it is inside `folder`) are
    ignored, so annotated images never come back as input."""

    def __init__(self, folder: Path, store: ResultStore, run_id: int, *, template_mode: TemplateMode = TemplateMode.auto,
                 template: Path | None = None, exclude: tuple[Path, ...] = (), settle_s: float = SETTLE_S,
                 queue_size: int = QUEUE_SIZE, on_event: Callable[[str], None] = lambda message: None):
        self.folder = Path(folder).resolve()
        self.store, self.run_id = store, run_id
        self.template_mode, self.template = template_mode, template
        self.exclude = tuple(Path(path).resolve() for path in exclude)
        self.settle_s, self.on_event = settle_s, on_event
        self.recovered = 0  # entries a stopped process left queued, taken up at start
        self._ready: queue.Queue[InspectionTask] = queue.Queue(maxsize=queue_size)
        self._noted: dict[Path, _Noted] = {}  # insertion order: files are taken in the order they were noted
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._failure: BaseException | None = None
        self._observer = Observer()
        self._settler = threading.Thread(target=self._settle, name="aivd-watch", daemon=True)

    def start(self) -> FolderWatch:
        # Watching starts before the scan, so that a file landing in between is noted by one or the other.
        self._observer.schedule(_Events(self), str(self.folder), recursive=True)
        self._observer.start()
        self._settler.start()
        return self

    # -- noting ---------------------------------------------------------------------------------------------

    def _wanted(self, path: Path) -> bool:
        return is_image_to_inspect(path) and not any(path.is_relative_to(excluded) for excluded in self.exclude)

    def note(self, path: Path, whole: bool) -> None:
        if self._wanted(path):
            with self._lock:
                # A new object, so that the settling thread, which may be looking at the old one, sees the event.
                before = self._noted.get(path)
                self._noted[path] = _Noted(whole) if before is None else _Noted(whole, before.seen, before.since)

    def scan(self, folder: Path) -> None:
        """Note every file under `folder`: at start, for a folder moved in, and when the observer lost events."""
        for directory, subdirs, files in os.walk(folder):
            subdirs.sort()
            for name in sorted(files):
                self.note(Path(directory) / name, whole=False)

    # -- settling -------------------------------------------------------------------------------------------

    def _settle(self) -> None:
        try:
            for entry in self.store.queued_intake(self.run_id):
                self.recovered += 1
                if not self._offer(self._task(entry)):
                    return
            self.scan(self.folder)
            while not self._closed.wait(TICK_S):
                with self._lock:
                    noted = list(self._noted.items())
                for path, state in noted:
                    version = self._whole(path, state)
                    if version is None:
                        continue
                    queued = self.store.queue_intake(self.run_id, str(path), *version, self._image_id(path))
                    self._forget(path, state)
                    if queued is not None and not self._offer(self._task(queued)):
                        return
        except BaseException as failure:  # a database that fails: the inspector ends the run with its error
            self._failure = failure

    def _whole(self, path: Path, state: _Noted) -> tuple[int, int] | None:
        """(size, mtime_ns) of `path` if it is whole now; None while it may still be written. A file gone since
        it was noted is forgotten."""
        try:
            status = os.stat(path)
        except OSError:
            self._forget(path, state)
            return None
        version, now = (status.st_size, status.st_mtime_ns), time.monotonic()
        if version != state.seen:
            # Unchanged since its modification time, as far as a file found untouched that long can tell.
            untouched_s = max(0.0, time.time() - status.st_mtime_ns / 1e9)
            state.seen, state.since = version, now - untouched_s
        return version if state.whole or now - state.since >= self.settle_s else None

    def _forget(self, path: Path, state: _Noted) -> None:
        """Drop `path` from the noted files, unless an event came for it since `state` was taken."""
        with self._lock:
            if self._noted.get(path) is state:
                del self._noted[path]

    def _image_id(self, path: Path) -> str:
        relative = path.relative_to(self.folder)
        return "-".join([*relative.parent.parts, image_id_of(relative)])

    def _task(self, entry: IntakeEntry) -> InspectionTask:
        path = Path(entry.path)
        template, error = template_for(path, self.template_mode, self.template)
        return InspectionTask(entry.image_id, path, template, error, intake_id=entry.id)

    def _offer(self, task: InspectionTask) -> bool:
        """Put `task` in the queue, waiting while it is full; False once the watch is closed."""
        while not self._closed.is_set():
            try:
                self._ready.put(task, timeout=TICK_S)
                return True
            except queue.Full:
                continue
        return False

    # -- taking ---------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[InspectionTask]:
        while not self._closed.is_set():
            if self._failure is not None:
                raise self._failure
            try:
                yield self._ready.get(timeout=TICK_S)
            except queue.Empty:
                continue

    def close(self) -> None:
        self._closed.set()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join()
        if self._settler.is_alive():
            self._settler.join()

    def __enter__(self) -> FolderWatch:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Events(FileSystemEventHandler):
    """Only notes paths: runs on the observer's thread, which must keep up with the kernel's event queue."""

    def __init__(self, watch: FolderWatch):
        self.watch = watch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            self.watch.note(Path(os.fsdecode(event.src_path)), whole=False)
        elif isinstance(event, FileClosedEvent):
            self.watch.note(Path(os.fsdecode(event.src_path)), whole=True)
        elif isinstance(event, FileMovedEvent):
            self.watch.note(Path(os.fsdecode(event.dest_path)), whole=True)
        elif isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            # Files written into a new folder before the observer watched it raise no event of their own.
            folder = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
            self.watch.scan(Path(os.fsdecode(folder)))
        elif isinstance(event, EventsLostEvent):
            self.watch.on_event(f"{self.watch.folder}: the kernel dropped file events; rescanning the folder")
            self.watch.scan(self.watch.folder)
