"""Run the pipeline (edge detector, and the cloud tier when configured) over inspection tasks and write what
was found.

Four stages overlap, as they would on separate machines: reading and decoding the next images (a pool of
threads), the edge (the calling thread), the cloud's half (a thread) and writing the outputs (a thread); OpenCV,
ONNX Runtime and OpenVINO release the GIL. Results are written in input order so runs are reproducible, and a
stopped run is a prefix of the inputs that `--resume` completes.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as DecodingTimeout  # not the builtin TimeoutError before Python 3.11
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from aivd.core import Detections
from aivd.data.deeppcb import format_submission
from aivd.data.images import ImageError, ImageLimits, read_pair, with_template
from aivd.edge.detector import Detector
from aivd.pipeline.engine import EdgeCloudPipeline, ImageResult, Proposal
from aivd.pipeline.inputs import InspectionTask
from aivd.pipeline.run_folder import (
    OutputLock,
    clear_run_outputs,
    database_url,
    read_marker,
    resume_database,
    write_marker,
)
from aivd.schema.records import InspectionRecord
from aivd.store import ResultStore
from aivd.viz.annotate import draw_detections
from aivd.web import annotated_image_loader, write_inspection_report

if TYPE_CHECKING:
    from aivd.pipeline.live_update import Live

CLOUD_IN_FLIGHT = 2  # images whose cloud half may be pending while the edge goes on
WRITES_IN_FLIGHT = 2  # and images done by the cloud, waiting to be written


@dataclass
class InspectOptions:
    annotate: bool = True
    deeppcb_results: bool = False  # also write OUT/deeppcb/ID.txt in the official submission format
    prefetch: int = 4  # images read and decoded ahead of the edge
    decoders: int = 2  # threads decoding them (OpenCV releases the GIL, so they decode in parallel with inference)
    limits: ImageLimits = field(default_factory=ImageLimits)
    database: str | None = ""  # SQLAlchemy URL; "" means OUT/aivd.sqlite, None no database
    report: bool = True  # write OUT/report.html
    command: str = ""  # recorded with the run in the database
    config: dict = field(default_factory=dict)
    resume: bool = False  # continue the run OUT holds (needs the database) instead of starting a new one


@dataclass
class InspectSummary:
    """A run's totals: what OUT/summary.json holds and the database stores with the run."""

    images: int = 0
    ok: int = 0
    failed: int = 0  # images that could not be inspected (their records say why); `errors` in summary.json
    defects: int = 0
    candidates: int = 0  # candidate regions the edge proposed
    sent: int = 0  # of them, those the offloading stage sent to the cloud
    rejected_by_cloud: int = 0  # sent candidates the cloud judged not to be defects
    cloud_failed: int = 0  # images the cloud could not analyse; their defects are the edge's
    bytes_to_cloud: int = 0
    bytes_from_cloud: int = 0
    model_versions: dict[str, int] = field(default_factory=dict)  # each edge model version served: images it served
    wall_s: float = 0.0
    resumed: int = 0  # of `images`, those done before this session resumed the run
    interrupted: bool = False  # stopped on request before every image was done

    @property
    def images_per_s(self) -> float:
        return (self.images - self.resumed) / self.wall_s if self.wall_s else 0.0

    @property
    def offload_ratio(self) -> float:
        return round(self.sent / self.candidates, 4) if self.candidates else 0.0

    def count(self, record: InspectionRecord) -> None:
        self.images += 1
        if record.detector is not None:
            self.model_versions[record.detector] = self.model_versions.get(record.detector, 0) + 1
        if record.status == "error":
            self.failed += 1
            return
        self.ok += 1
        self.defects += len(record.defects)
        regions = [*record.defects, *record.rejected]
        self.candidates += len(regions)
        self.sent += sum(1 for region in regions if region.offload is not None and region.offload.sent)
        self.rejected_by_cloud += sum(1 for region in record.rejected if region.source != "edge")
        self.cloud_failed += record.cloud_error is not None
        self.bytes_to_cloud += record.bytes_to_cloud
        self.bytes_from_cloud += record.bytes_from_cloud

    def as_json(self) -> dict:
        """OUT/summary.json: the run's totals, `errors` counting the images that could not be inspected."""
        totals = asdict(self)
        return {"images": totals.pop("images"), "errors": totals.pop("failed"), **totals, "offload_ratio": self.offload_ratio,
                "images_per_s": round(self.images_per_s, 2), "wall_s": round(self.wall_s, 3)}


class ResultWriter:
    """Owns the output folder: results.jsonl, annotated/, deeppcb/, the database, run.json and report.html.

    It holds OUT's lock from the start (`OutputBusy` when another run has it; pass `lock` when the caller took it
    earlier) and opens the database before writing anything, so a busy folder or a bad --db URL fails before any
    work is done. A new run replaces the files of the run OUT held (the database keeps every run). With
    `options.resume` it continues the run OUT holds: `done` are the records that run already has.

    A record is durable in both stores or in neither, as far as a later `--resume` sees them: see `write`.
    """

    def __init__(self, out_dir: Path, options: InspectOptions, lock: OutputLock | None = None):
        self.out_dir = Path(out_dir)
        self.options = options
        self._lock = lock or OutputLock(self.out_dir)
        self.store: ResultStore | None = None
        try:
            self._open(options)
        except BaseException:
            if self.store is not None:
                self.store.close()
            self._lock.release()
            raise

    def _open(self, options: InspectOptions) -> None:
        self.run_id, self.done, self.command = None, [], options.command
        results = self.out_dir / "results.jsonl"
        if options.resume:
            if options.database is None:
                raise ValueError("resuming a run needs its database")
            marker = read_marker(self.out_dir)
            self.store = ResultStore(resume_database(self.out_dir, marker, options.database))
            run = self.store.run(marker.run_id)
            self.run_id, self.command = run.id, run.command  # the report names the command that started the run
            self.store.reopen_run(self.run_id)
            self.done = self.store.records(self.run_id)
            # The database is the record of what is done: results.jsonl is rewritten from it, which drops a line
            # cut short by a kill and adds one whose write the kill prevented.
            _write_lines(results, self.done)
        else:
            if options.database is not None:
                self.store = ResultStore(database_url(self.out_dir, options.database))
            clear_run_outputs(self.out_dir)
            if self.store is not None and options.database is not None:  # the store is opened from the database
                self.run_id = self.store.start_run(options.command, options.config)
                write_marker(self.out_dir, self.run_id, options.database)
            _write_lines(results, [])
        if options.annotate:
            (self.out_dir / "annotated").mkdir(exist_ok=True)
        if options.deeppcb_results:
            (self.out_dir / "deeppcb").mkdir(exist_ok=True)
        self._jsonl = open(results, "a", encoding="utf-8")
        self.records: list[InspectionRecord] = list(self.done)

    def write(self, record: InspectionRecord, image=None, detections: Detections | None = None, intake_id: int | None = None,
              drifted: bool | None = None) -> None:
        """Write one record to every output.

        The order makes a kill at any point safe. The annotated image and the official result file come first:
        they are overwritten if the image is redone. The database commit is the moment the record exists; the
        JSONL line follows it at once, so a kill can only leave the database one record ahead of results.jsonl,
        never behind, and `--resume` rewrites results.jsonl from the database. Both survive the process being
        killed once written (the kernel has them). Neither is synced to the disk per record (2.7 ms an fsync here,
        against 1 ms for the commit): a power cut may lose the last records, each whole in the database, which a
        resumed run redoes; SQLite syncs at its checkpoints and at the end, results.jsonl is synced in `finish`.
        `intake_id`: the `aivd watch` journal entry that the same transaction marks done; `drifted`: whether the
        run's drift monitor was in its drift state (None without a learner), for the review queue."""
        if detections is not None:
            if self.options.annotate and image is not None:
                cv2.imwrite(str(self.out_dir / "annotated" / f"{record.image_id}.jpg"), draw_detections(image, detections))
            if self.options.deeppcb_results:
                (self.out_dir / "deeppcb" / f"{record.image_id}.txt").write_text(format_submission(detections))
        line = json.dumps(record.model_dump(mode="json")) + "\n"
        if self.store is not None:
            assert self.run_id is not None  # _open starts or reopens a run in every store it opens
            self.store.add(self.run_id, record, intake_id, drifted)
        self._jsonl.write(line)
        self._jsonl.flush()
        self.records.append(record)

    def finish(self, summary: InspectSummary) -> None:
        """Close the run: results.jsonl on disk, the run's end and totals in the database, the report."""
        os.fsync(self._jsonl.fileno())
        _write_atomically(self.out_dir / "summary.json", json.dumps(summary.as_json(), indent=2) + "\n")
        if self.store is not None:
            assert self.run_id is not None  # _open starts or reopens a run in every store it opens
            self.store.finish_run(self.run_id, asdict(summary), "interrupted" if summary.interrupted else "finished")
        if self.options.report:
            write_inspection_report(
                self.out_dir, self.records, extra={"command": self.command} if self.command else None,
                image_loader=annotated_image_loader(self.out_dir),
            )

    def close(self) -> None:
        try:
            self._jsonl.close()
            if self.store is not None:
                self.store.close()
        finally:
            self._lock.release()


def _write_lines(path: Path, records: list[InspectionRecord]) -> None:
    """Replace `path` with one JSON line per record, atomically."""
    _write_atomically(path, "".join(json.dumps(record.model_dump(mode="json")) + "\n" for record in records))


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`: a reader sees the old file or the new one, never a part."""
    staged = path.with_name(path.name + ".tmp")
    with open(staged, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staged, path)


def _load(task: InspectionTask, limits: ImageLimits):
    started = time.perf_counter()
    if task.error:
        return None, None, ImageError(task.image_path, task.error), 0.0
    try:
        if task.frame is None:
            image, template = read_pair(task.image_path, task.template_path, limits)
        else:
            image, template = _frame_pair(task, limits)
    except ImageError as error:
        return None, None, error, 0.0
    return image, template, None, (time.perf_counter() - started) * 1000


def _frame_pair(task: InspectionTask, limits: ImageLimits):
    """A frame in memory is held to the same size limits as an image file."""
    assert task.frame is not None  # called only for a task with a frame
    image = task.frame()
    if problem := limits.size_problem(image.shape[1], image.shape[0]):
        raise ImageError(task.image_path, problem)
    return with_template(image, task.image_path, task.template_path, limits)


_END = object()
IDLE_S = 0.2  # how long the next image may be awaited before the work in hand is finished without it


def _prefetched(tasks: Iterable[InspectionTask], options: InspectOptions, batch: int = 1, wait_s: float = 0.0) -> Iterator:
    """Micro-batches of (task, loaded) in input order: the next image, and up to `batch - 1` more already decoded
    (or decoded within `wait_s`). Images are read and decoded ahead by `options.decoders` threads, at most
    `options.prefetch` waiting.

    `tasks` may be a live source (a stream, a watched folder) whose next task is minutes away: then None is
    yielded every IDLE_S, so that the caller can finish the images in hand and notice a stop request. The reading
    thread ends when `tasks` does or once this generator is closed; a live source blocked waiting for input ends
    it when the source itself is closed."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))
    closed = threading.Event()
    decoders = ThreadPoolExecutor(max_workers=max(1, options.decoders), thread_name_prefix="aivd-decode")

    def offer(item) -> bool:
        while not closed.is_set():
            try:
                ready.put(item, timeout=IDLE_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for task in tasks:
                if not offer((task, decoders.submit(_load, task, options.limits))):
                    return
            offer(_END)
        except BaseException as failure:  # a source that fails (a watched folder whose journal cannot be written) ends the run
            offer(failure)

    reader = threading.Thread(target=read, name="aivd-read", daemon=True)
    reader.start()
    held: deque = deque()  # taken from `ready`, not yet yielded: an image still decoding when a batch was closed
    try:
        while True:
            if not held:
                try:
                    held.append(ready.get(timeout=IDLE_S))
                except queue.Empty:
                    yield None
                    continue
            if held[0] is _END:
                return
            if isinstance(held[0], BaseException):
                raise held[0]
            task, decoding = held.popleft()
            taken = [(task, decoding.result())]
            deadline = time.monotonic() + wait_s
            while len(taken) < batch:
                try:
                    if not held:
                        held.append(ready.get(timeout=max(0.0, deadline - time.monotonic())))
                    if held[0] is _END or isinstance(held[0], BaseException):
                        break
                    if held[0][1].exception(timeout=max(0.0, deadline - time.monotonic())) is not None:
                        break  # raised as the next batch's first image, once this batch is done
                except (queue.Empty, DecodingTimeout):
                    break
                task, decoding = held.popleft()
                taken.append((task, decoding.result()))
            yield taken
    finally:
        closed.set()
        decoders.shutdown(wait=False, cancel_futures=True)


def _start_batch(batch: list, pipeline: EdgeCloudPipeline) -> list[Proposal | ImageError]:
    """`_start` of each (task, loaded), the readable images detected as one batch. If the batch fails, each image
    is started alone, so that a failure is the failing image's."""
    readable = [(task, loaded) for task, loaded in batch if loaded[2] is None]
    if len(readable) < 2:
        return [_start(task, loaded, pipeline) for task, loaded in batch]
    try:
        proposals = iter(pipeline.propose_batch([(loaded[0], loaded[1], task.image_id) for task, loaded in readable]))
    except Exception:  # a model failing on one image must not fail the others
        return [_start(task, loaded, pipeline) for task, loaded in batch]
    return [loaded[2] if loaded[2] is not None else next(proposals) for _, loaded in batch]


def _start(task: InspectionTask, loaded, pipeline: EdgeCloudPipeline) -> Proposal | ImageError:
    """The edge's half of one task; a failure to read or detect becomes the task's error."""
    image, template, error, _ = loaded
    if error is not None:
        return error
    try:
        return pipeline.propose(image, template, task.image_id)
    except Exception as failure:  # a model failing on one image must not end the run
        return ImageError(task.image_path, f"detector failed: {type(failure).__name__}: {failure}")


def _complete(pipeline: EdgeCloudPipeline, task: InspectionTask, started: Proposal | ImageError) -> ImageResult | ImageError:
    """The cloud's half; a backend's AnalyzerError is handled by the pipeline, anything else fails the task."""
    if isinstance(started, ImageError):
        return started
    try:
        return pipeline.complete(started)
    except Exception as failure:
        return ImageError(task.image_path, f"analysis failed: {type(failure).__name__}: {failure}")


def _complete_batch(pipeline: EdgeCloudPipeline, items: list) -> list[ImageResult | ImageError]:
    """`_complete` of each (task, started), the proposals completed together (one analyzer call). If that fails,
    each is completed alone, so that a failure is the failing image's."""
    proposals = [started for _, started in items if not isinstance(started, ImageError)]
    if len(proposals) < 2:
        return [_complete(pipeline, task, started) for task, started in items]
    try:
        results = iter(pipeline.complete_batch(proposals))
    except Exception:  # an analysis failing on one image must not fail the others
        return [_complete(pipeline, task, started) for task, started in items]
    return [started if isinstance(started, ImageError) else next(results) for _, started in items]


class _CloudWorker:
    """The cloud's half on its own thread. The proposals waiting when it gets to them (up to `batch`) are completed
    together, so that an in-process classifier runs once for all their regions; results come back per image."""

    def __init__(self, pipeline: EdgeCloudPipeline, batch: int):
        self.pipeline, self.batch = pipeline, batch
        self.waiting: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="aivd-cloud", daemon=True)
        self.thread.start()

    def submit(self, task: InspectionTask, started: Proposal | ImageError) -> Future:
        future: Future = Future()
        self.waiting.put((task, started, future))
        return future

    def _work(self) -> None:
        ending = False
        while not ending:
            items = [self.waiting.get()]
            while len(items) < self.batch and not self.waiting.empty():
                items.append(self.waiting.get())
            if items[-1] is _END:
                items, ending = items[:-1], True
            try:
                outcomes = _complete_batch(self.pipeline, [(task, started) for task, started, _ in items])
            except BaseException as failure:  # raised to the edge's thread, which would otherwise wait forever
                outcomes = None
                for _, _, future in items:
                    future.set_exception(failure)
            for (_, _, future), outcome in zip(items, outcomes or ()):
                future.set_result(outcome)

    def close(self) -> None:
        self.waiting.put(_END)
        self.thread.join()


class _InOrderWriting:
    """`finish` of each image, in input order, on a thread of its own: writing the outputs (the annotated JPEG, the
    database row, the report's record) then overlaps with the edge's next images instead of waiting for them, as
    the cloud's half does. At most `depth` images wait here (with the cloud or to be written), which holds the edge
    back when writing or the cloud is slower. The first failure of `finish` ends the writing: the images after it are
    dropped, and the failure is raised to the edge's thread at its next `put`, `drain` or `close`."""

    def __init__(self, finish: Callable, depth: int):
        self._finish = finish
        self._items: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="aivd-write", daemon=True)
        self._thread.start()

    def put(self, item: tuple) -> None:
        self._raise_failure()
        self._items.put(item)

    def drain(self) -> None:
        """Return once every image put is written."""
        self._items.join()
        self._raise_failure()

    def close(self) -> None:
        """Write every image put, end the thread, and raise the failure if there was one."""
        self._items.put(_END)
        self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _work(self) -> None:
        while True:
            item = self._items.get()
            try:
                if item is _END:
                    return
                if self._failure is None:
                    self._finish(*item)
            except BaseException as failure:
                self._failure = failure
            finally:
                self._items.task_done()


def _record(task: InspectionTask, read_ms: float, pipeline: EdgeCloudPipeline, outcome: ImageResult | ImageError) -> InspectionRecord:
    template = str(task.template_path) if task.template_path else None
    return inspection_record(str(task.image_path), task.image_id, template, pipeline, outcome, read_ms)


def inspection_record(image: str, image_id: str, template: str | None, pipeline: EdgeCloudPipeline,
                      outcome: ImageResult | ImageError, read_ms: float) -> InspectionRecord:
    """The results.jsonl line for one image; also what the Ray runtime's HTTP API answers."""
    base = {
        "image": image, "image_id": image_id, "detector": pipeline.detector.name,
        "analyzer": pipeline.analyzer.name if pipeline.analyzer else None, "template": template,
    }
    if isinstance(outcome, ImageError):
        return InspectionRecord(**base, status="error", error=outcome.reason)
    timings = {"read": round(read_ms, 2), **outcome.timings_ms}
    timings["total"] = round(sum(timings.values()), 2)
    return InspectionRecord(
        **base, status="ok", error=None, cloud_error=outcome.cloud_error, defects=outcome.defects, rejected=outcome.rejected,
        timings_ms=timings, bytes_to_cloud=outcome.bytes_to_cloud, bytes_from_cloud=outcome.bytes_from_cloud,
    )


def inspect_tasks(
    tasks: Iterable[InspectionTask],
    pipeline: EdgeCloudPipeline | Detector,
    out: Path | ResultWriter,
    options: InspectOptions = InspectOptions(),
    on_result: Callable[[InspectionRecord], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    live: Live | None = None,
) -> InspectSummary:
    """Inspect every task, write one record per task, and never stop on a bad input. `out` is the output
    folder, or a `ResultWriter` already opened on one (to report a bad database before starting). When resuming,
    the tasks whose image the run has done are skipped. Once `should_stop()` is true no new image is started: the
    images in hand are finished and written and the run is closed as interrupted. `live` (`live_update.live`)
    gets each written image: its metrics, and its learner the images inspected (one at a time when it waits).

    `tasks` may be a live source that yields tasks as they come (`aivd.intake`) and ends only when it is closed:
    while it has none ready, the images in hand are finished, and `should_stop()` ends the run."""
    if not isinstance(pipeline, EdgeCloudPipeline):
        pipeline = EdgeCloudPipeline(pipeline)
    summary = InspectSummary()
    writer = out if isinstance(out, ResultWriter) else ResultWriter(out, options)
    for record in writer.done:
        summary.count(record)
    summary.resumed = summary.images
    done_ids = {record.image_id for record in writer.done}
    tasks = (task for task in tasks if task.image_id not in done_ids)
    started = time.perf_counter()

    def finish(task: InspectionTask, loaded, outcome) -> None:
        outcome = outcome.result()
        record = _record(task, loaded[3], pipeline, outcome)
        summary.count(record)
        # The drift state the learner had reached when this image was written: it has observed the images before it
        # (all of them when it waits; those it has dequeued so far otherwise).
        drifted = live.learner.drifted if live is not None and live.learner is not None else None
        writer.write(record, loaded[0], None if isinstance(outcome, ImageError) else outcome.detections, task.intake_id, drifted)
        if live is not None:
            inspected = None if isinstance(outcome, ImageError) else outcome
            if live.metrics is not None:
                live.metrics.observe(record, inspected)
            if live.learner is not None and inspected is not None:
                live.learner.offer(summary.images - 1, task.image_id, loaded[0], loaded[1], inspected)
        if on_result:
            on_result(record)

    try:
        # The cloud's half of image i runs on its own thread while the edge works on image i + 1, as the two
        # tiers would on two machines, and writing image i on a third; records are still written in input order.
        # A learner that waits sees image i, and may swap the edge's model, before image i + 1 is proposed.
        waits = live is not None and live.learner is not None and live.learner.wait
        batching = pipeline.batching
        edge_batch, cloud_batch = (1, 1) if waits else (batching.edge, batching.cloud)
        # Up to a cloud batch of images may wait for the cloud, and a few more to be written, while the edge goes on.
        cloud = _CloudWorker(pipeline, cloud_batch)
        writing = _InOrderWriting(finish, max(CLOUD_IN_FLIGHT, cloud_batch) + WRITES_IN_FLIGHT)
        try:
            try:
                for batch in _prefetched(tasks, options, edge_batch, batching.edge_wait_ms / 1000):
                    if should_stop():
                        summary.interrupted = True
                        break
                    if batch is None:  # a live source has nothing yet: what is in hand is not held back for it
                        writing.drain()
                        continue
                    for (task, loaded), proposal in zip(batch, _start_batch(batch, pipeline)):
                        writing.put((task, loaded, cloud.submit(task, proposal)))
                        if waits:
                            writing.drain()
            finally:
                cloud.close()
        finally:
            writing.close()  # every image in hand is written, also when the edge's loop failed
        summary.wall_s = time.perf_counter() - started  # the database records the inspection time alone
        writer.finish(summary)
    finally:
        writer.close()
        summary.wall_s = time.perf_counter() - started
    return summary
