"""`aivd`: inspect images, evaluate on DeepPCB, train the built-in models, run benchmarks and the demo."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple, Optional, get_type_hints

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from aivd.cli.data import data_app
from aivd.cli.finetune import finetune_app
from aivd.cli.kb import kb_app
from aivd.cli.models import models_app
from aivd.cli.serve import serve_app
from aivd.cli.simulate import simulate_app
from aivd.cli.ui import console, error_line, fail, import_extra, progress_bar, shown
from aivd.core.errors import AivdError
from aivd.core.redaction import MASK, redact_command, redact_url
from aivd.core.regions import PIXELS_PER_MM_RANGE
from aivd.pipeline.inputs import TemplateMode

app = typer.Typer(help="Edge-cloud visual inspection of industrial defects.", no_args_is_help=True, add_completion=False)
train_app = typer.Typer(help="Train the built-in models.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; each prints one JSON object.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")
app.add_typer(serve_app, name="serve")
app.add_typer(simulate_app, name="simulate")
app.add_typer(finetune_app, name="finetune")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(kb_app, name="kb")

DEEPPCB_HELP = "DeepPCB root (the folder holding PCBData/); default: $AIVD_DEEPPCB_ROOT or ../shared/data/deeppcb."


def resolve_deeppcb(root: Optional[Path]) -> Path:
    from aivd.data.deeppcb import default_root

    root = root or default_root()
    if root is None:
        raise fail("no DeepPCB root: pass --deeppcb ROOT or set AIVD_DEEPPCB_ROOT")
    return root


def _load_detector(model: Optional[Path], min_confidence: Optional[float]):
    """An ONNX file, or a model store's served version (followed as it changes: `aivd models promote`)."""
    from aivd.edge.detector import ModelError, load_detector
    from aivd.model_store import ModelStoreError

    try:
        if model is not None and model.is_dir():
            from aivd.edge.hot_swap import HotSwapDetector
            from aivd.model_store import ModelStore

            if not (model / "versions").is_dir():
                raise fail(f"{model}: a folder, but not a model store (no versions/ folder); give an ONNX file or a store")
            if min_confidence is not None:
                raise fail("--min-confidence does not apply to a model store: each version carries its threshold")
            return HotSwapDetector(ModelStore(model), poll_s=5.0)
        return load_detector(model, min_confidence)
    except (ModelError, ModelStoreError) as error:
        raise fail(str(error)) from None


def _tiled(detector, model: Optional[Path], tile_size: Optional[int]):
    """`detector` detecting large images in tiles of `tile_size` px; None: automatic (the built-in detector at the
    size it is trained on, a given model whole), 0: never tiled."""
    from aivd.edge.detector import BUILTIN_TILE_SIZE
    from aivd.edge.tiling import TiledDetector

    if tile_size is None:
        tile_size = BUILTIN_TILE_SIZE if model is None else 0
    if not tile_size:
        return detector
    try:
        return TiledDetector(detector, tile_size)
    except ValueError as error:
        raise fail(f"--tile-size: {error}") from None


DEEPPCB_PIXELS_PER_MM = 48.0
# Benchmarks always print one JSON object; --json is accepted so that commands written as `... --json` work.
JSON_ALWAYS = typer.Option(True, "--json", help="Print one JSON object (the only output format).")
EDGE_ONLY = typer.Option(False, "--edge-only", help="Edge detector alone: no cloud analysis.")
CLOUD_URL = typer.Option(None, "--cloud", help="URL of an `aivd serve cloud` service. Default: the built-in analyzer in this process.")
CLASSIFIER = typer.Option(None, help="Cloud crop-classifier ONNX (from `aivd train classifier`). Default: built-in.")
KNOWLEDGE = typer.Option(None, help="Defect knowledge-base YAML (`aivd kb init` scaffolds one) for the cloud analyzer's text and prompts. Default: DeepPCB's.")
PROPOSAL = typer.Option(None, min=0.0, max=1.0, help="Edge score from which candidates go to the cloud. Default: the classifier's calibrated one.")
PIXELS_PER_MM = typer.Option(None, min=PIXELS_PER_MM_RANGE[0], max=PIXELS_PER_MM_RANGE[1], help="Imaging scale for sizes in mm. Default: 48 for DeepPCB input, else unknown.")


class CloudBackend(str, Enum):
    builtin = "builtin"  # the ONNX crop classifier and the knowledge base
    openai = "openai"  # a multimodal LLM behind an OpenAI-compatible server
    transformers = "transformers"  # a local Hugging Face multimodal LLM, optionally with a LoRA adapter


class LLMOptions(NamedTuple):
    """The --llm-* options of a multimodal-LLM cloud backend (docs/llm.md)."""

    config: Optional[Path] = None
    base_url: Optional[str] = None
    model: Optional[str] = None
    adapter: Optional[Path] = None
    prompt: Optional[str] = None

    def given(self) -> list[str]:
        return ["--llm-" + name.replace("_", "-") for name, value in self._asdict().items() if value is not None]


CLOUD_BACKEND = typer.Option(CloudBackend.builtin, "--cloud-backend", help="The cloud analyzer in this process: builtin, openai (an OpenAI-compatible server) or transformers (a local model); see docs/llm.md.")
LLM_CONFIG = typer.Option(None, "--llm-config", help="YAML settings of the openai backend (base_url, model, api_key_env, timeout_s, max_retries, concurrency, prompt, structured_output, ...).")
LLM_BASE_URL = typer.Option(None, "--llm-base-url", help="openai backend: the server's API root, e.g. http://localhost:8000/v1.")
LLM_MODEL = typer.Option(None, "--llm-model", help="openai: the model name the server knows (a vLLM LoRA module selects the adapter); transformers: a model folder or Hub id.")
LLM_ADAPTER = typer.Option(None, "--llm-adapter", help="transformers backend: a LoRA adapter folder from `aivd finetune train`.")
LLM_PROMPT = typer.Option(None, "--llm-prompt", help="Prompt version (v1, ...) or prompt YAML; use the one the adapter was trained with. Default: the newest.")


def _llm_analyzer(backend: CloudBackend, llm: LLMOptions, class_names: list[str], knowledge: Optional[Path]):
    """The multimodal-LLM analyzer `backend` with the --llm-* options; exits with a one-line error when they do not fit."""
    from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeError

    if backend is CloudBackend.openai:
        from aivd.cloud.llm.openai_backend import ConfigError, OpenAIAnalyzer, OpenAIConfig
        from aivd.cloud.llm.prompts import PromptError

        if llm.adapter is not None:
            raise fail("--llm-adapter is for the transformers backend; an OpenAI-compatible server picks the adapter by "
                       "model name (vLLM: --llm-model NAME of --lora-modules NAME=PATH)")
        overrides = {"base_url": llm.base_url, "model": llm.model, "prompt": llm.prompt}
        try:
            if llm.config is not None:
                config = OpenAIConfig.load(llm.config, **overrides)
            elif llm.base_url is None or llm.model is None:
                raise fail("--cloud-backend openai needs --llm-base-url and --llm-model, or --llm-config FILE")
            else:
                config = OpenAIConfig.build({k: v for k, v in overrides.items() if v is not None}, "--llm-* options")
            return OpenAIAnalyzer(config, class_names, knowledge or DEFAULT_KNOWLEDGE)
        except (ConfigError, PromptError, KnowledgeError) as error:
            raise fail(str(error)) from None
    if llm.config is not None or llm.base_url is not None:
        raise fail("--llm-config and --llm-base-url are for the openai backend; the transformers backend takes "
                   "--llm-model, --llm-adapter and --llm-prompt")
    if llm.model is None:
        raise fail("--cloud-backend transformers needs --llm-model (a model folder or Hub id)")
    try:
        from aivd.cloud.llm.transformers_backend import TransformersAnalyzer
    except ImportError as error:
        raise fail(f"the transformers backend cannot be loaded ({error}); install aivd's LLM extras (see docs/llm.md)") from None
    try:
        return TransformersAnalyzer(llm.model, llm.adapter, llm.prompt, knowledge=knowledge or DEFAULT_KNOWLEDGE)
    except KnowledgeError as error:
        raise fail(str(error)) from None
    except (OSError, ValueError) as error:  # a missing or unreadable model or adapter, a bad prompt
        raise fail(f"--llm-model {llm.model}: {error}") from None


def load_model_pack(pack: Path):
    """The model pack in folder `pack` ('builtin' names the shipped DeepPCB pack), or a one-line exit."""
    from aivd.packs import PackError, builtin_pack, load_pack

    try:
        return builtin_pack() if str(pack) == "builtin" else load_pack(pack)
    except PackError as error:
        raise fail(str(error)) from None


def _load_pipeline(
    model: Optional[Path], min_confidence: Optional[float], edge_only: bool, cloud: Optional[str] = None,
    classifier: Optional[Path] = None, knowledge: Optional[Path] = None, proposal: Optional[float] = None,
    pixels_per_mm: Optional[float] = None, backend: CloudBackend = CloudBackend.builtin, llm: LLMOptions = LLMOptions(),
    pack: Optional[Path] = None, tile_size: Optional[int] = None,
):
    """The detector, and unless `edge_only` the cloud analyzer: `backend` in this process, or a remote service at `cloud`.

    With a model `pack`, its detectors, classifier, knowledge base and imaging scale are the defaults. `tile_size`:
    see `_tiled` (a pack sets its own; the option overrides it)."""
    from aivd.cloud.knowledge import KnowledgeError
    from aivd.edge.detector import ModelError
    from aivd.pipeline.engine import EdgeCloudPipeline

    if pack is not None and model is not None:
        raise fail("give --pack or --model, not both: a pack brings its own detectors")
    if pack is None and model is None:
        pack = Path("builtin")  # the shipped pack: its image-only detector takes the images without a template
    if backend is not CloudBackend.builtin and (cloud or classifier):
        raise fail(f"--cloud-backend {backend.value} runs the analyzer in this process: it cannot be combined with "
                   f"{'--cloud' if cloud else '--classifier'}")
    if backend is CloudBackend.builtin and llm.given():
        given = llm.given()
        raise fail(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --cloud-backend openai or transformers")
    if pack is not None:
        from aivd.packs import PackError

        loaded = load_model_pack(pack)
        try:
            detector = loaded.load_detector(min_confidence, tile_size=tile_size)
        except (ModelError, PackError) as error:
            raise fail(str(error)) from None
        except ValueError as error:  # what TiledDetector says of a tile size it cannot use
            raise fail(f"--tile-size: {error}") from None
        classifier, knowledge = classifier or loaded.classifier, knowledge or loaded.knowledge
        pixels_per_mm = loaded.pixels_per_mm if pixels_per_mm is None else pixels_per_mm
        pcb_facts = loaded.pcb_facts
        if classifier is None and not (edge_only or cloud or backend is not CloudBackend.builtin):
            raise fail(f"pack {loaded.name} has no cloud classifier: use --edge-only, --cloud URL or an LLM --cloud-backend")
    else:
        from aivd.cloud.builtin import BUILTIN_CLASSIFIER
        from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE

        detector = _tiled(_load_detector(model, min_confidence), model, tile_size)
        classifier, knowledge, pcb_facts = classifier or BUILTIN_CLASSIFIER, knowledge or DEFAULT_KNOWLEDGE, True
    if edge_only:
        return EdgeCloudPipeline(detector)
    if backend is not CloudBackend.builtin:
        return EdgeCloudPipeline(detector, _llm_analyzer(backend, llm, list(detector.labels.names), knowledge), proposal, pixels_per_mm)
    try:
        if cloud:
            from aivd.cloud.http_client import HttpAnalyzer

            try:
                analyzer = HttpAnalyzer(cloud)
            except ValueError as error:
                raise fail(str(error)) from None
        else:
            from aivd.cloud.builtin import BuiltinAnalyzer

            # One thread: in-process, the analyzer runs beside the detector's two (inspect overlaps the tiers).
            analyzer = BuiltinAnalyzer(classifier, knowledge, threads=1, pcb_facts=pcb_facts)
    except (ModelError, KnowledgeError) as error:
        raise fail(str(error)) from None
    return EdgeCloudPipeline(detector, analyzer, proposal, pixels_per_mm)


PACK = typer.Option(None, "--pack", help="A model pack folder (from `aivd train pack`), or 'builtin' for the shipped DeepPCB pack.")


# Where a run is written, not what it inspects: not stored with the run's arguments.
RUN_LOCATION = ("context", "out", "resume", "db")
# URL options that may carry a password: stored with it hidden, so a resumed run needs them given again.
SECRET_URL_OPTIONS = ("cloud", "llm_base_url")


@app.command()
def inspect(
    context: typer.Context,
    paths: list[Path] = typer.Argument(None, help="Image files or folders (searched recursively)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="Output folder: results.jsonl, annotated/, deeppcb/, report.html, aivd.sqlite, run.json. A new run replaces the "
             "files of the run the folder held (the database keeps every run); a folder another run is writing is refused."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="OUT",
        help="Continue the stopped run in OUT with the options it was started with, skipping the images it has done. "
             "Give --db, --cloud or --llm-base-url again only if its URL had a password (not stored)."),
    deeppcb: Optional[Path] = typer.Option(None, help="Inspect an official DeepPCB split instead of PATHS. " + DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split: trainval or test."),
    model: Optional[Path] = typer.Option(None, help="ONNX detector (an aivd model or an Ultralytics YOLO export), or a model-store folder whose served version is followed (`aivd models`). Default: built-in."),
    pack: Optional[Path] = PACK,
    template: Optional[Path] = typer.Option(None, help="One aligned template for every image."),
    templates: TemplateMode = typer.Option(TemplateMode.auto, help="auto: use NAME_temp beside NAME_test; require: missing is an error; none: ignore."),
    min_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Edge score threshold; default: the model's calibrated one."),
    edge_only: bool = EDGE_ONLY,
    cloud: Optional[str] = CLOUD_URL,
    classifier: Optional[Path] = CLASSIFIER,
    knowledge: Optional[Path] = KNOWLEDGE,
    proposal_threshold: Optional[float] = PROPOSAL,
    pixels_per_mm: Optional[float] = PIXELS_PER_MM,
    cloud_backend: CloudBackend = CLOUD_BACKEND,
    llm_config: Optional[Path] = LLM_CONFIG,
    llm_base_url: Optional[str] = LLM_BASE_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_adapter: Optional[Path] = LLM_ADAPTER,
    llm_prompt: Optional[str] = LLM_PROMPT,
    annotate: bool = typer.Option(True, help="Write annotated images to OUT/annotated/."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the result database, e.g. postgresql+psycopg://... Default: OUT/aivd.sqlite."),
    report: bool = typer.Option(True, help="Write OUT/report.html."),
    tile_size: Optional[int] = typer.Option(
        None, "--tile-size", min=0,
        help="Detect images longer than 1.5 tiles in overlapping tiles of this many px. Default: 640 for the built-in detector, "
             "none for --model; 0: never tile."),
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
        lock = _claim_output(out)
        arguments = _resumed_arguments(out, db or "", arguments, context)
    elif out is None:
        raise fail("give the output folder: --out OUT, or --resume OUT to continue a stopped run")
    else:
        lock = None
    _inspect(out, db or "", resume is not None, lock, SimpleNamespace(**arguments))


def _claim_output(out: Path):
    """The lock of output folder `out`, or a one-line exit when another run holds it or it cannot be written."""
    from aivd.pipeline.run_folder import OutputBusy, OutputLock

    try:
        return OutputLock(out)
    except OutputBusy as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(f"{out}: cannot write the output folder ({error.strerror or error})") from None


def _stored_argument(name: str, value):
    return redact_url(value) if name in SECRET_URL_OPTIONS and value else value


def _resumed_arguments(out: Path, db: str, arguments: dict, context: typer.Context) -> dict:
    """The arguments the run in `out` was started with, for `--resume`. An option given on the command line must
    agree with the run's; a URL whose password was not stored must be given again. Changes to the run's working
    folder, against which its relative paths were given."""
    from pydantic import TypeAdapter, ValidationError

    from aivd.pipeline.run_folder import ResumeError, read_marker, resume_database
    from aivd.store import ResultStore, StoreError

    try:
        marker = read_marker(out)
        with ResultStore(resume_database(out, marker, db)) as store:
            run = store.run(marker.run_id)
    except (ResumeError, StoreError) as error:
        raise fail(str(error)) from None
    if "arguments" not in run.config:
        raise fail(f"{out}: run {run.id} was not started by an aivd inspect that can resume it")
    types = get_type_hints(inspect)
    try:
        resumed = {name: None if value is None else TypeAdapter(types[name]).validate_python(value)
                   for name, value in run.config["arguments"].items()}
    except (KeyError, ValidationError) as error:
        raise fail(f"{out}: the options stored with run {run.id} are not this aivd's ({str(error).splitlines()[0]})") from None
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


def _inspect(out: Path, db: str, resuming: bool, lock, args: SimpleNamespace) -> None:
    from aivd.cli.interrupts import StopRequest
    from aivd.data.deeppcb import DatasetError
    from aivd.pipeline.inputs import tasks_from_deeppcb, tasks_from_paths
    from aivd.pipeline.inspect import InspectOptions, ResultWriter, inspect_tasks
    from aivd.pipeline.run_folder import ResumeError
    from aivd.store import StoreError

    if bool(args.paths) == bool(args.deeppcb):
        raise fail("give either image PATHS or --deeppcb ROOT, not both and not neither")
    if args.template is not None and not args.template.is_file():
        raise fail(f"{args.template}: template not found")
    if args.deeppcb and args.template is not None:
        raise fail("--template does not apply to --deeppcb: each DeepPCB image has its own template (--templates none ignores them)")
    try:
        tasks = (tasks_from_deeppcb(resolve_deeppcb(args.deeppcb), args.split) if args.deeppcb
                 else tasks_from_paths(args.paths, args.templates, args.template))
    except DatasetError as error:
        raise fail(str(error)) from None
    if args.deeppcb and args.templates is TemplateMode.none:
        tasks = [dataclasses.replace(task, template_path=None, error=None) for task in tasks]
    if not tasks:
        raise fail("no images found in the given paths")
    lock = lock or _claim_output(out)
    pixels_per_mm = args.pixels_per_mm
    if pixels_per_mm is None and args.deeppcb:
        pixels_per_mm = DEEPPCB_PIXELS_PER_MM
    llm = LLMOptions(args.llm_config, args.llm_base_url, args.llm_model, args.llm_adapter, args.llm_prompt)
    pipeline = _load_pipeline(args.model, args.min_confidence, args.edge_only, args.cloud, args.classifier, args.knowledge,
                              args.proposal_threshold, pixels_per_mm, args.cloud_backend, llm, args.pack, args.tile_size)
    options = InspectOptions(
        annotate=args.annotate, deeppcb_results=bool(args.deeppcb), database=db, report=args.report, resume=resuming,
        command=redact_command(["aivd", *sys.argv[1:]]),
        config={"pipeline": pipeline.name, "edge_threshold": pipeline.edge_threshold, "proposal_threshold": pipeline.proposal_threshold,
                "pixels_per_mm": pixels_per_mm, "images": len(tasks), "tile_size": getattr(pipeline.detector, "tile_size", None),
                "cwd": os.getcwd(), "arguments": {name: _stored_argument(name, value) for name, value in vars(args).items()}},
    )
    resume_command = f"aivd inspect --resume {shlex.quote(str(out))}"
    with StopRequest(f"the records written so far are kept; continue with: {resume_command}") as stop:
        try:
            writer = ResultWriter(out, options, lock)
        except (StoreError, ResumeError) as error:
            raise fail(str(error)) from None
        except OSError as error:
            raise fail(f"{out}: cannot write the output folder ({error.strerror or error})") from None
        with progress_bar() as progress:
            bar = progress.add_task("inspecting", total=len(tasks), completed=len(writer.done))

            def on_result(record) -> None:
                if record.status == "error":
                    error_line(f"{record.image}: {record.error}")
                progress.advance(bar)

            summary = inspect_tasks(tasks, pipeline, writer, options, on_result, lambda: stop.requested)
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
    if summary.interrupted:
        console.print(f"[yellow]interrupted:[/yellow] {summary.images} of {len(tasks)} images done; continue with: "
                      f"{shown(resume_command)}", highlight=False)
        raise typer.Exit(stop.exit_code)
    if summary.failed:
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
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
) -> None:
    """Score detections: on DeepPCB with its official protocol (and COCO mAP), on any data set (--data) with COCO
    mAP@0.5 and mAP@0.5:0.95 and precision/recall/F1 at the pack's threshold; per-class figures and a confusion matrix."""
    from aivd.data.deeppcb import DatasetError
    from aivd.eval.deeppcb_eval import evaluate_results, ground_truth_from_split, ground_truth_from_zip, read_results
    from aivd.eval.report import write_report

    if data is not None:
        if results is not None or gt_zip is not None or deeppcb is not None:
            raise fail("--data runs a pack over a data set: --results, --gt-zip and --deeppcb do not apply")
        _eval_data(data, split, pack, model, min_confidence, use_templates, edge_only, cloud, classifier, proposal_threshold, report, as_json)
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
            pipeline = _load_pipeline(model, min_confidence, edge_only, cloud, classifier, None, proposal_threshold, DEEPPCB_PIXELS_PER_MM,
                                      pack=pack)
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


def _eval_data(data, split, pack, model, min_confidence, use_templates, edge_only, cloud, classifier, proposal_threshold, report, as_json):
    from aivd.eval.dataset_eval import evaluate_pipeline
    from aivd.eval.report import write_report

    loaded = _data_split(data, split)
    pipeline = _load_pipeline(model, min_confidence, edge_only, cloud, classifier, None, proposal_threshold, pack=pack)
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


@app.command()
def demo(
    out: Path = typer.Option(Path("aivd-demo"), "--out", "-o", help="Output folder."),
    model: Optional[Path] = typer.Option(None, help="ONNX detector. Default: built-in."),
    edge_only: bool = EDGE_ONLY,
) -> None:
    """Inspect the bundled DeepPCB samples, score them, and write OUT/report.html and OUT/evaluation.html."""
    from aivd.pipeline.demo import run_demo

    result = run_demo(_load_pipeline(model, None, edge_only, pixels_per_mm=DEEPPCB_PIXELS_PER_MM), out)
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


@app.command()
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


@app.command()
def schema(out: Path = typer.Option(Path("docs/schema"), "--out", "-o", help="Folder for the JSON Schema files.")) -> None:
    """Write the JSON Schemas of the records aivd produces (results.jsonl lines, cloud analyses)."""
    from aivd.pipeline.schemas import write_schemas

    for path in write_schemas(out):
        console.print(f"wrote {shown(path)}", highlight=False)


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
    training = _training_module("detector")
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

    training = _training_module("pack")
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
        bars: dict[str, int] = {}

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


def _training_module(name: str):
    """aivd.training.NAME, or a clear exit when the 'train' extra (torch) is not installed."""
    return import_extra(f"training.{name}")


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
) -> None:
    """Train the second-stage class refiner and package it with a detector, re-calibrating the threshold."""
    training = _training_module("refiner")
    RefinerTrainConfig, train_refiner = training.RefinerTrainConfig, training.train_refiner
    if not detector.is_file():
        raise fail(f"{detector}: detector model not found")
    config = RefinerTrainConfig(epochs=epochs, reject=reject, seed=seed, limit=limit, threads=threads)

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
    training = _training_module("cloud_classifier")
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
                   f"{chosen['proposal_threshold']}, score threshold {chosen['score_threshold']}")


@train_app.command("calibrate")
def train_calibrate_command(
    classifier: Path = typer.Option(..., help="Cloud crop-classifier ONNX whose thresholds to set (changed in place)."),
    detector: Optional[Path] = typer.Option(None, help="The edge detector it will verify. Default: built-in."),
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
) -> None:
    """Re-choose a cloud classifier's proposal and score thresholds for an edge detector, on held-out trainval.

    A new edge model scores its candidates differently, so the thresholds chosen with the old one no longer hold.
    """
    calibration = _training_module("classifier_calibration")
    from aivd.data.deeppcb import holdout_split, load_split

    for path, what in ((classifier, "classifier"), (detector, "detector")):
        if path is not None and not path.is_file():
            raise fail(f"{path}: {what} model not found")
    _, held_out = holdout_split(load_split(resolve_deeppcb(deeppcb), "trainval"))
    result = calibration.calibrate_classifier(classifier, detector, held_out)
    for row in result["table"]:
        console.print(f"proposal {row['proposal_threshold']:.2f}: F {row['fscore']:.4f} at score threshold "
                      f"{row['score_threshold']:.2f}, {row['regions_per_image']} regions per image", highlight=False)
    chosen = result["chosen"]
    console.print(f"chosen: proposal threshold {chosen['proposal_threshold']}, score threshold {chosen['score_threshold']} "
                  f"(held-out F {chosen['fscore']:.4f}) -> {classifier}", highlight=False)


@bench_app.command("inspect")
def bench_inspect_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split to run over."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
    model: Optional[Path] = typer.Option(None, help="ONNX detector. Default: built-in."),
    pack: Optional[Path] = PACK,
    data: Optional[Path] = typer.Option(None, "--data", help="Any data set (`aivd data check` reads it) instead of DeepPCB."),
    templates: TemplateMode = typer.Option(TemplateMode.auto, help="none: inspect the images without their templates."),
    annotate: bool = typer.Option(True, help="Include writing annotated images, as `aivd inspect` does by default."),
    repeat: int = typer.Option(1, min=1, help="Passes over the images."),
    edge_only: bool = EDGE_ONLY,
    cloud: Optional[str] = CLOUD_URL,
) -> None:
    """Inspection speed end to end at batch 1 (decode, pre/post-processing, edge and cloud models), and peak memory."""
    from aivd.bench.inspect_speed import bench_inspect
    from aivd.pipeline.inputs import InspectionTask, tasks_from_deeppcb

    if data is not None:
        samples = _data_split(data, split).samples
        tasks = [InspectionTask(s.image_id, s.image_path, s.template_path) for s in samples][:limit]
        pixels_per_mm = None
    else:
        tasks = tasks_from_deeppcb(resolve_deeppcb(deeppcb), split)[:limit]
        pixels_per_mm = DEEPPCB_PIXELS_PER_MM
    if templates is TemplateMode.none:
        tasks = [dataclasses.replace(task, template_path=None) for task in tasks]
    pipeline = _load_pipeline(model, None, edge_only, cloud, pixels_per_mm=pixels_per_mm, pack=pack)
    print(json.dumps(bench_inspect(tasks, pipeline, annotate, repeat=repeat)))


def _data_split(data: Path, split: str):
    """One split of any data set, or a one-line exit; its problems are printed and the good samples kept."""
    from aivd.data.deeppcb import DatasetError
    from aivd.data.sources import open_data

    try:
        loaded = open_data(data).split(split)
    except DatasetError as error:
        raise fail(str(error)) from None
    for problem in loaded.problems:
        console.print(f"[yellow]skipped:[/yellow] {shown(problem)}", highlight=False)
    if not loaded.samples:
        raise fail(f"{data}: no usable images in split {split!r}")
    return loaded


@bench_app.command("cluster")
def bench_cluster_command(
    nodes: int = typer.Option(8, min=1, max=64, help="Emulated edge nodes (classes cycle gpu, ipc, arm, ipc)."),
    scenario: int = typer.Option(3, min=1, max=3, help="Simulator scenario whose links and arrivals to copy."),
    policies: str = typer.Option("aivd,ray,rr", help="Routing policies to compare; 'ray' is Ray Serve's own router."),
    requests: int = typer.Option(600, min=1, help="Requests per policy."),
    seed: int = typer.Option(0),
    load: Optional[float] = typer.Option(None, min=0.01, help="Arrival rate as a fraction of the emulated capacity; default: the scenario's."),
    time_scale: float = typer.Option(4.0, min=0.1, help="Service times = the simulator's x this (one machine runs slower devices)."),
    max_ongoing: int = typer.Option(8, min=1, help="Requests in flight per edge replica (Ray's max_ongoing_requests)."),
    port: int = typer.Option(8000, min=1, max=65535),
    sample: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="A *_test.jpg with its *_temp.jpg beside it. Default: a bundled DeepPCB pair."),
    as_json: bool = JSON_ALWAYS,
) -> None:
    """Drive real HTTP load through the Ray Serve runtime per policy; print measured and simulated figures as JSON."""
    from aivd.bench.cluster import bench_cluster
    from aivd.cli.simulate import check_policies, parse_list
    from aivd.runtime.config import RAY_DEFAULT_ROUTER

    names = parse_list(policies)
    check_policies([n for n in names if n != RAY_DEFAULT_ROUTER] or ["rr"])
    sample = sample or Path(__file__).resolve().parents[1] / "data" / "samples" / "deeppcb" / "20085291_test.jpg"
    # Ray prints its workers' and raylets' messages on the driver's stdout; keep stdout for the one JSON object.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        report = bench_cluster(nodes, scenario, names, requests, seed, load, time_scale, max_ongoing, port, sample)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(report))


@bench_app.command("collab")
def bench_collab_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="test, trainval, or holdout (the held-out tenth of trainval, for choices)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
    budget: float = typer.Option(0.3, min=0.0, max=1.0, help="Share of regions the online controller may send to the cloud."),
    budget_filter: str = typer.Option("threshold", "--filter", help="Hard-example filter for the budget run: threshold, margin, cross_entropy, ibt, random."),
    seed: int = typer.Option(0, help="Seed of the random filter and the drift's noise."),
    drift: Optional[str] = typer.Option(None, help="Also stream the split with the imaging degrading from its middle on: KIND:STRENGTH, KIND one of blur, contrast_noise, resample (e.g. blur:1.2)."),
    update: bool = typer.Option(False, "--update/--no-update", help="With --drift: also run the stream with online updates of the edge model (needs the train extra)."),
    workdir: Optional[Path] = typer.Option(None, help="With --update: keep the model store and candidates here. Default: a temporary folder."),
    update_steps: int = typer.Option(0, min=0, help="Detector fine-tuning steps per update (0: only the class refiner is updated)."),
    min_images: int = typer.Option(40, min=1, help="Hard images after drift is seen before an update runs."),
    train_window: int = typer.Option(100, min=1, help="Newest hard images an update trains on."),
    as_json: bool = JSON_ALWAYS,
) -> None:
    """Offload only the hard regions: F-score and bytes against the upload ratio, and at a budget; one JSON object."""
    from aivd.bench.collab import bench_collab
    from aivd.collab.hard_examples import FILTERS
    from aivd.data.deeppcb import holdout_split, load_split

    if budget_filter not in FILTERS:
        raise typer.BadParameter(f"unknown filter {budget_filter!r}; known: {', '.join(FILTERS)}", param_hint="--filter")
    if split not in ("test", "trainval", "holdout"):
        raise typer.BadParameter("test, trainval or holdout", param_hint="--split")
    root = resolve_deeppcb(deeppcb)
    samples = holdout_split(load_split(root, "trainval"))[1] if split == "holdout" else load_split(root, split)
    samples = samples[:limit]
    phase = None
    if drift:
        from pydantic import ValidationError

        from aivd.data.drift import DriftPhase

        kind, _, strength = drift.partition(":")
        try:
            phase = DriftPhase(start=len(samples) // 2, kind=kind, strength=float(strength or "nan"))
        except (ValidationError, ValueError):
            raise typer.BadParameter("KIND:STRENGTH with KIND blur, contrast_noise or resample and STRENGTH > 0", param_hint="--drift") from None
    if update and phase is None:
        raise typer.BadParameter("--update needs --drift", param_hint="--update")
    pipeline = _load_pipeline(None, None, False, pixels_per_mm=DEEPPCB_PIXELS_PER_MM)
    if not update:
        print(json.dumps(bench_collab(pipeline, samples, budget, budget_filter, seed, phase)))
        return
    import tempfile

    from aivd.bench.collab import OnlineSettings
    from aivd.collab.drift_monitor import TriggerConfig

    training = _training_module("online_update")
    with tempfile.TemporaryDirectory(prefix="aivd-online-") as temporary:
        settings = OnlineSettings(workdir or Path(temporary), training.LearnerConfig(detector_steps=update_steps, seed=seed),
                                  TriggerConfig(min_images=min_images), train_window)
        print(json.dumps(bench_collab(pipeline, samples, budget, budget_filter, seed, phase, settings)))


@bench_app.command("crops")
def bench_crops_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split."),
    classifier: Optional[Path] = CLASSIFIER,
    model: Optional[Path] = typer.Option(None, help="Edge detector whose candidates are classified. Default: built-in."),
    proposal_threshold: Optional[float] = PROPOSAL,
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
) -> None:
    """Crop classification accuracy of the cloud classifier on ground-truth boxes and on the edge's boxes."""
    from aivd.bench.crop_accuracy import crop_accuracy
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER, CropClassifier
    from aivd.data.deeppcb import load_split
    from aivd.edge.detector import ModelError

    try:
        crop_model = CropClassifier(classifier or BUILTIN_CLASSIFIER)
    except ModelError as error:
        raise fail(str(error)) from None
    with progress_bar() as progress:
        samples = progress.track(load_split(resolve_deeppcb(deeppcb), split)[:limit], description="classifying")
        result = crop_accuracy(crop_model, _load_detector(model, None), samples, proposal_threshold)
    print(json.dumps({"split": split, **result}))


@bench_app.command("hostile-inputs")
def bench_hostile_inputs_command(
    timeout: float = typer.Option(300.0, min=1.0, help="Seconds the inspect run may take before it counts as hung."),
) -> None:
    """`aivd inspect --edge-only` over hostile files (a FIFO, /dev/zero, a PNG bomb, markup and newlines in names):
    rows written, exit code, traceback or not, wall time and peak memory."""
    from aivd.bench.hostile_inputs import bench_hostile_inputs

    print(json.dumps(bench_hostile_inputs(timeout)))


@bench_app.command("service-abuse")
def bench_service_abuse_command(
    seconds: float = typer.Option(20.0, min=1.0, help="Seconds per phase."),
    idle_connections: int = typer.Option(1100, min=0, help="Idle connections held open while /healthz is measured."),
) -> None:
    """A normal edge client's latency at the real cloud service while a hostile client floods it, and /healthz
    beside idle connections (locust)."""
    from aivd.bench.service_abuse import bench_service_abuse

    try:
        report = bench_service_abuse(seconds, idle_connections)
    except RuntimeError as error:
        raise fail(str(error)) from None
    print(json.dumps(report))


def main() -> None:
    try:
        app()
    except AivdError as error:  # a user-facing error no command turned into its own line: still one line, no traceback
        error_line(str(error))
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
