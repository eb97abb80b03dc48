"""End-to-end inspection speed: JPEG decode, pre/post-processing, edge and cloud inference at batch 1."""

from __future__ import annotations

import os
import platform
import resource
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from aivd.pipeline.engine import EdgeCloudPipeline
from aivd.pipeline.inputs import InspectionTask
from aivd.pipeline.inspect import InspectOptions, inspect_tasks
from aivd.schema.records import InspectionRecord


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(array, q)), 2) for q in (50, 90, 99)} | {"mean": round(float(array.mean()), 2)}


def bench_inspect(tasks: list[InspectionTask], pipeline: EdgeCloudPipeline, annotate: bool, warmup: int = 5, repeat: int = 1) -> dict:
    """Run the real `inspect_tasks` over `tasks` (`repeat` times) into a scratch folder and report its speed."""
    with tempfile.TemporaryDirectory() as scratch:
        options = InspectOptions(annotate=annotate, deeppcb_results=True)
        inspect_tasks(tasks[:warmup], pipeline, Path(scratch) / "warmup", options)
        stages: dict[str, list[float]] = {}
        wall, processed, regions, sent, received = 0.0, 0, 0, 0, 0
        for run in range(repeat):
            records: list[InspectionRecord] = []
            summary = inspect_tasks(tasks, pipeline, Path(scratch) / f"run{run}", options, records.append)
            wall += summary.wall_s
            processed += summary.images
            for record in records:
                if record.status == "ok":
                    for stage, ms in record.timings_ms.items():
                        stages.setdefault(stage, []).append(ms)
                    regions += len(record.defects) + len(record.rejected) if pipeline.analyzer else 0
                    sent, received = sent + record.bytes_to_cloud, received + record.bytes_from_cloud
    return {
        "images": processed,
        "images_per_s": round(processed / wall, 2),
        "wall_s": round(wall, 3),
        "annotate": annotate,
        "stage_ms": {stage: _percentiles(values) for stage, values in stages.items()},
        "regions_per_image": round(regions / max(1, processed), 2),
        "bytes_to_cloud_per_image": round(sent / max(1, processed)),
        "bytes_from_cloud_per_image": round(received / max(1, processed)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pipeline": pipeline.name,
        "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "onnxruntime": ort.__version__},
    }
