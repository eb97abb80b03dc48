"""`PipelineConfig`: everything that decides what one inspection pipeline is, as data.

One YAML file (or the defaults plus command-line flags) describes the edge model, the cloud tier, which regions
are offloaded to it, how the edge learns online, what a run writes and the imaging scale. `aivd inspect --config`,
`aivd watch`, `aivd bench collab` and the Ray runtime all build their pipeline from it through one factory
(`aivd.pipeline.factory`), so a setting means the same thing everywhere. `aivd schema` publishes its JSON Schema
and `aivd config check FILE` validates a file with one line per problem.

Only plain data lives here: validating a value never loads a model, so a config can be checked on a machine
that cannot run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aivd.collab.drift_monitor import TriggerConfig
from aivd.collab.hard_examples import FILTERS, FilterConfig, make_filter
from aivd.core.errors import AivdError
from aivd.core.redaction import redact_url
from aivd.core.regions import PIXELS_PER_MM_RANGE
from aivd.data.templates import TemplateMode
from aivd.data.yaml_files import read_yaml_mapping


class ConfigError(AivdError, ValueError):
    """A pipeline config that cannot be used; the message names the file (or option) and every problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EdgeConfig(_Section):
    pack: str | None = Field(
        None, description="a model pack folder (`aivd train pack`) or 'builtin'. Default, when `model` is not set either: "
                          "'builtin', the shipped DeepPCB pack")
    model: Path | None = Field(
        None, description="instead of a pack: an ONNX detector (an aivd model or an Ultralytics YOLO export), or a model-store "
                          "folder whose served version is followed")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0, description="the edge's score threshold; default: the model's calibrated one")
    tile_size: int | None = Field(
        None, ge=0, description="detect images longer than 1.5 tiles in overlapping tiles of this many px; default: 640 for the "
                                "built-in models, none for `model`; 0: never tile")
    templates: TemplateMode = Field(TemplateMode.auto, description="auto: NAME_temp beside NAME_test; require: missing is an error; none: ignore")
    template: Path | None = Field(None, description="one aligned template for every image")
    model_poll_s: float = Field(5.0, gt=0.0, description="a model store as `model`: how often the edge looks for a newly promoted version")
    augment: bool = Field(
        False, description="test-time augmentation: the built-in kind of detector sees each image in its eight rotations and mirror "
                           "images, with the threshold calibrated for it; more accurate, about six times slower (docs/edge.md)")
    batch: int = Field(
        1, ge=1, le=64, description="the most images, already decoded and waiting, that the edge detects in one model run "
                                    "(and whose boxes its refiner takes in one run); 1: one image at a time")
    batch_wait_ms: float = Field(
        0.0, ge=0.0, le=1000.0, description="how long the edge may wait for more images to fill a batch; 0: never wait, "
                                            "batch only what is already waiting")

    @model_validator(mode="after")
    def _one_source(self) -> EdgeConfig:
        if self.pack is not None and self.model is not None:
            raise ValueError("give edge.pack or edge.model, not both: a pack brings its own detectors")
        return self


CloudBackendName = Literal["none", "builtin", "http", "openai", "transformers"]


class LLMConfig(_Section):
    """A multimodal LLM as the cloud tier (docs/llm.md)."""

    config: Path | None = Field(None, description="openai: YAML settings (base_url, model, api_key_env, timeout_s, ...)")
    base_url: str | None = Field(None, description="openai: the server's API root, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="openai: the model name the server knows; transformers: a model folder or Hub id")
    adapter: Path | None = Field(None, description="transformers: a LoRA adapter folder from `aivd finetune train`")
    prompt: str | None = Field(None, description="prompt version (v1, ...) or prompt YAML; default: the newest")

    def given(self) -> list[str]:
        return [name for name, value in self if value is not None]


class CloudConfig(_Section):
    backend: CloudBackendName = Field(
        "builtin", description="none: edge only; builtin: the ONNX crop classifier in this process; http: an `aivd serve cloud` "
                               "service at `url`; openai: an OpenAI-compatible server; transformers: a local Hugging Face model")
    url: str | None = Field(None, description="http: the service's URL")
    classifier: Path | None = Field(None, description="builtin: a crop-classifier ONNX (`aivd train classifier`); default: the pack's")
    knowledge: Path | None = Field(None, description="defect knowledge-base YAML (`aivd kb init`); default: the pack's")
    proposal_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="edge score from which candidates may go to the cloud; default: the classifier's calibrated one")
    batch: int = Field(
        1, ge=1, le=64, description="builtin (and other in-process backends): the most images waiting for the cloud whose "
                                    "regions are analysed in one call (one classifier run); 1: one image at a time")
    llm: LLMConfig = LLMConfig()

    @model_validator(mode="after")
    def _settings_fit_the_backend(self) -> CloudConfig:
        problems = []
        # Each key is named with the option that sets it on the command line, where they differ.
        if (self.url is None) == (self.backend == "http"):
            problems.append("cloud.url (--cloud) is for backend http, which needs it")
        if self.classifier is not None and self.backend != "builtin":
            problems.append("cloud.classifier (--classifier) is for backend builtin")
        given = self.llm.given()
        if self.backend not in ("openai", "transformers") and given:
            keys = ", ".join(f"cloud.llm.{key} (--llm-{key.replace('_', '-')})" for key in given)
            problems.append(f"{keys}: for backend openai or transformers (--cloud-backend)")
        if self.backend == "openai" and self.llm.adapter is not None:
            problems.append("cloud.llm.adapter (--llm-adapter) is for backend transformers; an OpenAI-compatible server picks the "
                            "adapter by model name (vLLM: --llm-model NAME of --lora-modules NAME=PATH)")
        if self.backend == "openai" and self.llm.config is None and (self.llm.base_url is None or self.llm.model is None):
            problems.append("backend openai needs cloud.llm.base_url and cloud.llm.model (--llm-base-url, --llm-model), "
                            "or cloud.llm.config (--llm-config FILE)")
        if self.backend == "transformers":
            if self.llm.config is not None or self.llm.base_url is not None:
                problems.append("cloud.llm.config and cloud.llm.base_url (--llm-config, --llm-base-url) are for backend openai")
            if self.llm.model is None:
                problems.append("backend transformers needs cloud.llm.model (--llm-model: a model folder or Hub id)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class OffloadConfig(_Section):
    """Which of the edge's candidate regions go to the cloud (Sedna's hard-example mining)."""

    filter: FilterConfig = Field(FilterConfig(), description=f"the hard-example filter: one of {', '.join(FILTERS)}, with its params")
    budget: float = Field(
        1.0, ge=0.0, le=1.0, description="the share of candidate regions sent to the cloud, held over a sliding window "
                                         "(the filter's cutoff follows it); 1: every region, 0: none (the edge decides)")
    target_accuracy: float | None = Field(
        None, gt=0.0, lt=1.0, description="instead of a budget: send as much as it takes for the edge's decisions near the "
                                          "cutoff to agree with the cloud's at this rate")
    window: int = Field(2000, ge=1, description="budget: the recent regions whose uncertainties place the cutoff")
    warmup: int = Field(50, ge=1, description="budget: regions seen before the cutoff first moves")
    seed: int = Field(0, description="for the random filter and the accuracy target's audit samples")

    @model_validator(mode="after")
    def _budget_or_target(self) -> OffloadConfig:
        if self.target_accuracy is not None and self.budget != 1.0:
            raise ValueError("give offload.budget or offload.target_accuracy, not both")
        make_filter(self.filter)  # an unknown filter or parameter is this section's problem, found before any run
        return self


class LearnerConfig(_Section):
    """What one online update trains, and how (`aivd.training.online_update`)."""

    # Chosen on a drifting trainval stream (docs/BENCHMARKS.md): the refiner alone at 1e-3 recovered more of the
    # edge's F than with the detector fine-tuned too (200 steps: slower by minutes, and no better); 3e-3, the
    # first training's rate, wrecked the BatchNorm-folded refiner (validation F 0.5: rejected).
    detector_steps: int = Field(0, ge=0, description="detector fine-tuning steps; 0: the detector is kept as it is")
    detector_lr: float = Field(3e-4, gt=0.0)
    batch_size: int = Field(16, ge=1)
    refiner_epochs: int = Field(8, ge=1)
    refiner_lr: float = Field(1e-3, gt=0.0)
    recalibrate: bool = Field(False, description="choose a new score threshold on the validation images")
    # Set once, not tuned: a human label is the truth, a cloud label a guess that drift can spoil, and the reviewed
    # images are few (5% of the stream) against the up to 100 cloud-labelled ones of a window.
    review_weight: int = Field(4, ge=1, description="how many times each human-labelled image counts in an update's training")
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch threads the update trains with")


class UpdateConfig(_Section):
    """Online learning: the edge model learns from the cloud's answers when the line drifts."""

    enabled: bool = False
    model_store: Path | None = Field(
        None, description="the model store the edge serves from and updates publish to; seeded with the edge's model if empty")
    trigger: TriggerConfig = TriggerConfig()
    learner: LearnerConfig = LearnerConfig()
    train_window: int = Field(100, ge=2, description="the most recent hard images an update trains and validates on")
    min_gain: float = Field(
        0.0, ge=-1.0, le=1.0, description="an update is promoted only when its validation F exceeds its parent's by more "
                                          "than this: 0 keeps the parent on a tie (on a few validation images a tie says "
                                          "nothing); a small negative value (-1e-6) promotes on ties")
    reviews: bool = Field(True, description="also learn from the human reviews stored in the run's result database, "
                                            "above the cloud's labels (aivd.review.learning)")
    queue: int = Field(
        16, ge=1, description="inspected images waiting for the learner; when it is full an image is not observed (not "
                              "buffered, not counted by the trigger or the drift monitor), so inspection never waits")
    isolation: Literal["process", "thread"] = Field(
        "process", description="where an update trains: a separate process at a lower priority (inspection keeps its "
                               "speed: docs/BENCHMARKS.md) or a thread of the inspecting one (less memory, no start-up)")
    wait_for_updates: bool = Field(
        False, description="inspect one image at a time and wait while an update trains, so that a run is reproducible "
                           "(the same updates at the same images as `aivd bench collab --update`); slower")

    @model_validator(mode="after")
    def _store_when_enabled(self) -> UpdateConfig:
        if self.enabled and self.model_store is None:
            raise ValueError("update.enabled needs update.model_store: the folder updates are published to")
        return self


class OutputsConfig(_Section):
    database: str | None = Field(
        None, description="SQLAlchemy URL of the result database, e.g. postgresql+psycopg://...; default: OUT/aivd.sqlite")
    report: bool = Field(True, description="write OUT/report.html")
    annotate: bool = Field(True, description="write annotated images to OUT/annotated/")


class ImagingConfig(_Section):
    pixels_per_mm: float | None = Field(
        None, ge=PIXELS_PER_MM_RANGE[0], le=PIXELS_PER_MM_RANGE[1],
        description="imaging scale for sizes in mm; default: the pack's (48 for DeepPCB), else unknown")


class PipelineConfig(_Section):
    """One inspection pipeline: edge -> hard-example decision -> cloud -> one merge, and what learns and is written."""

    edge: EdgeConfig = EdgeConfig()
    cloud: CloudConfig = CloudConfig()
    offload: OffloadConfig = OffloadConfig()
    update: UpdateConfig = UpdateConfig()
    outputs: OutputsConfig = OutputsConfig()
    imaging: ImagingConfig = ImagingConfig()

    @model_validator(mode="after")
    def _learning_needs_a_cloud(self) -> PipelineConfig:
        if self.update.enabled and self.cloud.backend == "none":
            raise ValueError("update.enabled needs a cloud tier (cloud.backend other than none): the edge learns from its answers")
        return self

    def shown(self) -> dict[str, Any]:
        """The config as JSON-able data with every URL's password hidden: what `aivd config show` prints and runs store."""
        data = self.model_dump(mode="json")
        for section, key in (("cloud", "url"), ("outputs", "database")):
            if data[section][key]:
                data[section][key] = redact_url(data[section][key])
        if data["cloud"]["llm"]["base_url"]:
            data["cloud"]["llm"]["base_url"] = redact_url(data["cloud"]["llm"]["base_url"])
        return data


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` laid over it, key by key at every level."""
    result = dict(base)
    for key, value in overrides.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def dotted(key: str, value: Any) -> dict:
    """`{"a": {"b": value}}` for the key "a.b"."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def problems_of(error: ValidationError) -> list[str]:
    """One line per problem pydantic found: `section.key: message`."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        # A check across sections (no location) names its keys itself.
        lines.append(message if not where or message.startswith(where.split(".")[0] + ".") else f"{where}: {message}")
    return lines


# Keys whose values are files or folders. In a config file a relative one is relative to the file's folder, so a
# config and the models beside it can be moved together; on the command line, to the working folder.
PATH_KEYS = (("edge", "pack"), ("edge", "model"), ("edge", "template"), ("cloud", "classifier"), ("cloud", "knowledge"),
             ("cloud", "llm", "config"), ("cloud", "llm", "adapter"), ("update", "model_store"))


def _anchored(data: dict, folder: Path) -> dict:
    data = merged(data, {})
    for *sections, key in PATH_KEYS:
        parent: dict | None = data
        for section in sections:
            parent = parent.get(section) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        value = parent.get(key)
        if isinstance(value, str) and value != "builtin" and not Path(value).is_absolute():
            parent[key] = str(folder / value)
    return data


def build_config(file: Path | None = None, overrides: dict | None = None) -> PipelineConfig:
    """The config in `file` (the defaults without one), with `overrides` (nested keys, e.g. from command-line flags)
    laid over it. Raises `ConfigError` listing every problem, each on its own line, naming the file."""
    data = {}
    if file is not None:
        data = _anchored(read_yaml_mapping(file, ConfigError, example="edge: {pack: builtin}"), Path(file).parent)
    data = merged(data, overrides or {})
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        where = str(file) if file is not None else "pipeline config"
        raise ConfigError("\n".join(f"{where}: {line}" for line in problems_of(error))) from None
