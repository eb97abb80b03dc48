"""`aivd watch DIR`: inspect images as they land in a folder, each exactly once across restarts
(`aivd.intake.watch`), through the pipeline a config file describes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from aivd.cli.output_folder import claim_output, open_writer
from aivd.cli.pipeline_options import METRICS_PORT, built_pipeline, pipeline_config
from aivd.cli.ui import console, error_line, fail, shown, warning_line
from aivd.core.redaction import redact_command
from aivd.intake import QUEUE_SIZE, SETTLE_S


def watch(
    folder: Path = typer.Argument(..., help="The folder to watch, with its subfolders.", show_default=False),
    out: Path = typer.Option(
        ..., "--out", "-o", show_default=False,
        help="Output folder, as for `aivd inspect`. Restarting on the same folder continues its run: the images done are "
             "never redone, and those that landed meanwhile are inspected."),
    config: Optional[Path] = typer.Option(None, "--config", help="Pipeline config YAML (see `aivd schema`). Default: the defaults."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the result database (outputs.database). Default: OUT/aivd.sqlite."),
    settle: float = typer.Option(
        SETTLE_S, "--settle", min=0.0,
        help="Seconds a file's size and time must hold before it is read, where no close-after-write event says it is whole."),
    queue_size: int = typer.Option(QUEUE_SIZE, "--queue", min=1, help="Paths waiting between the watcher and the pipeline."),
    metrics_port: Optional[int] = METRICS_PORT,
) -> None:
    """Inspect every image that lands in FOLDER (and those already there), writing to OUT like `aivd inspect`.

    Runs until Ctrl-C or SIGTERM, which finish the images in hand, close the run and write the report (exit 130 or
    143). Each file (path, size, modification time) is inspected exactly once: its record and its journal entry in
    the database are written in one transaction."""
    from aivd.cli.interrupts import StopRequest
    from aivd.config import dotted
    from aivd.intake.watch import FolderWatch
    from aivd.pipeline.inspect import InspectOptions, inspect_tasks
    from aivd.pipeline.live_update import live

    if not folder.is_dir():
        raise fail(f"{folder}: no such folder to watch")
    folder, out = folder.resolve(), out.absolute()
    settings = pipeline_config(config, dotted("outputs.database", db) if db else None)
    lock = claim_output(out)
    resuming = _holds_watch_of(out, folder, settings.outputs.database or "")
    pipeline = built_pipeline(settings)
    options = InspectOptions(
        annotate=settings.outputs.annotate, database=settings.outputs.database or "", report=settings.outputs.report,
        resume=resuming, command=redact_command(["aivd", *sys.argv[1:]]),
        config={"watch": str(folder), "pipeline": settings.shown(), "cwd": os.getcwd()},
    )
    with live(settings, pipeline, metrics_port) as extras, StopRequest("the records written so far are kept; the same command continues") as stop:
        writer = open_writer(out, options, lock)
        extras.follow_reviews(writer.store, pipeline.labels)
        assert writer.store is not None and writer.run_id is not None  # watch always gives a database: the journal is there
        source = FolderWatch(folder, writer.store, writer.run_id, template_mode=settings.edge.templates,
                             template=settings.edge.template, exclude=(out,), settle_s=settle, queue_size=queue_size,
                             on_event=warning_line)
        console.print(f"watching {shown(folder)} -> {shown(out)} (run {writer.run_id}{', continued' if resuming else ''}); "
                      "Ctrl-C stops", highlight=False)

        def on_result(record) -> None:
            if record.status == "error":
                error_line(f"{record.image}: {record.error}")
            else:
                console.print(f"{shown(record.image_id)}: {len(record.defects)} defects", highlight=False)

        with source:
            summary = inspect_tasks(source, pipeline, writer, options, on_result, lambda: stop.requested, extras)
    console.print(
        f"{summary.images - summary.resumed} images inspected in this session ({summary.images} in the run, "
        f"{source.recovered} taken up from the last stop), {summary.failed} failed -> {shown(out / 'results.jsonl')}",
        highlight=False,
    )
    raise typer.Exit(stop.exit_code if stop.requested else 0)


def _holds_watch_of(out: Path, folder: Path, database: str) -> bool:
    """Whether OUT holds a watch run of `folder`, to be continued; False when it holds no run. A run of anything
    else is a one-line exit: its files are not replaced by a service that was pointed at the wrong folder."""
    from aivd.pipeline.run_folder import MARKER_FILE, ResumeError, held_run
    from aivd.store import StoreError

    if not (out / MARKER_FILE).exists():
        return False
    try:
        run = held_run(out, database)
    except (ResumeError, StoreError) as error:
        raise fail(str(error)) from None
    if run.config.get("watch") != str(folder):
        raise fail(f"{out} holds run {run.id}, which is not a watch of {folder}: give another --out")
    return True
