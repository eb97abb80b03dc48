"""`aivd demo` inspects and scores the bundled samples; `aivd synth` writes a synthetic data set to try things on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aivd.cli.pipeline_options import DEEPPCB_PIXELS_PER_MM, EDGE_ONLY, load_pipeline
from aivd.cli.ui import console, fail, shown


def demo(
    out: Path = typer.Option(Path("aivd-demo"), "--out", "-o", help="Output folder."),
    model: Optional[Path] = typer.Option(None, help="ONNX detector. Default: built-in."),
    edge_only: bool = EDGE_ONLY,
) -> None:
    """Inspect the bundled DeepPCB samples, score them, and write OUT/report.html and OUT/evaluation.html."""
    from aivd.pipeline.demo import run_demo

    result = run_demo(load_pipeline(model, None, edge_only, pixels_per_mm=DEEPPCB_PIXELS_PER_MM), out)
    console.print(
        f"{result['images']} images, {result['defects']} defects found; F-score {result['fscore']:.3f}, "
        f"precision {result['precision']:.3f}, recall {result['recall']:.3f}", highlight=False,
    )
    console.print(
        f"open {result['report']} (the inspection report) and {result['evaluation']} (scores against the annotations) in a browser; "
        f"records in {shown(out / 'results.jsonl')} and {shown(out / 'aivd.sqlite')}", highlight=False,
    )
    if result["failed"]:
        raise typer.Exit(1)


def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    count: int = typer.Option(30, min=1, help="Number of test/template pairs."),
    layout: str = typer.Option("deeppcb", help="deeppcb, voc, yolo or coco."),
    size: int = typer.Option(640, min=64, help="Image side in pixels."),
    seed: int = typer.Option(0),
) -> None:
    """Write a synthetic PCB-defect data set (deterministic per seed) for trials, tests and drift experiments."""
    from aivd.data.synthetic import SyntheticConfig, write_dataset

    try:
        write_dataset(out, count, SyntheticConfig(size=size, seed=seed), layout)
    except ValueError as error:
        raise fail(str(error)) from None
    console.print(f"{count} synthetic pairs in {layout} layout -> {shown(out)}", highlight=False)

