"""`aivd bench live-update`: what an online update training beside `aivd inspect` costs inspection.

The pipeline is the one a live run with `update.enabled` builds (its edge follows a model store). It inspects the
same images over and over for `duration_s`, while beside it an update of the edge model is trained again and
again, as the live learner trains it (`update.isolation`, `update.learner.threads`), from a replay buffer the
pipeline itself labelled, with `idle_s` seconds without training between updates. Each image finished while an
update trained counts for `images_per_s_during_update`, each other one for `images_per_s_without_update`: the two
rates are measured in alternating windows of one run, so load that others put on a shared machine, which drifts
over minutes, weighs on both alike (two separate passes differed by up to 2x on the 2-core machine). The first
update's time includes starting its process, as a live run's first update does.
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


def bench_live_update(config: PipelineConfig, tasks: list[InspectionTask], train_tasks: list[InspectionTask],
                      duration_s: float = 240.0, idle_s: float = 15.0) -> dict:
    """`config` with update.enabled (its model_store is replaced by a temporary one)."""
    from aivd.pipeline.live_update import ProcessTrainer, thread_trainer  # torch

    with tempfile.TemporaryDirectory(prefix="aivd-bench-live-") as workdir:
        work = Path(workdir)
        update = config.update.model_copy(update={"model_store": work / "store"})
        pipeline = build_pipeline(config.model_copy(update={"update": update}))
        store = ModelStore(work / "store")
        served = store.current()  # the version build_pipeline seeded: every update starts from it
        assert served is not None
        train, validation = labelled_buffer(pipeline, train_tasks).split()
        inspect_tasks(tasks[:2], pipeline, work / "warm", QUIET)  # model sessions warmed up, as in a running line

        trainer = ProcessTrainer() if update.isolation == "process" else None
        train_fn = trainer or thread_trainer()
        spans: list[tuple[float, float]] = []
        failures: list[Exception] = []
        stop = threading.Event()

        def training() -> None:
            while not stop.wait(idle_s):
                started = time.perf_counter()
                try:
                    train_fn(store.detector_path(served), train, validation, work / f"candidate-{len(spans)}", update.learner)
                except Exception as error:  # raised again on the benchmark's thread, below
                    failures.append(error)
                    return
                spans.append((started, time.perf_counter()))

        finished: list[float] = []
        worker = threading.Thread(target=training, name="bench-update")
        begin = time.perf_counter()
        worker.start()
        try:
            passes = 0
            while time.perf_counter() - begin < duration_s and not failures:
                inspect_tasks(tasks, pipeline, work / f"pass-{passes}", QUIET, on_result=lambda _: finished.append(time.perf_counter()))
                passes += 1
            end = time.perf_counter()
        finally:
            stop.set()
            worker.join()
            if trainer is not None:
                trainer.close()
    if failures:
        raise failures[0]
    if not spans:
        raise ValueError(f"no update finished within {duration_s:.0f} s: give a longer --duration")

    def training_at(moment: float) -> bool:
        return any(first <= moment <= last for first, last in spans)

    busy = sum(min(last, end) - first for first, last in spans if first < end)
    during = sum(map(training_at, finished))
    without, with_update = (len(finished) - during) / (end - begin - busy), during / busy
    seconds = [last - first for first, last in spans]
    return {
        "isolation": update.isolation, "torch_threads": update.learner.threads, "refiner_epochs": update.learner.refiner_epochs,
        "images": len(tasks), "train_images": len(train), "validation_images": len(validation),
        "images_per_s_without_update": round(without, 2), "images_per_s_during_update": round(with_update, 2),
        "ratio": round(with_update / without, 3), "updates": len(spans), "update_seconds": [round(t, 1) for t in seconds],
        "seconds_training": round(busy, 1), "seconds": round(end - begin, 1),
    }
