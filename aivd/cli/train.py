"""`aivd train`: train the built-in DeepPCB models, or a model pack for a new line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aivd.cli.pipeline_options import DEEPPCB_HELP, resolve_deeppcb
from aivd.cli.ui import console, fail, import_extra, progress_bar, shown
from aivd.core.redaction import redact_command
from aivd.pipeline.inputs import TemplateMode

train_app = typer.Typer(help="Train the built-in models.", no_args_is_help=True)


def training_module(name: str):
    """aivd.training.NAME, or a clear exit when the 'train' extra (torch) is not installed."""
    return import_extra(f"training.{name}")


@train_app.command("detector")
def train_detector_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    out: Path = typer.Option(Path("runs/detector"), help="Output folder: detector.onnx, training.json, checkpoint."),
    epochs: int = typer.Option(40, min=1),
    batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(3e-3, min=0.0),
    seed: int = typer.Option(0),
    limit: Optional[int] = typer.Option(None, min=10, help="Use only the first N trainval samples (smoke tests)."),
    threads: int = typer.Option(2, min=1, help="CPU threads for torch."),
    init_from: Optional[Path] = typer.Option(None, help="Fine-tune from this checkpoint (a detector_best.pt)."),
) -> None:
    """Train the built-in template-aware detector on DeepPCB trainval and export it to ONNX."""
    training = training_module("detector")
    DetectorTrainConfig, train_detector = training.DetectorTrainConfig, training.train_detector
    if init_from is not None and not init_from.is_file():
        raise fail(f"{init_from}: checkpoint not found")
    config = DetectorTrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, limit=limit, threads=threads, init_from=str(init_from) if init_from else None
    )
    root = resolve_deeppcb(deeppcb)
    with progress_bar() as progress:
        bar = progress.add_task("training", total=epochs)

        def on_epoch(record: dict) -> None:
            progress.console.print(
                f"epoch {record['epoch']:3d}  loss {record['loss']:.3f}  val F {record['fscore']:.4f}  AP {record['ap']:.4f}  "
                f"thr {record['threshold']:.2f}", highlight=False,
            )
            progress.advance(bar)

        record = train_detector(root, out, config, on_epoch)
    best = record["best"]
    console.print(f"best epoch {best['epoch']}: val F-score {best['fscore']:.4f}, AP {best['ap']:.4f} -> {shown(record['onnx'])}")


@train_app.command("pack")
def train_pack_command(
    data: Path = typer.Option(..., "--data", help="The labelled images: an Ultralytics data YAML, a VOC root, a COCO JSON (or folder) or a DeepPCB root."),
    out: Path = typer.Option(..., "--out", help="Output folder: OUT/pack/ is the model pack, OUT/work/ the checkpoints."),
    time_budget: float = typer.Option(90.0, "--time-budget", min=0.1, max=10080.0, help="Minutes for the whole pack (the default fits two CPU cores)."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue a run of the same command that was stopped (Ctrl-C)."),
    templates: TemplateMode = typer.Option(TemplateMode.auto, help="auto: a template-aware pack when every image has a template; none: image-only models whatever the data has."),
) -> None:
    """Train a model pack for a new line: edge detector, refiner, cloud classifier, knowledge-base scaffold, model card."""
    from rich.progress import SpinnerColumn

    from aivd.data.deeppcb import DatasetError

    training = training_module("pack")
    if not data.exists():
        raise fail(f"{data}: not found")
    command = redact_command(["aivd", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("aivd") else (
        f"aivd train pack --data {data} --out {out} --time-budget {time_budget:g} --seed {seed} --templates {templates.value}")
    if templates is TemplateMode.require:
        raise fail("--templates require does not apply to training: a template-aware pack is trained whenever every image has one")
    plan = training.PackPlan(str(data), str(out), time_budget, seed, command, templates is TemplateMode.auto)
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        bars: dict[str, TaskID] = {}

        def on_progress(stage: str, record: dict) -> None:
            if stage == "data":
                skipped = record["skipped"]
                progress.console.print(
                    f"{record['format']} data: {record['train_images']} training images, {record['held_out_images']} held out, "
                    f"classes {', '.join(record['classes'])}; templates: {'yes' if record['templates'] else 'no'}; "
                    f"{len(skipped)} unusable samples or boxes skipped", highlight=False)
                for problem in skipped[:20]:
                    progress.console.print(f"[yellow]skipped:[/yellow] {shown(problem)}", highlight=False)
                return
            if "calibrated" in record:
                progress.console.print(f"{stage}: calibrated {json.dumps(record['calibrated'])}", highlight=False)
                return
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=None, status="")
            figure = next((f"{key} {record[key]:.4f}" for key in ("map50", "fscore", "accuracy") if key in record), "")
            status = f"loss {record['loss']:.3f}  held-out {figure}"
            progress.update(bars[stage], total=record.get("epochs"), completed=record["epoch"], status=status)
            if not console.is_terminal:  # a log file gets a line per epoch instead of a redrawn bar
                progress.console.print(f"{stage} epoch {record['epoch']}/{record.get('epochs')}  {status}  "
                                       f"{record['elapsed_s']:.0f} s", highlight=False)

        try:
            record = training.train_pack(plan, on_progress, resume)
        except KeyboardInterrupt:
            raise fail(f"stopped; the checkpoints are in {out / 'work'}: continue with the same command and --resume", 130) from None
        except (training.PackTrainingError, DatasetError) as error:
            raise fail(str(error)) from None
    console.print(f"pack written in {record['wall_s'] / 60:.1f} min -> {shown(record['pack'])} (model card: {shown(Path(record['pack']) / 'MODEL_CARD.md')})",
                  highlight=False)


def _print_trained(record: dict, out: Path, result: str) -> None:
    console.print(f"best epoch {record['best']['epoch']}: crop accuracy {record['best']['accuracy']:.4f}; {shown(result)} -> {shown(out)}", highlight=False)


def _print_crop_epoch(record: dict) -> None:
    console.print(f"epoch {record['epoch']:3d}  loss {record['loss']:.3f}  val crop accuracy {record['accuracy']:.4f}", highlight=False)


@train_app.command("refiner")
def train_refiner_command(
    detector: Path = typer.Option(..., help="The detector ONNX to pair the refiner with (from `aivd train detector`)."),
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    out: Path = typer.Option(Path("runs/refiner"), help="Output folder: the packaged detector + refiner, training.json."),
    epochs: int = typer.Option(20, min=1),
    reject: bool = typer.Option(True, "--reject/--no-reject", help="Also learn the detector's false alarms as `no-defect` (and its boxes on defects), so the edge drops them."),
    seed: int = typer.Option(0),
    limit: Optional[int] = typer.Option(None, min=10, help="Use only the first N trainval samples (smoke tests)."),
    threads: int = typer.Option(2, min=1, help="CPU threads for torch."),
    distill_from: Optional[Path] = typer.Option(None, help="A crop classifier ONNX (`aivd train classifier`) with the refiner's classes and no-defect, whose soft labels it also learns."),
    distill_weight: float = typer.Option(0.5, min=0.0, max=1.0, help="With --distill-from: the soft labels' share of the loss (the rest: the labels)."),
    temperature: float = typer.Option(4.0, min=0.1, help="With --distill-from: the temperature that softens the teacher's and the refiner's probabilities."),
) -> None:
    """Train the second-stage class refiner and package it with a detector, re-calibrating the threshold."""
    training = training_module("refiner")
    RefinerTrainConfig, train_refiner = training.RefinerTrainConfig, training.train_refiner
    if not detector.is_file():
        raise fail(f"{detector}: detector model not found")
    if distill_from is not None and not distill_from.is_file():
        raise fail(f"{distill_from}: classifier model not found")
    config = RefinerTrainConfig(epochs=epochs, reject=reject, seed=seed, limit=limit, threads=threads,
                                distill_from=None if distill_from is None else str(distill_from),
                                distill_weight=distill_weight, temperature=temperature)

    record = train_refiner(resolve_deeppcb(deeppcb), detector, out, config, _print_crop_epoch)
    pipeline = record["pipeline"]
    _print_trained(record, out, f"detector + refiner on held-out trainval: F {pipeline['val']['fscore']:.4f}, "
                   f"AP {pipeline['val']['ap']:.4f} at threshold {pipeline['threshold']:.2f}")


@train_app.command("classifier")
def train_classifier_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    detector: Optional[Path] = typer.Option(None, help="Edge detector whose candidates it learns from and is calibrated with. Default: built-in."),
    out: Path = typer.Option(Path("runs/classifier"), help="Output folder: deeppcb_classifier.onnx, training.json."),
    epochs: int = typer.Option(10, min=1),
    seed: int = typer.Option(0),
    context_min: float = typer.Option(1.2, min=0.5, help="Smallest context factor k drawn per training crop."),
    context_max: float = typer.Option(2.0, min=0.5, help="Largest context factor k drawn per training crop."),
    context: float = typer.Option(1.6, min=0.5, help="Context factor at inference."),
    min_side: int = typer.Option(32, min=1, help="Smallest crop window in image pixels."),
    jitter: float = typer.Option(0.2, min=0.0, max=0.5, help="Box jitter at training, as a fraction of the box size."),
    edge_positives: bool = typer.Option(True, "--edge-positives/--no-edge-positives", help="Also learn from the edge's candidate boxes on defects (its real box noise)."),
    limit: Optional[int] = typer.Option(None, min=10, help="Use only the first N trainval samples (smoke tests)."),
    threads: int = typer.Option(2, min=1, help="CPU threads for torch."),
) -> None:
    """Train the cloud tier's crop classifier (six classes + no-defect) and calibrate its thresholds."""
    training = training_module("cloud_classifier")
    ClassifierTrainConfig, train_classifier = training.ClassifierTrainConfig, training.train_classifier
    if detector is not None and not detector.is_file():
        raise fail(f"{detector}: detector model not found")
    from aivd.core.regions import MIN_SIDE, TRANSPORT_CONTEXT

    if not context_min <= context_max:
        raise fail("context-min must not exceed context-max")
    if context > TRANSPORT_CONTEXT or min_side > MIN_SIDE:
        raise fail(f"the edge sends regions of {TRANSPORT_CONTEXT}x the box, at least {MIN_SIDE} pixels: context and min-side must fit")
    config = ClassifierTrainConfig(
        epochs=epochs, seed=seed, context=context, context_min=context_min, context_max=context_max, min_side=min_side,
        jitter=jitter, edge_positives=edge_positives, limit=limit, threads=threads,
    )

    record = train_classifier(resolve_deeppcb(deeppcb), detector, out, config, _print_crop_epoch)
    chosen = record["calibration"]["chosen"]
    _print_trained(record, out, f"edge + cloud on held-out trainval: F {chosen['fscore']:.4f} at proposal threshold "
                   f"{chosen['proposal_threshold']}, score threshold {chosen['score_threshold']}, edge weight {chosen['edge_weight']}")


@train_app.command("calibrate")
def train_calibrate_command(
    classifier: Path = typer.Option(..., help="Cloud crop-classifier ONNX whose thresholds to set (changed in place)."),
    detector: Optional[Path] = typer.Option(None, help="The edge detector it will verify. Default: built-in."),
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
) -> None:
    """Re-choose a cloud classifier's proposal and score thresholds for an edge detector, on held-out trainval.

    A new edge model scores its candidates differently, so the thresholds chosen with the old one no longer hold.
    """
    calibration = training_module("classifier_calibration")
    from aivd.data.deeppcb import holdout_split, load_split

    for path, what in ((classifier, "classifier"), (detector, "detector")):
        if path is not None and not path.is_file():
            raise fail(f"{path}: {what} model not found")
    _, held_out = holdout_split(load_split(resolve_deeppcb(deeppcb), "trainval"))
    result = calibration.calibrate_classifier(classifier, detector, held_out)
    for row in result["table"]:
        console.print(f"edge weight {row['edge_weight']:.2f}, proposal {row['proposal_threshold']:.2f}: F {row['fscore']:.4f}, "
                      f"AP {row['ap']:.4f} at score threshold {row['score_threshold']:.2f}, {row['regions_per_image']} regions per image",
                      highlight=False)
    chosen = result["chosen"]
    console.print(f"chosen: proposal threshold {chosen['proposal_threshold']}, score threshold {chosen['score_threshold']}, "
                  f"edge weight {chosen['edge_weight']} (held-out F {chosen['fscore']:.4f}, AP {chosen['ap']:.4f}) -> {classifier}",
                  highlight=False)

