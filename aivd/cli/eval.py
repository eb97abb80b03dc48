"""`aivd eval`: score detections on DeepPCB with its official protocol, or on any labelled data set with COCO mAP;
`aivd eval parity`: how closely one pack (an export) reproduces another on a data set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from aivd.cli.pipeline_options import (
    AUGMENT,
    CLASSIFIER,
    CLOUD_URL,
    DEEPPCB_HELP,
    DEEPPCB_PIXELS_PER_MM,
    EDGE_ONLY,
    PACK,
    PROPOSAL,
    data_split,
    load_pipeline,
    resolve_deeppcb,
)
from aivd.cli.ui import console, error_line, fail, progress_bar, shown

# A group whose callback is the scoring command itself, so `aivd eval --deeppcb ...` works as it always has and
# `aivd eval parity ...` is a subcommand beside it.
eval_app = typer.Typer()


@eval_app.callback(invoke_without_command=True)
def eval_command(
    ctx: typer.Context,
    results: Optional[Path] = typer.Option(None, help="Result files to score: a folder of ID.txt, an inspect --out folder, or res.zip. Default: run the detector."),
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split: trainval or test."),
    gt_zip: Optional[Path] = typer.Option(None, help="Official ground truth zip (evaluation/gt.zip) instead of the split's annotation files."),
    model: Optional[Path] = typer.Option(None, help="Detector to run when --results is not given. Default: built-in."),
    min_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Score threshold for the detector run."),
    use_templates: bool = typer.Option(True, "--templates/--no-templates", help="Give the detector the aligned templates (live run)."),
    edge_only: bool = EDGE_ONLY,
    cloud: Optional[str] = CLOUD_URL,
    classifier: Optional[Path] = CLASSIFIER,
    proposal_threshold: Optional[float] = PROPOSAL,
    report: Optional[Path] = typer.Option(None, help="Write the HTML diagnostic report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    data: Optional[Path] = typer.Option(None, "--data", help="Any labelled data set (a data YAML, VOC root, COCO JSON or DeepPCB root), scored with COCO mAP and P/R/F1 at the pack's threshold."),
    pack: Optional[Path] = PACK,
    augment: Optional[bool] = AUGMENT,
) -> None:
    """Score detections: on DeepPCB with its official protocol (and COCO mAP), on any data set (--data) with COCO
    mAP@0.5 and mAP@0.5:0.95 and precision/recall/F1 at the pack's threshold; per-class figures and a confusion matrix."""
    from aivd.data.deeppcb import DatasetError
    from aivd.eval.deeppcb_eval import evaluate_results, ground_truth_from_split, ground_truth_from_zip, read_results
    from aivd.eval.report import write_report

    if ctx.invoked_subcommand is not None:
        # `aivd eval --deeppcb X parity ...` would otherwise drop the scoring options without a word.
        # (By the source's name: typer may bring its own copy of click's ParameterSource.)
        given = [param.opts[0] for param in ctx.command.params
                 if param.name and getattr(ctx.get_parameter_source(param.name), "name", None) == "COMMANDLINE"]
        if given:
            raise fail(f"{', '.join(given)}: options of `aivd eval` itself, not of `{ctx.invoked_subcommand}`; give its options after it")
        return
    if data is not None:
        if results is not None or gt_zip is not None or deeppcb is not None:
            raise fail("--data runs a pack over a data set: --results, --gt-zip and --deeppcb do not apply")
        _eval_data(data, split, pack, model, min_confidence, use_templates, edge_only, cloud, classifier, proposal_threshold, report, as_json,
                   augment)
        return
    if pack is not None and results is not None:
        raise fail("--pack runs a pack; --results scores files that were already written: give one")
    root = resolve_deeppcb(deeppcb)
    try:
        truth, image_paths = ground_truth_from_split(root, split)
        if gt_zip is not None:
            truth = ground_truth_from_zip(gt_zip)
        if results is not None:
            predictions, source = read_results(results), str(results)
        else:
            pipeline = load_pipeline(model, min_confidence, edge_only, cloud, classifier, None, proposal_threshold, DEEPPCB_PIXELS_PER_MM,
                                      pack=pack, augment=augment)
            predictions = _detect_split(root, split, pipeline, use_templates)
            source = f"live run of {pipeline.name}" + ("" if use_templates else " without templates")
        # DeepPCB's board group is the folder an image lies in; four test groups are absent from trainval.
        output = evaluate_results(predictions, truth, {image_id: path.parent.name for image_id, path in image_paths.items()})
    except DatasetError as error:
        raise fail(str(error)) from None
    if report:
        write_report(
            report, f"DeepPCB {split}: {source}", output.summary(), output.classes, output.confusion,
            output.result.matches, image_paths, groups=output.groups,
        )
    if as_json:
        print(json.dumps(output.to_json()))
        return
    _print_eval(output)
    if report:
        console.print(f"report -> {shown(report)}")


def _eval_data(data, split, pack, model, min_confidence, use_templates, edge_only, cloud, classifier, proposal_threshold, report, as_json,
               augment):
    from aivd.eval.dataset_eval import evaluate_pipeline
    from aivd.eval.report import write_report

    loaded = data_split(data, split)
    pipeline = load_pipeline(model, min_confidence, edge_only, cloud, classifier, None, proposal_threshold, pack=pack, augment=augment)
    if list(pipeline.labels.names) != list(loaded.labels.names):
        raise fail(f"the model's classes {list(pipeline.labels.names)} are not the data set's {list(loaded.labels.names)}")
    with progress_bar() as progress:
        samples = progress.track(loaded.samples, description="detecting")
        output = evaluate_pipeline(pipeline, samples, use_templates, error_line)
    output_json = output.to_json() | {"errors": output.errors + len(loaded.problems)}
    if report:
        write_report(report, f"{data} {split}: {pipeline.name}", output.summary(), output.per_class, output.confusion, output.matches,
                     {s.image_id: s.image_path for s in loaded.samples}, protocol=output.protocol)
    if as_json:
        print(json.dumps(output_json))
        return
    out = Console()
    out.print(f"mAP@0.5 [bold]{output.map50}[/bold]  mAP@0.5:0.95 {output.map50_95}  at threshold {output.threshold:.3f}: precision "
              f"{output.precision:.4f}  recall {output.recall:.4f}  F1 {output.fscore:.4f}  ({output.images} images, {output_json['errors']} errors)")
    table = Table("class", "AP@0.5", "precision", "recall", "F1")
    for name, row in output.per_class.items():
        table.add_row(name, "-" if row["ap50"] is None else f"{row['ap50']:.4f}", f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}")
    out.print(table)
    if report:
        console.print(f"report -> {shown(report)}")


def _detect_split(root: Path, split: str, pipeline, use_templates: bool) -> dict:
    from aivd.data.deeppcb import load_split
    from aivd.eval.deeppcb_eval import detect_samples

    with progress_bar() as progress:
        samples = progress.track(load_split(root, split), description="detecting")
        return detect_samples(pipeline, samples, use_templates, error_line)


def _print_eval(output) -> None:
    summary = output.summary()

    def figure(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    out = Console()
    out.print(
        f"F-score [bold]{summary['fscore']:.4f}[/bold]  AP [bold]{summary['ap']:.4f}[/bold]  precision {summary['precision']:.4f}  "
        f"recall {summary['recall']:.4f}  mAP@0.5 {figure(summary['map50'])}  mAP@0.5:0.95 {figure(summary['map50_95'])}  "
        f"({summary['images']} images, {summary['ground_truth']} defects, {summary['detections']} detections)"
    )
    table = Table("class", "precision", "recall", "F1", "AP@0.5", "truth", "detected", "correct")
    for name, row in output.classes.items():
        table.add_row(
            name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", figure(row["ap50"]),
            str(row["ground_truth"]), str(row["detections"]), str(row["correct"]),
        )
    out.print(table)
    if output.groups:
        groups = Table("board group", "images", "precision", "recall", "F-score", "AP")
        for name, row in output.groups.items():
            groups.add_row(name, str(row["images"]), f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['fscore']:.4f}", f"{row['ap']:.4f}")
        out.print(groups)



@eval_app.command("parity")
def parity_command(
    packs: list[Path] = typer.Option(..., "--pack", help="Two packs, in order: A, the reference (the fp32 source, e.g. 'builtin'), then B (e.g. its `aivd export`)."),
    data: Path = typer.Option(..., "--data", help="Any labelled data set (a data YAML, VOC root, COCO JSON or DeepPCB root), as `aivd eval --data` reads it."),
    split: str = typer.Option("test", help="The split to compare on; use held-out data (not what calibrated B)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the split's first N images."),
    use_templates: bool = typer.Option(True, "--templates/--no-templates", help="Give the detectors the images' templates."),
    edge_only: bool = EDGE_ONLY,
    tolerance: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="The most B's F1 or mAP@0.5 (on DeepPCB also the protocol's F-score and AP) may be below A's. Default: the tolerance B's pack records, else 0.01."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as one JSON object."),
) -> None:
    """Box-level agreement of pack B with pack A on a data set (boxes paired at IoU >= 0.5: matched, class flips,
    score deltas, boxes only one pack finds) and the deltas of every metric `aivd eval --data` reports. Exits 1 when
    B loses more than the tolerance."""
    from aivd.config import ConfigError
    from aivd.data.sources import open_data
    from aivd.deploy.export import DEFAULT_TOLERANCE
    from aivd.eval.dataset_eval import predict_samples
    from aivd.eval.detection_metrics import evaluate_detections
    from aivd.eval.parity import box_agreement, deeppcb_figures, losses, metric_deltas
    from aivd.pipeline.factory import load_pack

    if len(packs) != 2:
        raise fail(f"--pack: give exactly two packs, A then B ({len(packs)} given)")
    loaded = data_split(data, split)
    samples = loaded.samples[:limit]
    deeppcb = open_data(data).format == "deeppcb"
    reports: dict[str, dict] = {}
    runs: dict[str, tuple] = {}
    for side, pack in zip("ab", packs):
        pipeline = load_pipeline(None, None, edge_only, pack=pack)
        if list(pipeline.labels.names) != list(loaded.labels.names):
            raise fail(f"--pack {pack}: its classes {list(pipeline.labels.names)} are not the data set's {list(loaded.labels.names)}")
        with progress_bar() as progress:
            pairs, thresholds, errors = predict_samples(pipeline, progress.track(samples, description=f"pack {side.upper()}"),
                                                        use_templates, error_line)
        threshold = max(thresholds) if thresholds else pipeline.edge_threshold
        metrics = evaluate_detections(pairs, pipeline.labels, threshold, errors).to_json()
        metrics.pop("confusion")
        if deeppcb:
            metrics["deeppcb"] = deeppcb_figures(pairs, threshold)
        try:
            manifest = load_pack(str(pack)).manifest
        except ConfigError as error:
            raise fail(str(error)) from None
        reports[side] = {"pack": str(pack), "runtime": manifest.runtime, "precision": manifest.precision, "metrics": metrics}
        runs[side] = (pairs, threshold, manifest)
    recorded = runs["b"][2].tolerance
    allowed = tolerance if tolerance is not None else (recorded if recorded is not None else DEFAULT_TOLERANCE)
    deltas = metric_deltas(reports["a"]["metrics"], reports["b"]["metrics"])
    lost = losses(deltas)
    output = {
        "a": reports["a"], "b": reports["b"], "data": str(data), "split": split, "images": len(runs["a"][0]),
        "boxes": box_agreement(runs["a"][0], runs["b"][0], runs["a"][1], runs["b"][1]),
        "deltas": deltas, "losses": lost, "tolerance": allowed, "within_tolerance": all(value <= allowed for value in lost.values()),
    }
    if as_json:
        print(json.dumps(output))
    else:
        _print_parity(output)
    if not output["within_tolerance"]:
        raise typer.Exit(1)


def _print_parity(output: dict) -> None:
    boxes, delta = output["boxes"], output["boxes"]["score_delta"]
    out = Console()
    out.print(f"B {shown(output['b']['pack'])} ({output['b']['runtime']}, {output['b']['precision']}) against "
              f"A {shown(output['a']['pack'])} ({output['a']['runtime']}, {output['a']['precision']}) on {output['images']} images")
    out.print(f"boxes at IoU >= {boxes['iou']}: {boxes['matched']} matched, {boxes['class_flips']} class flips, {boxes['only_a']} only in A, "
              f"{boxes['only_b']} only in B; score delta B - A: mean {delta['mean']}, |p95| {delta['p95_abs']}, |max| {delta['max_abs']}")
    table = Table("metric", "A", "B", "B - A")
    a, b = output["a"]["metrics"], output["b"]["metrics"]
    rows = [(name, a[name], b[name], output["deltas"].get(name)) for name in ("fscore", "precision", "recall", "map50", "map50_95")]
    rows += [(f"deeppcb {name}", a["deeppcb"][name], b["deeppcb"][name], output["deltas"]["deeppcb"][name])
             for name in ("fscore", "ap", "precision", "recall") if "deeppcb" in a]
    for name, first, second, change in rows:
        table.add_row(name, str(first), str(second), str(change))
    out.print(table)
    verdict = "within" if output["within_tolerance"] else "[bold red]OUTSIDE[/bold red]"
    out.print(f"losses {output['losses']}: {verdict} the tolerance {output['tolerance']}")
