"""Online learning beside a live run, and the run's Prometheus metrics.

`LiveLearner` feeds the `OnlineUpdater` (replay buffer, drift monitor, trigger, training, gate, rollback) from
a background worker, so that learning never blocks inspection:

- After each image's cloud half, the inspecting loop hands (position, image id, image, template, result) over
  through a bounded queue. When the queue is full the image is not observed at all: not buffered, not counted by
  the trigger nor by the drift monitor. A learner that falls behind therefore sees a thinner stream: the trigger
  fires later, counted in stream images, and never on images it did not see.
- An update trains where `update.isolation` says: by default in a separate process at the lowest priority, with
  `update.learner.threads` torch threads, so inspection keeps its cores (measured by `aivd bench live-update`).
  The worker thread waits for it; images keep queueing meanwhile, up to the queue's size.
- A promoted version reaches the edge through the model store: the edge is a `HotSwapDetector` on it
  (`aivd.pipeline.factory.following_update_store`), which picks the new CURRENT up at its next poll.
- A validation image needs every region decided by the cloud: the pipeline's offloader is wrapped in
  `LabelAll(offloader, learner.wants_full_labels)`. The edge reads that flag on its own thread; the worker
  publishes it as a plain bool after each observation (one writer, an atomic read), so the edge never waits for
  the learner's lock or for a training update. With images in flight, the image that comes back fully labelled
  is not always the one the buffer asked for; the buffer then holds the next fully labelled image out instead
  (`ReplayBuffer.add`).

- Human reviews teach it too (`update.reviews`): once the run's result database is open (`Live.follow_reviews`),
  after each image it observes the learner reads the reviews stored since the last (`ReviewFeed`, as
  `aivd bench collab --review-share` does) and hands them to the updater with top trust; with the in-process
  built-in cloud, its classifier learns from them as well (`aivd.training.cloud_update`). The reviews also decide
  which tier the merge believes on the regions sent (`aivd.pipeline.trust.TierTrust`, the pipeline's `trust`): the
  feed has both tiers judge each reviewed image on the learner's thread, which publishes the verdict as a plain bool.

With `update.wait_for_updates` the run is reproducible: the loop inspects one image at a time and waits until
the learner has observed it (and trained, when that image triggered an update), which is exactly what
`aivd bench collab --update` (`online_pass`) does, so both make the same updates at the same images.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server

from aivd.collab.offload import LabelAll
from aivd.config import ConfigError, PipelineConfig, UpdateConfig
from aivd.core.errors import AivdError
from aivd.pipeline.engine import EdgeCloudPipeline, ImageResult
from aivd.pipeline.learning import learn_from, regions_sent
from aivd.schema.records import InspectionRecord

if TYPE_CHECKING:  # imported where used: the review package reads the result database
    from aivd.review.learning import ReviewFeed

log = logging.getLogger(__name__)

# How much lower than the inspecting process an update trains (nice increment; 19 is the lowest priority): on a
# machine without spare cores the scheduler then gives inspection the CPU whenever it wants it.
TRAINING_NICENESS = 19
UPDATE_ACTIONS = ("promote", "reject", "skip", "rollback", "error")


class MetricsServerError(AivdError, OSError):
    """The metrics port cannot be served (taken, or not ours to bind); the message names it."""


class LiveMetrics:
    """A live run's Prometheus metrics, in a registry of their own (so that several runs in one process, as in
    tests, do not collide), served by prometheus_client's own HTTP server (`serve`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.candidates = Counter("aivd_candidate_regions", "Candidate regions the edge proposed", registry=r)
        self.sent = Counter("aivd_regions_sent", "Candidate regions the offloading stage sent to the cloud", registry=r)
        self.answered = Counter("aivd_cloud_answered_regions", "Sent regions the cloud answered", registry=r)
        self.disagreed = Counter("aivd_cloud_disagreements", "Answered regions the cloud decided otherwise than the edge would have",
                                 registry=r)
        self.offload_ratio = Gauge("aivd_offload_ratio", "Share of the candidate regions sent to the cloud since the start", registry=r)
        self.disagreement = Gauge("aivd_cloud_disagreement",
                                  "1 - edge agreement: share of the answered regions the cloud decided otherwise, since the start",
                                  registry=r)
        self.drift = Gauge("aivd_drift", "1 while the drift monitor sees the edge disagree with the cloud more than it used to",
                           registry=r)
        self.model = Info("aivd_edge_model", "The edge model served for the latest image", registry=r)
        self.updates = Counter("aivd_model_updates", "Online updates of the edge model by outcome", ["action"], registry=r)
        for action in UPDATE_ACTIONS:
            self.updates.labels(action)  # each outcome is exported from the start, at 0
        # The ratios' terms, kept here: prometheus_client has no public read of a counter's value.
        self._candidates = self._sent = self._answered = self._disagreed = 0

    def observe(self, record: InspectionRecord, result: ImageResult | None) -> None:
        """One written record, with its `ImageResult` when the image was inspected."""
        if record.detector is not None:
            name, _, version = record.detector.partition("@")
            self.model.info({"model": name, "version": version})
        if result is None:
            return
        candidates, sent = len(result.defects) + len(result.rejected), regions_sent(result)
        answered = 0 if result.edge_agrees is None else len(result.edge_agrees)
        disagreed = 0 if result.edge_agrees is None else int((~result.edge_agrees).sum())
        for counter, value in ((self.candidates, candidates), (self.sent, sent), (self.answered, answered), (self.disagreed, disagreed)):
            counter.inc(value)
        self._candidates, self._sent = self._candidates + candidates, self._sent + sent
        self._answered, self._disagreed = self._answered + answered, self._disagreed + disagreed
        self.offload_ratio.set(self._sent / self._candidates if self._candidates else 0.0)
        self.disagreement.set(self._disagreed / self._answered if self._answered else 0.0)

    def updated(self, action: str) -> None:
        self.updates.labels(action).inc()

    @contextmanager
    def serving(self, port: int, host: str = "127.0.0.1") -> Iterator[int]:
        """Serve /metrics on `host:port` (0: a free port) while inside; yields the port."""
        try:
            server, thread = start_http_server(port, host, self.registry)
        except OSError as error:
            raise MetricsServerError(f"--metrics-port {port}: cannot serve metrics on {host}:{port} ({error.strerror or error})") from None
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


@dataclass
class _Handed:
    position: int
    image_id: str
    image: np.ndarray
    template: np.ndarray | None
    result: ImageResult


class LiveLearner:
    """The `OnlineUpdater` on a worker thread, fed through a bounded queue (see the module's docstring)."""

    def __init__(self, updater, queue_size: int = 16, wait: bool = False, metrics: LiveMetrics | None = None,
                 on_close=()) -> None:
        self.updater, self.wait, self.metrics = updater, wait, metrics
        self.reviews: ReviewFeed | None = None  # a ReviewFeed, once `follow_reviews` names the run's database
        self.observed = self.dropped = 0
        self._queue: queue.Queue[_Handed | None] = queue.Queue(maxsize=queue_size)
        self._full_labels = updater.wants_full_labels()  # written by the worker only
        self._drifted = updater.monitor.drifted  # likewise
        self._on_close = list(on_close)
        self._worker = threading.Thread(target=self._run, name="aivd-learner", daemon=True)
        self._worker.start()

    def follow_reviews(self, url: str, labels, pipeline: EdgeCloudPipeline | None = None) -> None:
        """Also learn from the human reviews stored in the result database at `url` (the run's own): after each
        image it observes, the learner reads the reviews stored since the last (`ReviewFeed`), and has `pipeline`'s
        tiers judged on them when it has a `trust`. Call before handing over the first image."""
        from aivd.review.learning import ReviewFeed

        feed = ReviewFeed(url, labels, pipeline)
        self.reviews = feed
        self._on_close.append(feed.close)

    def wants_full_labels(self) -> bool:
        """Whether a validation image is due; read by the edge's thread, never blocks."""
        return self._full_labels

    @property
    def drifted(self) -> bool:
        """Whether the drift monitor was in its drift state after the last image observed; read by the writing
        thread for each record (`images.drifted`, which the review queue ranks higher), never blocks."""
        return self._drifted

    @property
    def updates(self) -> list[dict]:
        return self.updater.updates

    def offer(self, position: int, image_id: str, image: np.ndarray, template: np.ndarray | None, result: ImageResult) -> bool:
        """Hand one inspected image over; False when the queue is full and the image is not observed. In `wait`
        mode this returns once the learner has observed it (and trained, if it triggered an update)."""
        item = _Handed(position, image_id, image, template, result)
        if self.wait:
            self._queue.put(item)
            self._queue.join()
            return True
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._observe(item)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _observe(self, item: _Handed) -> None:
        before = len(self.updater.updates)
        errors = self._learn(item.position, learn_from, self.updater, item.image_id, item.image, item.template, item.result,
                             item.position)
        if self.reviews is not None:  # the same order as `aivd bench collab --review-share`: the image, then new reviews
            errors += self._learn(item.position, self.reviews.teach, self.updater, item.position)
        self.observed += 1
        self._full_labels = self.updater.wants_full_labels()
        self._drifted = self.updater.monitor.drifted
        if self.metrics is not None:
            self.metrics.drift.set(int(self._drifted))
        # Every record this image brought: the edge's update or rollback and, with reviews, the cloud's too.
        for record in [*self.updater.updates[before:], *errors]:
            if self.metrics is not None:
                self.metrics.updated(record["action"])
            log.info("online update at image %s: %s", item.position, record)

    def _learn(self, position: int, step, *args) -> list[dict]:
        """`step(*args)`; a failure is logged and becomes an `error` record (returned), and the trigger backs off until
        it fires again: a failed update must not end the run."""
        try:
            step(*args)
            return []
        except Exception:
            log.exception("online update at image %s failed", position)
            self.updater.trigger.updated(promoted=False)
            return [{"action": "error"}]

    def close(self) -> None:
        """Finish what was handed over (an update in training included), then stop the worker and clean up."""
        self._queue.put(None)
        self._worker.join()
        for close in self._on_close:
            close()


class ProcessTrainer:
    """`update_edge_model` in a process of its own at the lowest priority: training then takes no core from
    inspection (nor the GIL), which a thread of the inspecting process would."""

    def __init__(self) -> None:
        self._pool = self._start()

    @staticmethod
    def _start() -> ProcessPoolExecutor:
        # spawn, not fork: the inspecting process has threads (prefetch, cloud, ONNX Runtime) a fork would copy mid-state.
        return ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=os.nice, initargs=(TRAINING_NICENESS,))

    def __call__(self, current: Path, train, validation, out_dir: Path, config):
        from aivd.training.online_update import update_edge_model

        try:
            return self._pool.submit(update_edge_model, current, train, validation, out_dir, config).result()
        except BrokenProcessPool:  # killed (out of memory?): the next update gets a fresh process
            self._pool = self._start()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def on_a_lowered_thread(function):
    """`function` run on the caller's thread (the learner's), which first lowers its own priority (Linux schedules
    threads one by one, and torch's worker threads inherit it)."""
    lowered = set()

    def call(*args):
        thread = threading.get_native_id()
        if thread not in lowered:
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + TRAINING_NICENESS, 19))
            lowered.add(thread)
        return function(*args)

    return call


def thread_trainer():
    """`update_edge_model` on the learner's thread, at a lowered priority."""
    from aivd.training.online_update import update_edge_model

    return on_a_lowered_thread(update_edge_model)


def learner_for(update: UpdateConfig, metrics: LiveMetrics | None = None, isolation: str | None = None) -> LiveLearner:
    """A learner on `update.model_store` (which must serve a version); `isolation` overrides `update.isolation`."""
    from aivd.collab.drift_monitor import UpdateTrigger
    from aivd.model_store import ModelStore

    try:
        from aivd.training.online_update import OnlineUpdater  # torch: only when learning
    except ImportError as error:
        raise ConfigError(f"update.enabled needs PyTorch, in aivd's train extra: pip install 'aivd[train]' ({error})") from None

    assert update.model_store is not None  # UpdateConfig requires one when enabled
    workdir = tempfile.TemporaryDirectory(prefix="aivd-learner-")  # candidates, until published into the store
    trainer = ProcessTrainer() if (isolation or update.isolation) == "process" else None
    updater = OnlineUpdater(ModelStore(update.model_store), Path(workdir.name), update.learner, trigger=UpdateTrigger(update.trigger),
                            train_window=update.train_window, min_gain=update.min_gain, train=trainer or thread_trainer())
    closers = [trainer.close] if trainer else []
    return LiveLearner(updater, update.queue, update.wait_for_updates, metrics, [*closers, workdir.cleanup])


def build_learner(update: UpdateConfig, pipeline: EdgeCloudPipeline, metrics: LiveMetrics | None = None) -> LiveLearner:
    """The learner for `pipeline` (built by `build_pipeline` with `update.enabled`, so its edge follows the store),
    whose offloader is wrapped to label validation images fully."""
    learner = learner_for(update, metrics)
    pipeline.offloader = LabelAll(pipeline.offloader, learner.wants_full_labels)
    from aivd.cloud.builtin import BuiltinAnalyzer

    if update.reviews:
        from aivd.pipeline.trust import TierTrust

        pipeline.trust = TierTrust()
    if update.reviews and isinstance(pipeline.analyzer, BuiltinAnalyzer):
        # The in-process built-in cloud learns from the reviews too, its versions in the store's `cloud` folder. Its
        # fine-tuning is small (the reviewed crops alone) and runs on the learner's thread, at a lowered priority.
        from aivd.model_store import ModelStore
        from aivd.training.cloud_update import CloudLearner, update_cloud_classifier

        assert update.model_store is not None  # UpdateConfig requires one when enabled
        learner.updater.cloud = CloudLearner(ModelStore(Path(update.model_store) / "cloud"), pipeline.analyzer, learner.updater.workdir,
                                             update.learner, on_a_lowered_thread(update_cloud_classifier))
    return learner


@dataclass
class Live:
    """What runs beside an inspection: the learner and the metrics, each None when not asked for."""

    learner: LiveLearner | None = None
    metrics: LiveMetrics | None = None
    metrics_port: int | None = None  # the port metrics are served on
    learn_reviews: bool = False  # update.reviews: the learner also learns from the run database's human reviews
    pipeline: EdgeCloudPipeline | None = None  # the pipeline the learner teaches, whose trust the reviews judge

    def follow_reviews(self, store, labels) -> None:
        """Have the learner, if it learns from reviews, read those of `store` (the run's ResultStore, whose engine
        knows the full URL; its `url` hides the password)."""
        if self.learner is not None and self.learn_reviews and store is not None:
            self.learner.follow_reviews(store.engine.url.render_as_string(hide_password=False), labels, self.pipeline)


@contextmanager
def live(config: PipelineConfig, pipeline: EdgeCloudPipeline, metrics_port: int | None = None,
         metrics_host: str = "127.0.0.1") -> Iterator[Live]:
    """The learner (with `config.update.enabled`) and the metrics server (with a `metrics_port`) for one run of
    `pipeline`; pass what it yields to `inspect_tasks`. On leaving, the learner finishes what it was handed."""
    result = Live(learn_reviews=config.update.reviews, pipeline=pipeline)
    if metrics_port is not None:
        result.metrics = LiveMetrics()
    with result.metrics.serving(metrics_port, metrics_host) if metrics_port is not None and result.metrics else nullcontext() as port:
        result.metrics_port = port
        if config.update.enabled:
            result.learner = build_learner(config.update, pipeline, result.metrics)
        try:
            yield result
        finally:
            if result.learner is not None:
                result.learner.close()
