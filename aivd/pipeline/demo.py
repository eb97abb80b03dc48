"""`aivd demo`: inspect the bundled DeepPCB samples and score them, so a new user sees the whole path work:
OUT/report.html is what a quality engineer reads after any inspection, OUT/evaluation.html scores the run
against the samples' annotations."""

from __future__ import annotations

from pathlib import Path

from aivd.data.deeppcb import read_annotation
from aivd.eval.deeppcb_eval import evaluate_results, read_results
from aivd.eval.report import write_report
from aivd.pipeline.engine import EdgeCloudPipeline
from aivd.pipeline.inputs import TemplateMode, tasks_from_paths
from aivd.pipeline.inspect import InspectOptions, inspect_tasks

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples" / "deeppcb"


def run_demo(pipeline: EdgeCloudPipeline, out_dir: Path, samples: Path = SAMPLES) -> dict:
    tasks = tasks_from_paths([samples], TemplateMode.require)
    summary = inspect_tasks(tasks, pipeline, out_dir, InspectOptions(annotate=True, deeppcb_results=True))
    truth = {task.image_id: read_annotation(samples / f"{task.image_id}.txt") for task in tasks}
    output = evaluate_results(read_results(out_dir), truth)
    evaluation = write_report(
        out_dir / "evaluation.html", "aivd demo: bundled DeepPCB samples", output.summary(), output.classes,
        output.confusion, output.result.matches, {t.image_id: Path(t.image_path) for t in tasks}, include_correct=True,
        extra={"pipeline": pipeline.name, "speed": f"{summary.images_per_s:.1f} images/s ({summary.images} images, including start-up)"},
    )
    return {"images": summary.images, "failed": summary.failed, "defects": summary.defects, "report": str(out_dir / "report.html"), "evaluation": str(evaluation), **output.summary()}
