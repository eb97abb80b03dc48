"""`aivd`: inspect images, evaluate on DeepPCB, train the built-in models, run benchmarks and the demo."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import NamedTuple, Optional

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

console = Console(stderr=True, soft_wrap=True)  # one error per line, never wrapped
DEEPPCB_HELP = "DeepPCB root (the folder holding PCBData/); default: $AIVD_DEEPPCB_ROOT or ../shared/data/deeppcb."


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


def fail(message: str, code: int = 2) -> typer.Exit:
    from rich.markup import escape

    # Escaped: messages quote paths and commands such as pip install 'aivd[train]', which rich would take for markup.
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def resolve_deeppcb(root: Optional[Path]) -> Path:
    from aivd.data.deeppcb import default_root

    root = root or default_root()
    if root is None:
        raise fail("no DeepPCB root: pass --deeppcb ROOT or set AIVD_DEEPPCB_ROOT")
    return root


def _load_detector(model: Optional[Path], min_confidence: Optional[float]):
    """An ONNX file, or a model store's served version (followed as it changes: `aivd models promote`)."""
    from aivd.edge.detector import ModelError, load_detector
    from aivd.store.model_versions import ModelStoreError

    try:
        if model is not None and model.is_dir():
            from aivd.edge.hot_swap import HotSwapDetector
            from aivd.store.model_versions import ModelStore

            if not (model / "versions").is_dir():
                raise fail(f"{model}: a folder, but not a model store (no versions/ folder); give an ONNX file or a store")
            if min_confidence is not None:
                raise fail("--min-confidence does not apply to a model store: each version carries its threshold")
            return HotSwapDetector(ModelStore(model), poll_s=5.0)
        return load_detector(model, min_confidence)
    except (ModelError, ModelStoreError) as error:
        raise fail(str(error)) from None


DEEPPCB_PIXELS_PER_MM = 48.0
# Benchmarks always print one JSON object; --json is accepted so that commands written as `... --json` work.
JSON_ALWAYS = typer.Option(True, "--json", help="Print one JSON object (the only output format).")
EDGE_ONLY = typer.Option(False, "--edge-only", help="Edge detector alone: no cloud analysis.")
CLOUD_URL = typer.Option(None, "--cloud", help="URL of an `aivd serve cloud` service. Default: the built-in analyzer in this process.")
CLASSIFIER = typer.Option(None, help="Cloud crop-classifier ONNX (from `aivd train classifier`). Default: built-in.")
KNOWLEDGE = typer.Option(None, help="Defect knowledge-base YAML (`aivd kb init` scaffolds one) for the cloud analyzer's text and prompts. Default: DeepPCB's.")
PROPOSAL = typer.Option(None, min=0.0, max=1.0, help="Edge score from which candidates go to the cloud. Default: the classifier's calibrated one.")
PIXELS_PER_MM = typer.Option(None, min=0.0, help="Imaging scale for sizes in mm. Default: 48 for DeepPCB input, else unknown.")


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


def _load_pipeline(
    model: Optional[Path], min_confidence: Optional[float], edge_only: bool, cloud: Optional[str] = None,
    classifier: Optional[Path] = None, knowledge: Optional[Path] = None, proposal: Optional[float] = None,
    pixels_per_mm: Optional[float] = None, backend: CloudBackend = CloudBackend.builtin, llm: LLMOptions = LLMOptions(),
):
    """The detector, and unless `edge_only` the cloud analyzer: `backend` in this process, or a remote service at `cloud`."""
    from aivd.cloud.knowledge import KnowledgeError
    from aivd.edge.detector import ModelError
    from aivd.pipeline.engine import EdgeCloudPipeline

    if backend is not CloudBackend.builtin and (cloud or classifier):
        raise fail(f"--cloud-backend {backend.value} runs the analyzer in this process: it cannot be combined with "
                   f"{'--cloud' if cloud else '--classifier'}")
    if backend is CloudBackend.builtin and llm.given():
        given = llm.given()
        raise fail(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --cloud-backend openai or transformers")
    detector = _load_detector(model, min_confidence)
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
            from aivd.cloud.builtin import BUILTIN_CLASSIFIER, BuiltinAnalyzer
            from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE

            # One thread: in-process, the analyzer runs beside the detector's two (inspect overlaps the tiers).
            analyzer = BuiltinAnalyzer(classifier or BUILTIN_CLASSIFIER, knowledge or DEFAULT_KNOWLEDGE, threads=1)
    except (ModelError, KnowledgeError) as error:
        raise fail(str(error)) from None
    return EdgeCloudPipeline(detector, analyzer, proposal, pixels_per_mm)


@app.command()
def inspect(
    paths: list[Path] = typer.Argument(None, help="Image files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: results.jsonl, annotated/, deeppcb/."),
    deeppcb: Optional[Path] = typer.Option(None, help="Inspect an official DeepPCB split instead of PATHS. " + DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split: trainval or test."),
    model: Optional[Path] = typer.Option(None, help="ONNX detector (an aivd model or an Ultralytics YOLO export), or a model-store folder whose served version is followed (`aivd models`). Default: built-in."),
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
) -> None:
    """Find defects in images (edge), analyse each (cloud) and write one JSON record per image, the database
    and an HTML report."""
    from aivd.data.deeppcb import DatasetError
    from aivd.pipeline.inputs import tasks_from_deeppcb, tasks_from_paths
    from aivd.pipeline.inspect import InspectOptions, ResultWriter, inspect_tasks
    from aivd.store import StoreError

    if bool(paths) == bool(deeppcb):
        raise fail("give either image PATHS or --deeppcb ROOT, not both and not neither")
    if template is not None and not template.is_file():
        raise fail(f"{template}: template not found")
    try:
        tasks = tasks_from_deeppcb(resolve_deeppcb(deeppcb), split) if deeppcb else tasks_from_paths(paths, templates, template)
    except DatasetError as error:
        raise fail(str(error)) from None
    if not tasks:
        raise fail("no images found in the given paths")
    if pixels_per_mm is None and deeppcb:
        pixels_per_mm = DEEPPCB_PIXELS_PER_MM
    pipeline = _load_pipeline(model, min_confidence, edge_only, cloud, classifier, knowledge, proposal_threshold, pixels_per_mm,
                              cloud_backend, LLMOptions(llm_config, llm_base_url, llm_model, llm_adapter, llm_prompt))
    options = InspectOptions(
        annotate=annotate, deeppcb_results=bool(deeppcb), database=db or "", report=report, command=" ".join(["aivd", *sys.argv[1:]]),
        config={"pipeline": pipeline.name, "edge_threshold": pipeline.edge_threshold, "proposal_threshold": pipeline.proposal_threshold,
                "pixels_per_mm": pixels_per_mm, "images": len(tasks)},
    )
    try:
        writer = ResultWriter(out, options)
    except StoreError as error:
        raise fail(str(error)) from None

    with progress_bar() as progress:
        bar = progress.add_task("inspecting", total=len(tasks))

        def on_result(record) -> None:
            if record.status == "error":
                console.print(f"[red]error:[/red] {record.image}: {record.error}", highlight=False)
            progress.advance(bar)

        summary = inspect_tasks(tasks, pipeline, writer, options, on_result)
    console.print(
        f"{summary.ok} of {summary.images} images inspected, {summary.defects} defects, {summary.failed} failed, "
        f"{summary.images_per_s:.1f} images/s -> {out / 'results.jsonl'}", highlight=False,
    )
    if pipeline.analyzer is not None:
        console.print(f"cloud: {summary.rejected} edge candidates judged not defects", highlight=False)
    if summary.cloud_failed:
        console.print(
            f"[yellow]warning:[/yellow] cloud unavailable for {summary.cloud_failed} images; their defects are the edge's own "
            "(see cloud_error in results.jsonl)", highlight=False,
        )
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
) -> None:
    """Score detections with the official DeepPCB protocol, plus per-class metrics and a confusion matrix."""
    from aivd.data.deeppcb import DatasetError
    from aivd.eval.deeppcb_eval import evaluate_results, ground_truth_from_split, ground_truth_from_zip, read_results
    from aivd.eval.report import write_report

    root = resolve_deeppcb(deeppcb)
    try:
        truth, image_paths = ground_truth_from_split(root, split)
        if gt_zip is not None:
            truth = ground_truth_from_zip(gt_zip)
        if results is not None:
            predictions, source = read_results(results), str(results)
        else:
            pipeline = _load_pipeline(model, min_confidence, edge_only, cloud, classifier, None, proposal_threshold, DEEPPCB_PIXELS_PER_MM)
            predictions = _detect_split(root, split, pipeline, use_templates)
            source = f"live run of {pipeline.name}" + ("" if use_templates else " without templates")
        # DeepPCB's board group is the folder an image lies in; four test groups are absent from trainval.
        output = evaluate_results(predictions, truth, {image_id: path.parent.name for image_id, path in image_paths.items()})
    except DatasetError as error:
        raise fail(str(error)) from None
    if report:
        write_report(
            report, f"DeepPCB {split}: {source}", output.result.summary(), output.classes, output.confusion,
            output.result.matches, image_paths, groups=output.groups,
        )
    if as_json:
        print(json.dumps(output.to_json()))
        return
    _print_eval(output)
    if report:
        console.print(f"report -> {report}")


def _detect_split(root: Path, split: str, pipeline, use_templates: bool) -> dict:
    from aivd.data.deeppcb import load_split
    from aivd.eval.deeppcb_eval import detect_samples

    with progress_bar() as progress:
        samples = progress.track(load_split(root, split), description="detecting")
        return detect_samples(pipeline, samples, use_templates, lambda error: console.print(f"[red]error:[/red] {error}", highlight=False))


def _print_eval(output) -> None:
    summary = output.result.summary()
    out = Console()
    out.print(
        f"F-score [bold]{summary['fscore']:.4f}[/bold]  AP [bold]{summary['ap']:.4f}[/bold]  precision {summary['precision']:.4f}  "
        f"recall {summary['recall']:.4f}  ({summary['images']} images, {summary['ground_truth']} defects, {summary['detections']} detections)"
    )
    table = Table("class", "precision", "recall", "F1", "truth", "detected", "correct")
    for name, row in output.classes.items():
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["ground_truth"]), str(row["detections"]), str(row["correct"]))
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
        f"records in {out / 'results.jsonl'} and {out / 'aivd.sqlite'}", highlight=False,
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
    console.print(f"{count} synthetic pairs in {layout} layout -> {out}", highlight=False)


@app.command()
def schema(out: Path = typer.Option(Path("docs/schema"), "--out", "-o", help="Folder for the JSON Schema files.")) -> None:
    """Write the JSON Schemas of the records aivd produces (results.jsonl lines, cloud analyses)."""
    from aivd.pipeline.schemas import write_schemas

    for path in write_schemas(out):
        console.print(f"wrote {path}", highlight=False)


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
    console.print(f"best epoch {best['epoch']}: val F-score {best['fscore']:.4f}, AP {best['ap']:.4f} -> {record['onnx']}")


def import_extra(module: str, extras: str = "train", purpose: str = "training"):
    """aivd.MODULE, or a clear exit naming the extras to install when its dependencies are missing."""
    import importlib

    try:
        return importlib.import_module(f"aivd.{module}")
    except ImportError as error:
        names = " and ".join(f"'{name}'" for name in extras.split(","))
        plural = "s" if "," in extras else ""
        raise fail(f"{purpose} needs the {names} extra{plural} (pip install 'aivd[{extras}]'): {error}") from None


def _training_module(name: str):
    """aivd.training.NAME, or a clear exit when the 'train' extra (torch) is not installed."""
    return import_extra(f"training.{name}")


def _print_trained(record: dict, out: Path, result: str) -> None:
    console.print(f"best epoch {record['best']['epoch']}: crop accuracy {record['best']['accuracy']:.4f}; {result} -> {out}", highlight=False)


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
    annotate: bool = typer.Option(True, help="Include writing annotated images, as `aivd inspect` does by default."),
    repeat: int = typer.Option(1, min=1, help="Passes over the images."),
    edge_only: bool = EDGE_ONLY,
    cloud: Optional[str] = CLOUD_URL,
) -> None:
    """Inspection speed end to end at batch 1 (decode, pre/post-processing, edge and cloud models), and peak memory."""
    from aivd.bench.inspect_speed import bench_inspect
    from aivd.pipeline.inputs import tasks_from_deeppcb

    tasks = tasks_from_deeppcb(resolve_deeppcb(deeppcb), split)[:limit]
    pipeline = _load_pipeline(model, None, edge_only, cloud, pixels_per_mm=DEEPPCB_PIXELS_PER_MM)
    print(json.dumps(bench_inspect(tasks, pipeline, annotate, repeat=repeat)))


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
        settings = OnlineSettings(workdir or Path(temporary), training.EdgeUpdateConfig(detector_steps=update_steps, seed=seed),
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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
