"""`aivd inspect`: find and analyse the defects in images, writing records, a database and a report; `--resume`
continues a stopped run with the options it was started with."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, get_type_hints

import typer

from aivd.cli.output_folder import claim_output, open_writer
from aivd.cli.pipeline_options import (
    AUGMENT,
    CLASSIFIER,
    CLOUD_BACKEND,
    CLOUD_URL,
    CONFIG,
    DEEPPCB_HELP,
    DEEPPCB_PIXELS_PER_MM,
    EDGE_ONLY,
    KNOWLEDGE,
    LLM_ADAPTER,
    LLM_BASE_URL,
    LLM_CONFIG,
    LLM_MODEL,
    LLM_PROMPT,
    METRICS_PORT,
    OFFLOAD_BUDGET,
    OFFLOAD_FILTER,
    PACK,
    PIXELS_PER_MM,
    PROPOSAL,
    SET,
    CloudBackend,
    LLMOptions,
    built_pipeline,
    flag_overrides,
    pipeline_config,
    resolve_deeppcb,
    set_overrides,
)
from aivd.cli.ui import console, error_line, fail, progress_bar, shown, warning_line
from aivd.core.redaction import MASK, redact_command, redact_url
from aivd.pipeline.inputs import InspectionTask, TemplateMode

# Where a run is written, not what it inspects: not stored with the run's arguments.
RUN_LOCATION = ("context", "out", "resume", "db", "metrics_port")
# URL options that may carry a password: stored with it hidden, so a resumed run needs them given again.
SECRET_URL_OPTIONS = ("cloud", "llm_base_url", "stream")


def inspect(
    context: typer.Context,
    paths: list[Path] = typer.Argument(
        None, help="Image files or folders (searched recursively), and video files (.mp4, .avi, .mkv, .mov, ...: their frames)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="Output folder: results.jsonl, annotated/, deeppcb/, report.html, aivd.sqlite, run.json. A new run replaces the "
             "files of the run the folder held (the database keeps every run); a folder another run is writing is refused."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="OUT",
        help="Continue the stopped run in OUT with the options it was started with, skipping the images it has done. "
             "Give --db, --cloud, --llm-base-url or --stream again only if its URL had a password (not stored)."),
    config: Optional[Path] = CONFIG,
    set_values: Optional[list[str]] = SET,
    deeppcb: Optional[Path] = typer.Option(None, help="Inspect an official DeepPCB split instead of PATHS. " + DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split: trainval or test."),
    model: Optional[Path] = typer.Option(None, help="ONNX detector (an aivd model or an Ultralytics YOLO export), or a model-store folder whose served version is followed (`aivd models`). Default: built-in."),
    pack: Optional[Path] = PACK,
    template: Optional[Path] = typer.Option(None, help="One aligned template for every image."),
    templates: Optional[TemplateMode] = typer.Option(None, help="auto (the default): use NAME_temp beside NAME_test; require: missing is an error; none: ignore."),
    min_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Edge score threshold; default: the model's calibrated one."),
    edge_only: bool = EDGE_ONLY,
    cloud: Optional[str] = CLOUD_URL,
    classifier: Optional[Path] = CLASSIFIER,
    knowledge: Optional[Path] = KNOWLEDGE,
    proposal_threshold: Optional[float] = PROPOSAL,
    pixels_per_mm: Optional[float] = PIXELS_PER_MM,
    cloud_backend: Optional[CloudBackend] = CLOUD_BACKEND,
    offload_budget: Optional[float] = OFFLOAD_BUDGET,
    offload_filter: Optional[str] = OFFLOAD_FILTER,
    llm_config: Optional[Path] = LLM_CONFIG,
    llm_base_url: Optional[str] = LLM_BASE_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_adapter: Optional[Path] = LLM_ADAPTER,
    llm_prompt: Optional[str] = LLM_PROMPT,
    annotate: Optional[bool] = typer.Option(None, "--annotate/--no-annotate", help="Write annotated images to OUT/annotated/ (default: yes).", show_default=False),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the result database, e.g. postgresql+psycopg://... Default: the config's, else OUT/aivd.sqlite."),
    report: Optional[bool] = typer.Option(None, "--report/--no-report", help="Write OUT/report.html (default: yes).", show_default=False),
    tile_size: Optional[int] = typer.Option(
        None, "--tile-size", min=0,
        help="Detect images longer than 1.5 tiles in overlapping tiles of this many px. Default: 640 for the built-in detector, "
             "none for --model; 0: never tile."),
    augment: Optional[bool] = AUGMENT,
    stream: Optional[str] = typer.Option(
        None, "--stream", metavar="URL|INDEX",
        help="Inspect a live stream instead of PATHS: an rtsp:// or http(s):// URL (MJPEG, HLS) or a camera number. Runs until "
             "Ctrl-C, SIGTERM or --max-frames; a stream that drops is reopened (waits of 0.5 s doubling to 30 s)."),
    fps: Optional[float] = typer.Option(
        None, "--fps", min=0.001,
        help="Frames to inspect per second: of video time for video files (default: every frame), of wall time for --stream (default: 2)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Inspect at most this many frames of each video file or of the stream."),
    metrics_port: Optional[int] = METRICS_PORT,
) -> None:
    """Find defects in images (edge), analyse each (cloud) and write one JSON record per image, the database
    and an HTML report.

    Each record is committed to the database and results.jsonl as it is done. Ctrl-C or SIGTERM stops after the
    images in hand, closes the run and writes the report (exit 130 or 143); `--resume OUT` continues it."""
    arguments = {name: value for name, value in locals().items() if name not in RUN_LOCATION}
    if out is not None and resume is not None and out.resolve() != resume.resolve():
        raise fail("--resume OUT continues the run in OUT: give --out only with the same folder, or leave it out")
    if resume is not None:
        out = resume.absolute()  # the run's own working folder may become the current one
        if not out.is_dir():
            raise fail(f"{out}: no such output folder to resume")
        lock = claim_output(out)
        arguments = _resumed_arguments(out, db or "", arguments, context)
    elif out is None:
        raise fail("give the output folder: --out OUT, or --resume OUT to continue a stopped run")
    else:
        lock = None
    _inspect(out, db or "", resume is not None, lock, SimpleNamespace(**arguments), metrics_port)


def _stored_argument(name: str, value):
    return redact_url(value) if name in SECRET_URL_OPTIONS and value else value


def _resumed_arguments(out: Path, db: str, arguments: dict, context: typer.Context) -> dict:
    """The arguments the run in `out` was started with, for `--resume`. An option given on the command line must
    agree with the run's; a URL whose password was not stored must be given again. Changes to the run's working
    folder, against which its relative paths were given."""
    from pydantic import TypeAdapter, ValidationError

    from aivd.pipeline.run_folder import ResumeError, held_run
    from aivd.store import StoreError

    try:
        run = held_run(out, db)
    except (ResumeError, StoreError) as error:
        raise fail(str(error)) from None
    if "arguments" not in run.config:
        raise fail(f"{out}: run {run.id} was not started by an aivd inspect that can resume it")
    types = get_type_hints(inspect)
    try:
        resumed: dict[str, Any] = {name: None if value is None else TypeAdapter(types[name]).validate_python(value)
                                   for name, value in run.config["arguments"].items()}
    except (KeyError, ValidationError) as error:
        raise fail(f"{out}: the options stored with run {run.id} are not this aivd's ({str(error).splitlines()[0]})") from None
    # An option newer than the aivd that started the run had its default there.
    defaults = {parameter.name: parameter.default for parameter in context.command.params}
    resumed = {**{name: defaults[name] for name in arguments if name not in resumed}, **resumed}
    for name, value in arguments.items():
        if getattr(context.get_parameter_source(name), "name", None) != "COMMANDLINE":
            continue
        if _stored_argument(name, value) != resumed[name]:
            option = "PATHS" if name == "paths" else "--" + name.replace("_", "-")
            was = " ".join(map(str, resumed[name])) if isinstance(resumed[name], list) else resumed[name]
            raise fail(f"--resume continues run {run.id} with its own options: {option} was {was} there; leave it out")
        resumed[name] = value  # the same, with the password the run's record hides
    for name in SECRET_URL_OPTIONS:
        if resumed[name] and MASK in resumed[name]:
            raise fail(f"run {run.id} used --{name.replace('_', '-')} {resumed[name]}: give that URL again, with its password")
    if run.config["cwd"] != os.getcwd():
        try:
            os.chdir(run.config["cwd"])
        except OSError as error:
            raise fail(f"{run.config['cwd']}: cannot enter the folder run {run.id} was started in ({error.strerror})") from None
    return resumed


def _inspect_overrides(args: SimpleNamespace) -> dict:
    """The config keys inspect's own options set (on top of the pipeline options every command shares)."""
    from aivd.config.pipeline import merged

    llm = LLMOptions(args.llm_config, args.llm_base_url, args.llm_model, args.llm_adapter, args.llm_prompt)
    shared = flag_overrides(args.model, args.min_confidence, args.edge_only, args.cloud, args.classifier, args.knowledge,
                            args.proposal_threshold, args.pixels_per_mm, args.cloud_backend, llm, args.pack, args.tile_size,
                            args.offload_budget, args.offload_filter, args.augment)
    own = {"edge": {"templates": args.templates, "template": args.template},
           "outputs": {"annotate": args.annotate, "report": args.report}}
    return merged(shared, {section: {k: v for k, v in values.items() if v is not None} for section, values in own.items()})


@contextmanager
def _closing(tasks):
    """A live stream is closed when the run ends, however it ends."""
    from aivd.intake.video import LiveStream

    try:
        yield
    finally:
        if isinstance(tasks, LiveStream):
            tasks.close()


def _inspect(out: Path, db: str, resuming: bool, lock, args: SimpleNamespace, metrics_port: int | None = None) -> None:
    from aivd.cli.interrupts import StopRequest
    from aivd.config.pipeline import merged
    from aivd.data.deeppcb import DatasetError
    from aivd.intake.video import LiveStream, StreamError, is_video, tasks_with_videos
    from aivd.pipeline.inputs import tasks_from_deeppcb
    from aivd.pipeline.inspect import InspectOptions, inspect_tasks
    from aivd.pipeline.live_update import live

    if sum(map(bool, (args.paths, args.deeppcb, args.stream))) != 1:
        raise fail("give one of image or video PATHS, --deeppcb ROOT or --stream URL")
    config = pipeline_config(args.config, merged(set_overrides(args.set_values), _inspect_overrides(args)))
    edge = config.edge
    if edge.template is not None and not edge.template.is_file():
        raise fail(f"{edge.template}: template not found")
    if args.deeppcb and edge.template is not None:
        raise fail("--template does not apply to --deeppcb: each DeepPCB image has its own template (--templates none ignores them)")
    videos = args.stream or any(map(is_video, args.paths or []))
    if (args.fps or args.max_frames) and not videos:
        raise fail("--fps and --max-frames apply to video files and --stream")
    if videos and edge.templates is TemplateMode.require and edge.template is None:
        raise fail("--templates require: video frames have no template beside them; give --template FILE")
    tasks: Iterable[InspectionTask] = []  # a list, a lazy iterator of videos' frames, or a live stream
    total: int | None = None
    try:
        if args.deeppcb:
            tasks = tasks_from_deeppcb(resolve_deeppcb(args.deeppcb), args.split)
            total = len(tasks)
        elif not args.stream:
            tasks, total = tasks_with_videos(args.paths, edge.templates, edge.template, args.fps, args.max_frames)
    except DatasetError as error:
        raise fail(str(error)) from None
    if args.deeppcb:
        if edge.templates is TemplateMode.none:
            tasks = [dataclasses.replace(task, template_path=None, error=None) for task in tasks]
    if total == 0:
        raise fail("no images found in the given paths")
    lock = lock or claim_output(out)
    pipeline = built_pipeline(config, DEEPPCB_PIXELS_PER_MM if args.deeppcb else None)
    options = InspectOptions(
        annotate=config.outputs.annotate, deeppcb_results=bool(args.deeppcb), database=db or config.outputs.database or "",
        report=config.outputs.report, resume=resuming, command=redact_command(["aivd", *sys.argv[1:]]),
        config={"pipeline": pipeline.name, "classes": list(pipeline.labels.names), "edge_threshold": pipeline.edge_threshold, "proposal_threshold": pipeline.proposal_threshold,
                "pixels_per_mm": pipeline.pixels_per_mm, "images": total, "tile_size": getattr(pipeline.detector, "tile_size", None),
                "pipeline_config": config.shown(), "cwd": os.getcwd(),
                "arguments": {name: _stored_argument(name, value) for name, value in vars(args).items()}},
    )
    resume_command = f"aivd inspect --resume {shlex.quote(str(out))}"
    if args.stream:  # opened last, as its frames start coming at once
        template = None if edge.templates is TemplateMode.none else edge.template
        try:
            tasks = LiveStream(args.stream, args.fps, args.max_frames, template, on_event=warning_line)
        except StreamError as error:
            raise fail(str(error)) from None
    with live(config, pipeline, metrics_port) as extras, \
            StopRequest(f"the records written so far are kept; continue with: {resume_command}") as stop, _closing(tasks):
        writer = open_writer(out, options, lock)
        extras.follow_reviews(writer.store, pipeline.labels)
        with progress_bar() as progress:
            bar = progress.add_task("inspecting", total=total, completed=len(writer.done))

            def on_result(record) -> None:
                if record.status == "error":
                    error_line(f"{record.image}: {record.error}")
                progress.advance(bar)

            summary = inspect_tasks(tasks, pipeline, writer, options, on_result, lambda: stop.requested, extras)
    resumed = f" ({summary.resumed} before resuming)" if summary.resumed else ""
    console.print(
        f"{summary.ok} of {summary.images} images inspected{resumed}, {summary.defects} defects, {summary.failed} failed, "
        f"{summary.images_per_s:.1f} images/s -> {shown(out / 'results.jsonl')}", highlight=False,
    )
    if pipeline.analyzer is not None:
        console.print(f"cloud: {summary.rejected_by_cloud} edge candidates judged not defects", highlight=False)
    if summary.cloud_failed:
        console.print(
            f"[yellow]warning:[/yellow] cloud unavailable for {summary.cloud_failed} images; their defects are the edge's own "
            "(see cloud_error in results.jsonl)", highlight=False,
        )
    if isinstance(tasks, LiveStream):
        console.print(f"stream: {tasks.drops} drops, {tasks.reconnects} reconnects", highlight=False)
    if summary.interrupted:
        of = f" of {total}" if total is not None else ""
        console.print(f"[yellow]interrupted:[/yellow] {summary.images}{of} images done; continue with: "
                      f"{shown(resume_command)}", highlight=False)
        raise typer.Exit(stop.exit_code)
    if summary.failed:
        raise typer.Exit(1)

