"""What the commands that build an inspection pipeline share: the DeepPCB root, the detector, model-pack and cloud
options, and `load_pipeline`, which turns them into an `EdgeCloudPipeline` or a one-line exit."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple, Optional

import typer

from aivd.cli.ui import console, fail, fail_each_line, shown
from aivd.core.regions import PIXELS_PER_MM_RANGE

DEEPPCB_HELP = "DeepPCB root (the folder holding PCBData/); default: $AIVD_DEEPPCB_ROOT or ../shared/data/deeppcb."


def resolve_deeppcb(root: Optional[Path]) -> Path:
    from aivd.data.deeppcb import default_root

    root = root or default_root()
    if root is None:
        raise fail("no DeepPCB root: pass --deeppcb ROOT or set AIVD_DEEPPCB_ROOT")
    return root


def load_detector(model: Optional[Path], min_confidence: Optional[float]):
    """An ONNX file, a model store's served version (followed as it changes: `aivd models promote`), or with no
    `model` the built-in template-aware detector."""
    from aivd.config import ConfigError
    from aivd.edge.detector import load_detector as builtin_detector
    from aivd.pipeline.factory import model_detector

    try:
        return builtin_detector(None, min_confidence) if model is None else model_detector(model, min_confidence)
    except ConfigError as error:
        raise fail(str(error)) from None


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


CLOUD_BACKEND = typer.Option(None, "--cloud-backend", help="The cloud analyzer in this process: builtin (the default), openai (an OpenAI-compatible server) or transformers (a local model); see docs/llm.md.")
LLM_CONFIG = typer.Option(None, "--llm-config", help="YAML settings of the openai backend (base_url, model, api_key_env, timeout_s, max_retries, concurrency, prompt, structured_output, ...).")
LLM_BASE_URL = typer.Option(None, "--llm-base-url", help="openai backend: the server's API root, e.g. http://localhost:8000/v1.")
LLM_MODEL = typer.Option(None, "--llm-model", help="openai: the model name the server knows (a vLLM LoRA module selects the adapter); transformers: a model folder or Hub id.")
LLM_ADAPTER = typer.Option(None, "--llm-adapter", help="transformers backend: a LoRA adapter folder from `aivd finetune train`.")
LLM_PROMPT = typer.Option(None, "--llm-prompt", help="Prompt version (v1, ...) or prompt YAML; use the one the adapter was trained with. Default: the newest.")


CONFIG = typer.Option(
    None, "--config", "-c", help="A pipeline config YAML (`aivd config show` prints the effective one; docs/schema/pipeline_config.schema.json). "
                                 "Options given on the command line override its keys.")
METRICS_PORT = typer.Option(
    None, "--metrics-port", min=0, max=65535, metavar="PORT",
    help="Serve Prometheus metrics on 127.0.0.1:PORT while the run lasts: offload ratio, cloud disagreement, drift, the model "
         "served, online updates (docs/collab.md).")
SET = typer.Option(
    None, "--set", metavar="KEY=VALUE", help="Override any config key, e.g. --set offload.filter.name=margin (VALUE is read as YAML). Repeatable.")
OFFLOAD_BUDGET = typer.Option(
    None, "--offload-budget", min=0.0, max=1.0, help="Share of candidate regions sent to the cloud (the hardest first, held over a "
                                                     "sliding window); 1 sends all, 0 none. Default: the config's, else 1.")
AUGMENT = typer.Option(
    None, "--augment/--no-augment", show_default=False,
    help="Test-time augmentation: the detector sees each image in its eight rotations and mirror images, at the threshold "
         "calibrated for it; more accurate, about six times slower. Default: the config's, else no.")
OFFLOAD_FILTER = typer.Option(None, "--offload-filter", help="Hard-example filter ranking the regions: threshold, margin, cross_entropy, ibt, random.")


def set_overrides(assignments: Optional[list[str]]) -> dict:
    """`--set a.b=v` as nested overrides; v is parsed as YAML (safely), so numbers and booleans keep their type."""
    import yaml

    from aivd.config import dotted
    from aivd.config.pipeline import merged

    overrides: dict = {}
    for assignment in assignments or []:
        key, equals, text = assignment.partition("=")
        if not equals or not key.strip():
            raise fail(f"--set {assignment}: expected KEY=VALUE, e.g. --set offload.budget=0.3")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        overrides = merged(overrides, dotted(key.strip(), value))
    return overrides


def flag_overrides(
    model: Optional[Path] = None, min_confidence: Optional[float] = None, edge_only: bool = False, cloud: Optional[str] = None,
    classifier: Optional[Path] = None, knowledge: Optional[Path] = None, proposal: Optional[float] = None,
    pixels_per_mm: Optional[float] = None, backend: Optional[CloudBackend] = None, llm: LLMOptions = LLMOptions(),
    pack: Optional[Path] = None, tile_size: Optional[int] = None, offload_budget: Optional[float] = None,
    offload_filter: Optional[str] = None, augment: Optional[bool] = None,
) -> dict:
    """The config keys the pipeline options set; an option left out sets nothing, so a config file's value stands.
    Options that contradict each other get a one-line exit naming them."""
    if pack is not None and model is not None:
        raise fail("give --pack or --model, not both: a pack brings its own detectors")
    chosen = [name for name, given in (("--edge-only", edge_only), ("--cloud", cloud), ("--cloud-backend", backend)) if given]
    if len(chosen) > 1:
        raise fail(f"{' and '.join(chosen)} each choose the cloud tier: give one")
    if backend not in (None, CloudBackend.builtin) and classifier:
        raise fail(f"--cloud-backend {backend.value} runs an LLM: --classifier is for the builtin backend")
    edge = {"model": model, "min_confidence": min_confidence, "tile_size": tile_size, "pack": None if pack is None else str(pack),
            "augment": augment}
    cloud_tier: dict[str, Any] = {"classifier": classifier, "knowledge": knowledge, "proposal_threshold": proposal,
                  "llm": {name: value for name, value in llm._asdict().items() if value is not None}}
    if edge_only:
        cloud_tier["backend"] = "none"
    elif cloud:
        cloud_tier.update(backend="http", url=cloud)
    elif backend is not None:
        cloud_tier["backend"] = backend.value
    offload = {"budget": offload_budget, "filter": None if offload_filter is None else {"name": offload_filter}}
    sections: dict[str, dict[str, Any]] = {"edge": edge, "cloud": cloud_tier, "offload": offload, "imaging": {"pixels_per_mm": pixels_per_mm}}
    return {section: given for section, values in sections.items() if (given := _given(values))}


def _given(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None and value != {}}


def pipeline_config(config_file: Optional[Path] = None, overrides: Optional[dict] = None):
    """The effective `PipelineConfig`: the file's (or the defaults), with the options' keys laid over it."""
    from aivd.config import ConfigError, build_config

    try:
        return build_config(config_file, overrides)
    except ConfigError as error:
        raise fail_each_line(str(error)) from None


def built_pipeline(config, pixels_per_mm: Optional[float] = None):
    """The factory's pipeline for `config`, or a one-line exit saying which setting cannot be built and why."""
    from aivd.config import ConfigError
    from aivd.pipeline.factory import build_pipeline

    try:
        return build_pipeline(config, pixels_per_mm)
    except ConfigError as error:
        raise fail(str(error)) from None


def load_pipeline(
    model: Optional[Path], min_confidence: Optional[float], edge_only: bool, cloud: Optional[str] = None,
    classifier: Optional[Path] = None, knowledge: Optional[Path] = None, proposal: Optional[float] = None,
    pixels_per_mm: Optional[float] = None, backend: Optional[CloudBackend] = None, llm: LLMOptions = LLMOptions(),
    pack: Optional[Path] = None, tile_size: Optional[int] = None, augment: Optional[bool] = None,
):
    """The pipeline these options describe, built by the one factory every command uses (problems exit with one line).

    `pixels_per_mm` is the default imaging scale of the input (DeepPCB's 48) where the pack sets none."""
    overrides = flag_overrides(model, min_confidence, edge_only, cloud, classifier, knowledge, proposal, None, backend, llm, pack, tile_size,
                               augment=augment)
    return built_pipeline(pipeline_config(None, overrides), pixels_per_mm)


PACK = typer.Option(None, "--pack", help="A model pack folder (from `aivd train pack`), or 'builtin' for the shipped DeepPCB pack.")


def data_split(data: Path, split: str):
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

