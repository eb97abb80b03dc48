"""The one place a `PipelineConfig` becomes a running pipeline: for the CLI, `aivd watch`, the benchmarks and the
Ray runtime alike. Every problem is a `ConfigError` (an `AivdError`) that says which setting is wrong and why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aivd.cloud.analyzer import Analyzer
from aivd.collab.hard_examples import make_filter
from aivd.collab.offload import BudgetController, KeepAtEdge, MarginalErrorController, Offloader, SendAll
from aivd.config import CloudConfig, ConfigError, EdgeConfig, OffloadConfig, PipelineConfig, UpdateConfig
from aivd.edge.detector import Detector
from aivd.pipeline.engine import Batching, EdgeCloudPipeline

if TYPE_CHECKING:
    from aivd.packs import ModelPack

BUILTIN = "builtin"


def build_pipeline(config: PipelineConfig, pixels_per_mm: float | None = None, *, threads: int = 2,
                   cloud: Analyzer | None = None) -> EdgeCloudPipeline:
    """The pipeline `config` describes. `pixels_per_mm` is the caller's default imaging scale (DeepPCB input knows
    its own) where neither the config nor the pack sets one; `threads` the edge model's ONNX threads. `cloud` is the
    cloud tier when the caller reaches it some other way (a Ray edge replica: a handle on the cloud deployment,
    which built `config.cloud`'s backend); by default it is built here."""
    detector, pack = build_detector(config.edge, threads)
    if config.update.enabled:
        detector = following_update_store(config.update, config.edge, detector, threads)
    scale = config.imaging.pixels_per_mm
    if scale is None:
        scale = pack.pixels_per_mm if pack is not None and pack.pixels_per_mm is not None else pixels_per_mm
    analyzer = cloud if cloud is not None else build_analyzer(config.cloud, list(detector.labels.names), pack)
    batching = Batching(config.edge.batch, config.edge.batch_wait_ms, config.cloud.batch)
    return EdgeCloudPipeline(detector, analyzer, config.cloud.proposal_threshold, scale, build_offloader(config.offload), batching=batching)


def load_pack(name: str) -> ModelPack:
    """The model pack in folder `name` ('builtin': the shipped DeepPCB pack)."""
    from aivd.packs import PackError, builtin_pack
    from aivd.packs import load_pack as load_folder

    try:
        return builtin_pack() if name == BUILTIN else load_folder(name)
    except PackError as error:
        raise ConfigError(str(error)) from None


def build_detector(edge: EdgeConfig, threads: int = 2) -> tuple[Detector, ModelPack | None]:
    """The edge detector with `threads` ONNX threads, and the model pack it came from (None for `edge.model`)."""
    from aivd.edge.detector import ModelError
    from aivd.model_store import ModelStoreError
    from aivd.packs import PackError

    try:
        if edge.model is None:
            pack = load_pack(edge.pack or BUILTIN)
            try:
                return pack.load_detector(edge.min_confidence, threads, edge.tile_size, edge.augment), pack
            except ValueError as error:  # what TiledDetector says of a tile size it cannot use
                if isinstance(error, (ModelError, PackError)):
                    raise
                raise ConfigError(f"edge.tile_size (--tile-size): {error}") from None
        return _tiled(_model_detector(edge, threads), edge.tile_size), None
    except (ModelError, ModelStoreError, PackError) as error:
        raise ConfigError(str(error)) from None


def following_update_store(update: UpdateConfig, edge: EdgeConfig, detector: Detector, threads: int = 2) -> Detector:
    """With online learning on, the edge serves the update store's CURRENT version, and is seeded with `detector`'s
    model (a pack's template-aware one) when the store is empty, as `aivd bench collab --update` does; tiled as
    `detector` was. It polls the store every `edge.model_poll_s`, or before every image when a run waits for its
    updates."""
    from aivd.edge.detector import TemplateDetector
    from aivd.edge.hot_swap import HotSwapDetector
    from aivd.model_store import ModelStore, ModelStoreError

    if edge.min_confidence is not None:
        raise ConfigError("edge.min_confidence does not apply with update.enabled: each version in the store carries its threshold")
    if edge.augment:
        raise ConfigError("edge.augment does not apply with update.enabled: the versions an update trains are not calibrated for it")
    model, tile_size = served_model(detector)
    assert update.model_store is not None  # UpdateConfig requires one when enabled
    try:
        store = ModelStore(update.model_store)
    except OSError as error:
        raise ConfigError(f"update.model_store {update.model_store}: cannot use as a model store ({error.strerror or error})") from None
    try:
        if store.current() is None:
            if not isinstance(model, TemplateDetector):
                raise ConfigError(f"update.enabled: the online update trains aivd's built-in detector, not {model.name}")
            companions = [model.refiner_path] if model.refiner_path else []
            store.promote(store.publish(model.path, companions, metrics={"source": str(model.path)}), "the edge's model before updates")
        following = HotSwapDetector(store, 0.0 if update.wait_for_updates else edge.model_poll_s, threads)
    except ModelStoreError as error:
        raise ConfigError(f"update.model_store: {error}") from None
    return _tiled(following, tile_size)


def served_model(detector: Detector, tile_size: int | None = None) -> tuple[Detector, int | None]:
    """The one model behind the pack, tiling and store wrappers (what an update starts from), and its tile size."""
    from aivd.edge.hot_swap import HotSwapDetector
    from aivd.edge.tiling import TiledDetector
    from aivd.packs.pack import PackDetector

    if isinstance(detector, TiledDetector):
        return served_model(detector.detector, detector.tile_size)
    if isinstance(detector, PackDetector):
        return served_model(detector.template_aware or detector.image_only, tile_size)
    if isinstance(detector, HotSwapDetector):
        return detector.detector, tile_size
    return detector, tile_size


def model_detector(model: Path, min_confidence: float | None) -> Detector:
    """An ONNX file, or a model store's served version (followed as it changes: `aivd models promote`)."""
    from aivd.edge.detector import ModelError
    from aivd.model_store import ModelStoreError

    try:
        return _model_detector(EdgeConfig(model=model, min_confidence=min_confidence), threads=2)
    except (ModelError, ModelStoreError) as error:
        raise ConfigError(str(error)) from None


def _model_detector(edge: EdgeConfig, threads: int) -> Detector:
    from aivd.edge.detector import load_detector

    model, min_confidence = edge.model, edge.min_confidence
    assert model is not None  # callers come here only with edge.model set
    if model.is_dir():
        from aivd.edge.hot_swap import HotSwapDetector
        from aivd.model_store import ModelStore

        if not (model / "versions").is_dir():
            raise ConfigError(f"{model}: a folder, but not a model store (no versions/ folder); give an ONNX file or a store")
        if min_confidence is not None:
            raise ConfigError("edge.min_confidence does not apply to a model store: each version carries its threshold")
        if edge.augment:
            raise ConfigError("edge.augment does not apply to a model store: its versions are not calibrated for it")
        return HotSwapDetector(ModelStore(model), edge.model_poll_s, threads)
    return load_detector(model, min_confidence, threads, edge.augment)


def edge_classes(edge: EdgeConfig) -> tuple[list[str], ModelPack | None]:
    """The class names the edge detects and its pack (None for `edge.model`): what the cloud tier needs of the edge.
    A pack's names are in its manifest; only a given model is loaded to read them."""
    if edge.model is None:
        pack = load_pack(edge.pack or BUILTIN)
        return list(pack.labels.names), pack
    detector, _ = build_detector(edge, threads=1)
    return list(detector.labels.names), None


def _tiled(detector: Detector, tile_size: int | None) -> Detector:
    """A given model detects whole images unless `tile_size` says otherwise."""
    from aivd.edge.tiling import TiledDetector

    if not tile_size:
        return detector
    try:
        return TiledDetector(detector, tile_size)
    except ValueError as error:
        raise ConfigError(f"edge.tile_size (--tile-size): {error}") from None


def build_analyzer(cloud: CloudConfig, class_names: list[str], pack=None) -> Analyzer | None:
    """The cloud tier, or None for `backend: none`. A pack's classifier and knowledge base are the defaults."""
    from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeError
    from aivd.edge.detector import ModelError

    if cloud.backend == "none":
        return None
    knowledge = cloud.knowledge or (pack.knowledge if pack is not None else None) or DEFAULT_KNOWLEDGE
    try:
        if cloud.backend == "http":
            from aivd.cloud.http_client import HttpAnalyzer

            assert cloud.url is not None  # CloudConfig's validator requires a url for backend http
            try:
                return HttpAnalyzer(cloud.url)
            except ValueError as error:
                raise ConfigError(f"cloud.url: {error}") from None
        if cloud.backend == "openai":
            return _openai_analyzer(cloud, class_names, knowledge)
        if cloud.backend == "transformers":
            return _transformers_analyzer(cloud, knowledge)
        from aivd.cloud.builtin import BUILTIN_CLASSIFIER, BuiltinAnalyzer

        classifier = cloud.classifier or (pack.classifier if pack is not None else BUILTIN_CLASSIFIER)
        if classifier is None:
            raise ConfigError(f"pack {pack.name} has no cloud classifier: set cloud.backend to none, http or an LLM backend")
        pcb_facts = pack.pcb_facts if pack is not None else True
        # One thread: in-process, the analyzer runs beside the detector's two (inspect overlaps the tiers).
        return BuiltinAnalyzer(classifier, knowledge, threads=1, pcb_facts=pcb_facts)
    except (ModelError, KnowledgeError) as error:
        raise ConfigError(str(error)) from None


def _openai_analyzer(cloud: CloudConfig, class_names: list[str], knowledge) -> Analyzer:
    from aivd.cloud.knowledge import KnowledgeError
    from aivd.cloud.llm.openai_backend import OpenAIAnalyzer, OpenAIConfig
    from aivd.cloud.llm.prompts import PromptError

    llm = cloud.llm
    overrides = {"base_url": llm.base_url, "model": llm.model, "prompt": llm.prompt}
    try:
        if llm.config is not None:
            config = OpenAIConfig.load(llm.config, **overrides)
        else:
            config = OpenAIConfig.build({k: v for k, v in overrides.items() if v is not None}, "cloud.llm")
        return OpenAIAnalyzer(config, class_names, knowledge)
    except (PromptError, KnowledgeError) as error:
        raise ConfigError(str(error)) from None


def _transformers_analyzer(cloud: CloudConfig, knowledge) -> Analyzer:
    from aivd.cloud.knowledge import KnowledgeError

    llm = cloud.llm
    assert llm.model is not None  # CloudConfig's validator requires a model for backend transformers
    try:
        from aivd.cloud.llm.transformers_backend import TransformersAnalyzer
    except ImportError as error:
        raise ConfigError(f"the transformers backend cannot be loaded ({error}); install aivd's LLM extras (see docs/llm.md)") from None
    try:
        return TransformersAnalyzer(llm.model, llm.adapter, llm.prompt, knowledge=knowledge)
    except KnowledgeError as error:
        raise ConfigError(str(error)) from None
    except (OSError, ValueError) as error:  # a missing or unreadable model or adapter, a bad prompt
        raise ConfigError(f"cloud.llm.model (--llm-model) {llm.model}: {error}") from None


def build_offloader(offload: OffloadConfig) -> Offloader:
    """The offloading stage: every region at budget 1, none at budget 0, else the hard ones by the named filter."""
    params = dict(offload.filter.params)
    if offload.filter.name == "random":
        params.setdefault("seed", offload.seed)
    filter_ = make_filter(offload.filter.model_copy(update={"params": params}))
    if offload.target_accuracy is not None:
        return MarginalErrorController(filter_, target=offload.target_accuracy, seed=offload.seed)
    if offload.budget >= 1.0:
        return SendAll()
    if offload.budget <= 0.0:
        return KeepAtEdge()
    return BudgetController(filter_, budget=offload.budget, window=offload.window, warmup=offload.warmup)
