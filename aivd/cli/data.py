"""`aivd data`: look at a labelled data set before training on it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

data_app = typer.Typer(help="Labelled data sets: check one before training on it.", no_args_is_help=True)


def _spread(values: dict) -> str:
    return "-" if values["min"] is None else f"{values['min']:g} / {values['median']:g} / {values['max']:g}"


def _print_summary(report: dict) -> None:
    print(f"{report['format']} data set {report['root']}: {len(report['classes'])} classes ({', '.join(report['classes'])})")
    for name, split in report["splits"].items():
        print(f"split {name}: {split['images']} images ({split['images_without_boxes']} without boxes, "
              f"{split['templates']} with templates), {split['boxes']} boxes")
        print("  boxes per class: " + ", ".join(f"{cls} {count}" for cls, count in split["boxes_per_class"].items()))
        print(f"  box width px min / median / max: {_spread(split['box_width_px'])}; "
              f"height: {_spread(split['box_height_px'])}")
    print(f"{len(report['problems'])} problems")


@data_app.command("check")
def check_command(
    data: Path = typer.Argument(..., help="A data set: an Ultralytics data YAML (or a folder holding data.yaml), a Pascal VOC "
                                          "root, a COCO .json or folder, or a DeepPCB root."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Summarise each split (images, boxes per class, box sizes, templates) and list every problem, one line each,
    after decoding every image. Exit code 0: clean; 1: problems found; 2: DATA cannot be read at all."""

    from aivd.cli.ui import error_line, fail, progress_bar
    from aivd.data.check import check_data
    from aivd.data.sources import DatasetError, open_data

    try:
        source = open_data(data)
    except DatasetError as error:
        raise fail(str(error)) from None
    with progress_bar() as progress:

        def on_split(split):
            task = progress.add_task(f"decoding {split.name}", total=len(split.samples))
            return lambda: progress.advance(task)

        report = check_data(source, on_split)
    if not report["splits"]:  # no split could be read: the data set as a whole cannot be
        raise fail("; ".join(f"{problem['path']}: {problem['message']}" for problem in report["problems"]))
    if as_json:
        print(json.dumps(report))
    else:
        _print_summary(report)
        for problem in report["problems"]:
            error_line(f"{problem['path']}: {problem['message']}")
    if report["problems"]:
        raise typer.Exit(1)
