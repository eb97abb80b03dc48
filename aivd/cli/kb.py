"""`aivd kb`: the defect knowledge bases the cloud tier writes its records from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

kb_app = typer.Typer(help="Defect knowledge bases: scaffold one for a data set's classes (docs/cloud.md).", no_args_is_help=True)


@kb_app.command("init")
def init_command(
    data: Path = typer.Option(..., "--data", help="A labelled data set: an Ultralytics data YAML (or a folder holding data.yaml), "
                                                  "a Pascal VOC root, a COCO .json or folder, or a DeepPCB root."),
    out: Path = typer.Option(..., "--out", help="The knowledge-base YAML to write."),
    name: Optional[str] = typer.Option(None, "--name", help="The knowledge base's name. Default: the data set's folder name."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT when it exists."),
) -> None:
    """Write a knowledge base with an entry per class of DATA to edit: TODO texts, size rules from the training boxes."""

    from aivd.cli.ui import console, error_line, fail, shown
    from aivd.cloud.knowledge_scaffold import longer_sides, scaffold_knowledge
    from aivd.data.sources import DatasetError, open_data

    if out.exists() and not force:
        raise fail(f"{out}: already exists; pass --force to overwrite it")
    try:
        source = open_data(data)
        train, _ = source.training_splits(seed=0)
    except DatasetError as error:
        raise fail(str(error)) from None
    for problem in train.problems:
        error_line(problem)
    folder = data.resolve().parent if data.is_file() else data.resolve()  # a YOLO data.yaml or COCO .json names no set
    text = scaffold_knowledge(name or folder.name, list(source.labels.names), longer_sides(s.truth for s in train.samples))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as error:
        raise fail(f"{out}: cannot write ({error.strerror or error})") from None
    console.print(f"{len(source.labels)} classes, size rules from {len(train.samples)} training images -> {shown(out)}; "
                  "replace its TODOs", highlight=False)
