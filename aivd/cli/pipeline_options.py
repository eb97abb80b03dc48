"""What the commands that build an inspection pipeline share: the DeepPCB root, the detector, model-pack and cloud
options, and `load_pipeline`, which turns them into an `EdgeCloudPipeline` or a one-line exit."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import NamedTuple, Optional

import typer

from aivd.cli.ui import console, fail, shown
from aivd.core.regions import PIXELS_PER_MM_RANGE

DEEPPCB_HELP = "DeepPCB root (the folder holding PCBData/); default: $AIVD_DEEPPCB_ROOT or ../shared/data/deeppcb."


def resolve_deeppcb(root: Optional[Path]) -> Path:
    from aivd.data.deeppcb import default_root

    root = root or default_root()
    if root is None:
        raise fail("no DeepPCB root: pass --deeppcb ROOT or set AIVD_DEEPPCB_ROOT")
    return root


def load_detector(model: Optional[Path], min_confidence: Optional[float]):
    """An ONNX file, or a model store's served version (followed as it changes: `aivd models promote`)."""
    from aivd.edge.detector import ModelError
    from aivd.edge.detector import load_detector as load_onnx_detector
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
        return load_onnx_detector(model, min_confidence)
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


def load_pipeline(
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

        detector = _tiled(load_detector(model, min_confidence), model, tile_size)
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

