"""End-to-end edge inspection speed: JPEG decode, pre/post-processing and ONNX inference at batch 1."""

from __future__ import annotations

import os
import platform
import resource
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from aivd.edge.detector import Detector
from aivd.pipeline.inputs import InspectionTask
from aivd.pipeline.inspect import InspectOptions, inspect_tasks


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(array, q)), 2) for q in (50, 90, 99)} | {"mean": round(float(array.mean()), 2)}


def bench_inspect(tasks: list[InspectionTask], detector: Detector, annotate: bool, warmup: int = 5, repeat: int = 1) -> dict:
    """Run the real `inspect_tasks` over `tasks` (`repeat` times) into a scratch folder and report its speed."""
    with tempfile.TemporaryDirectory() as scratch:
        options = InspectOptions(annotate=annotate, deeppcb_results=True)
        inspect_tasks(tasks[:warmup], detector, Path(scratch) / "warmup", options)
        detect_ms, read_ms, wall = [], [], 0.0
        processed = 0
        for run in range(repeat):
            records = []
            summary = inspect_tasks(tasks, detector, Path(scratch) / f"run{run}", options, records.append)
            wall += summary.wall_s
            processed += summary.images
            detect_ms += [r.timings_ms["detect"] for r in records if r.status == "ok"]
            read_ms += [r.timings_ms["read"] for r in records if r.status == "ok"]
    return {
        "images": processed,
        "images_per_s": round(processed / wall, 2),
        "wall_s": round(wall, 3),
        "annotate": annotate,
        "detect_ms": _percentiles(detect_ms),
        "read_ms": _percentiles(read_ms),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "detector": detector.name,
        "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "onnxruntime": ort.__version__},
    }
