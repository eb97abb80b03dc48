"""`aivd bench live-update`: what an online update training beside `aivd inspect` costs inspection.

The pipeline is the one a live run with `update.enabled` builds (its edge follows a model store). The images are
inspected with nothing else running, before and after the update (`images_per_s_without_update` is the mean of
the two, which brackets the load others put on a shared machine). In between, an update of the edge model is
trained as the live learner trains it (`update.isolation`, `update.learner.threads`), from a replay buffer the
pipeline itself labelled, while the same images are inspected over and over: every image finished between the
update's start and its end counts (`images_per_s_during_update`). The update's start includes starting its
process, as a live run's first update does.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from aivd.collab.offload import LabelAll
from aivd.collab.replay import ReplayBuffer
from aivd.config import PipelineConfig
from aivd.data.images import read_pair
from aivd.model_store import ModelStore
from aivd.pipeline.factory import build_pipeline
from aivd.pipeline.inputs import InspectionTask
from aivd.pipeline.inspect import InspectOptions, inspect_tasks
from aivd.pipeline.learning import cloud_rejected_boxes, fully_labelled, regions_sent

QUIET = InspectOptions(annotate=False, report=False, database=None)


def labelled_buffer(pipeline, tasks: list[InspectionTask]) -> ReplayBuffer:
    """The replay buffer a live run would hold after `tasks`: each hard image with the pipeline's own labels, the
    validation images with all their regions sent."""
    buffer = ReplayBuffer()
    offloader = pipeline.offloader
    pipeline.offloader = LabelAll(offloader, lambda: buffer.next_is_validation)
    try:
        for task in tasks:
            image, template = read_pair(task.image_path, task.template_path)
            result = pipeline.run(image, template, task.image_id)
            buffer.add(task.image_id, image, template, result.detections, regions_sent(result), cloud_rejected_boxes(result),
                       fully_labelled(result))
    finally:
        pipeline.offloader = offloader
    return buffer


def bench_live_update(config: PipelineConfig, tasks: list[InspectionTask], train_tasks: list[InspectionTask]) -> dict:
    """`config` with update.enabled (its model_store is replaced by a temporary one)."""
    from aivd.pipeline.live_update import ProcessTrainer, thread_trainer  # torch

    with tempfile.TemporaryDirectory(prefix="aivd-bench-live-") as workdir:
        work = Path(workdir)
        update = config.update.model_copy(update={"model_store": work / "store"})
        pipeline = build_pipeline(config.model_copy(update={"update": update}))
        store = ModelStore(update.model_store)
        train, validation = labelled_buffer(pipeline, train_tasks).split()
        inspect_tasks(tasks[:2], pipeline, work / "warm", QUIET)  # model sessions warmed up, as in a running line
        before = inspect_tasks(tasks, pipeline, work / "before", QUIET).images_per_s

        trainer = ProcessTrainer() if update.isolation == "process" else None
        train_fn = trainer or thread_trainer()
        span: dict = {}

        def training() -> None:
            span["start"] = time.perf_counter()
            try:
                span["update"] = train_fn(store.detector_path(store.current()), train, validation, work / "candidate", update.learner)
            except Exception as error:  # raised again on the benchmark's thread, below
                span["error"] = error
            span["end"] = time.perf_counter()

        finished: list[float] = []
        worker = threading.Thread(target=training, name="bench-update")
        try:
            worker.start()
            passes = 0
            while worker.is_alive():
                inspect_tasks(tasks, pipeline, work / f"during-{passes}", QUIET, on_result=lambda _: finished.append(time.perf_counter()))
                passes += 1
            worker.join()
        finally:
            if trainer is not None:
                trainer.close()
        after = inspect_tasks(tasks, pipeline, work / "after", QUIET).images_per_s
    if "error" in span:
        raise span["error"]
    during = [t for t in finished if span["start"] <= t <= span["end"]]
    seconds = span["end"] - span["start"]
    # Before and after: on a shared machine the load others put on it drifts; their mean brackets the update.
    without, with_update = (before + after) / 2, len(during) / seconds
    return {
        "isolation": update.isolation, "torch_threads": update.learner.threads, "refiner_epochs": update.learner.refiner_epochs,
        "images": len(tasks), "train_images": len(train), "validation_images": len(validation),
        "images_per_s_without_update": round(without, 2), "images_per_s_before_after": [round(before, 2), round(after, 2)],
        "images_per_s_during_update": round(with_update, 2),
        "ratio": round(with_update / without, 3), "update_seconds": round(seconds, 1), "images_during_update": len(during),
        "update_fscore_before_after": [span["update"].fscore_before, span["update"].fscore_after],
    }
