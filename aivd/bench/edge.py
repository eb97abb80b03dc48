"""`aivd bench edge`: every edge runtime side by side, in one run, on DeepPCB: speed, memory and accuracy.

Runs are named RUNTIME-PRECISION: `onnx-fp32` (the pack as shipped, the reference), `onnx-int8`, `openvino-fp32`
and `openvino-int8` (`aivd export` of it). Each run is the pack's edge alone (no cloud) at batch 1 through the
detector call path `aivd inspect` uses (`EdgeCloudPipeline.detect`), in a process of its own, so that its peak
resident memory (`peak_rss_mb`: the kernel's VmHWM of that process, read at its end) is its runtime's alone. Images are
decoded before each one's clock starts: images/s and latencies are the models with their pre- and
post-processing, not JPEG decoding. F-score and AP are the official DeepPCB protocol's on the same detections.
With `repeat` > 1 the runs go again in reversed order, alternately, and every pass is reported, so the machine's
noise shows; a run's figures are the median of its passes.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REFERENCE = "onnx-fp32"
# Run name -> `aivd export --to` target (the reference is the pack itself).
EXPORTS = {"onnx-int8": "onnx-int8", "openvino-fp32": "openvino", "openvino-int8": "openvino-int8"}
RUN_NAMES = (REFERENCE, *EXPORTS)


class BenchError(RuntimeError):
    pass


def measure_edge(pack: str, root: Path, split: str, warmup: int, limit: int | None) -> dict:
    """One run, in this process: the pack's edge over the DeepPCB split at batch 1."""
    from aivd.config import build_config
    from aivd.data.deeppcb import load_split
    from aivd.data.images import read_pair
    from aivd.eval.deeppcb_eval import evaluate_results
    from aivd.pipeline.factory import build_pipeline

    pipeline = build_pipeline(build_config(None, {"edge": {"pack": pack}, "cloud": {"backend": "none"}}))
    samples = load_split(root, split)[:limit]
    for sample in samples[:warmup]:
        pipeline.detect(*read_pair(sample.image_path, sample.template_path))
    predictions, seconds = {}, []
    for sample in samples:
        image, template = read_pair(sample.image_path, sample.template_path)
        started = time.perf_counter()
        predictions[sample.image_id] = pipeline.detect(image, template)
        seconds.append(time.perf_counter() - started)
    summary = evaluate_results(predictions, {s.image_id: s.ground_truth() for s in samples}).summary()
    ms = np.asarray(seconds) * 1000
    return {
        "images_per_s": round(len(seconds) / sum(seconds), 2), "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "peak_rss_mb": _peak_rss_mb(),
        "fscore": summary["fscore"], "ap": summary["ap"], "images": len(seconds),
    }


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries it over fork and exec, so a
    child started by a process that had grown (the exports) would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # without /proc: KiB, as Linux and the BSDs report it


def _measure_in_child(pack: str, root: Path, split: str, warmup: int, limit: int | None) -> dict:
    arguments = json.dumps({"pack": pack, "root": str(root), "split": split, "warmup": warmup, "limit": limit})
    result = subprocess.run([sys.executable, "-m", "aivd.bench.edge", arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"the run of pack {pack} failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_edge(root: Path, split: str = "test", packs: dict[str, str] | None = None, repeat: int = 2, warmup: int = 10,
               limit: int | None = None, samples: int = 100, seed: int = 0, log: Callable[[str], None] = lambda _: None) -> dict:
    """Every run side by side. `packs` gives a run's pack folder (the reference's default: the built-in pack);
    the others are exported from the reference, calibrated on the split's data set's training images."""
    from aivd.deploy.export import export_pack

    given = dict(packs or {})
    unknown = sorted(set(given) - set(RUN_NAMES))
    if unknown:
        raise BenchError(f"--packs: unknown run {', '.join(unknown)}; runs are {', '.join(RUN_NAMES)}")
    reference = given.setdefault(REFERENCE, "builtin")
    shown = dict(given)
    with tempfile.TemporaryDirectory(prefix="aivd-bench-edge-") as scratch:
        for name, to in EXPORTS.items():
            if name not in given:
                log(f"exporting {reference} to {to}")
                given[name] = str(export_pack(reference, to, Path(scratch) / name, root if to.endswith("int8") else None, samples, seed))
                shown[name] = f"aivd export --pack {reference} --to {to}" + (f" --samples {samples} --seed {seed}" if to.endswith("int8") else "")
        load_before = os.getloadavg()
        passes = []
        for index in range(repeat):
            order = RUN_NAMES if index % 2 == 0 else RUN_NAMES[::-1]
            for name in order:
                log(f"pass {index + 1}/{repeat}: {name}")
                passes.append({"pass": index + 1, "run": name, **_measure_in_child(given[name], root, split, warmup, limit)})
        load_after = os.getloadavg()
    runs = {}
    for name in RUN_NAMES:
        mine = [p for p in passes if p["run"] == name]
        runs[name] = {key: round(float(np.median([p[key] for p in mine])), 5 if key in ("fscore", "ap") else 2)
                      for key in ("images_per_s", "p50_ms", "p99_ms", "peak_rss_mb", "fscore", "ap")}
    base = runs[REFERENCE]
    return {
        "runs": runs,
        "reference": REFERENCE,
        "versus_reference": {name: {"speedup": round(run["images_per_s"] / base["images_per_s"], 3),
                                    "fscore": round(run["fscore"] - base["fscore"], 5), "ap": round(run["ap"] - base["ap"], 5)}
                             for name, run in runs.items()},
        "passes": passes,
        "packs": {name: shown[name] for name in RUN_NAMES},
        "split": split, "images": passes[0]["images"], "batch": 1, "calibration_samples": samples,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "python": platform.python_version()},
    }


if __name__ == "__main__":  # one run in a process of its own (`_measure_in_child`)
    options = json.loads(sys.argv[1])
    print(json.dumps(measure_edge(options["pack"], Path(options["root"]), options["split"], options["warmup"], options["limit"])))
