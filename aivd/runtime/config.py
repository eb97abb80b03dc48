"""`cluster.yaml` as data: edge node classes, replica counts, the routing policy and its weights, the cloud tier.

Every value is validated with pydantic; `load_cluster_config` turns any problem into one `ConfigError` that
names the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aivd.config import (
    ConfigError,  # one error for every unusable setting, whatever its file
    PipelineConfig,
    build_config,
)
from aivd.config.pipeline import problems_of
from aivd.data.yaml_files import read_yaml_mapping
from aivd.scheduling import POLICIES, AivdConfig
from aivd.sim.scenarios import LinkProfile

# Ray's own router (power of two choices on probed queue lengths), selectable beside ours.
RAY_DEFAULT_ROUTER = "ray"
# Keys cluster.yaml had before it took a pipeline: where they went.
MOVED = {"pack": "pipeline.edge.pack", "model_store": "pipeline.edge.model", "model_poll_s": "pipeline.edge.model_poll_s",
         "pixels_per_mm": "pipeline.imaging.pixels_per_mm"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EdgeNodeClass(Strict):
    """A kind of edge node. On real machines its replicas run on nodes that offer `resources`; on one machine
    `slowdown` and `link` emulate the device and its network inside the replica."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    replicas: int = Field(1, ge=1, le=256)
    slowdown: float = Field(1.0, ge=1.0, le=1000.0, description="the replica's measured service times x this")
    service_s: float | None = Field(
        None, gt=0.0, le=3600.0, description="emulated device service time (mean): a service lasts at least one "
        "lognormal draw of it, as in the simulator")
    service_cv: float = Field(0.0, ge=0.0, le=10.0, description="coefficient of variation of those draws")
    link: LinkProfile | None = Field(None, description="emulated link from the ingress: bandwidth, latency, jitter")


class CloudTier(Strict):
    """The cloud deployment's size and batching; what it runs is `pipeline.cloud`."""

    replicas: int = Field(1, ge=1, le=64)
    max_batch_size: int = Field(16, ge=1, le=512)
    batch_wait_s: float = Field(0.01, ge=0.0, le=5.0)
    timeout_s: float = Field(30.0, gt=0.0, description="an edge replica gives up on the cloud after this")


class ClusterConfig(Strict):
    edge: list[EdgeNodeClass] = Field(min_length=1)
    policy: str = Field("aivd", description=f"one of aivd's policies or '{RAY_DEFAULT_ROUTER}' for Ray Serve's own router")
    weights: AivdConfig | None = Field(None, description="weights of the aivd score the policy names (aivd or aivd-paper); "
                                       "default: that policy's own")
    cloud: CloudTier = CloudTier()
    max_ongoing_requests: int = Field(4, ge=1, le=1024, description="per edge replica; more wait at the router")
    routing_stats_period_s: float = Field(0.5, gt=0.0, le=60.0, description="how often replicas report their state")
    retries: int = Field(3, ge=0, le=20, description="times the ingress resends a request whose edge replica died")
    request_timeout_s: float = Field(60.0, gt=0.0)
    edge_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray resources each edge replica needs, to place it on edge nodes")
    cloud_resources: dict[str, float] = Field(default_factory=dict)
    ingress_resources: dict[str, float] = Field(default_factory=dict)
    updater_resources: dict[str, float] = Field(
        default_factory=dict, description="with pipeline.update.enabled: Ray resources the updater deployment needs (it trains)")
    pipeline: PipelineConfig = Field(
        PipelineConfig(), description="the pipeline every replica runs, as `aivd inspect --config` takes it: a mapping, or the "
        "path of its YAML file (relative to cluster.yaml). Its files (pack, model, model store, LLM config) must be readable "
        "by every replica, on a shared file system across machines")
    health_check_period_s: float = Field(10.0, gt=0.0, le=3600.0, description="how often Serve calls each replica's check_health")
    health_check_timeout_s: float = Field(30.0, gt=0.0, le=3600.0, description="a check_health taking longer fails")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    keys_db: str | None = Field(
        None, description="SQLAlchemy URL of the result database holding API keys (`aivd keys create`): once it has one, "
        "every endpoint but /healthz needs `Authorization: Bearer KEY`. The ingress replica opens it: on several machines, "
        "PostgreSQL or a file on the ingress's node")
    reviews_db: str | None = Field(
        None, description="SQLAlchemy URL of the result database whose human reviews (the console's, `aivd serve console "
        "--db`) the updater learns from, with pipeline.update.enabled and pipeline.update.reviews (as a live run learns "
        "from its own database's). The updater's replica opens it: on several machines, PostgreSQL or a file on its node")
    seed: int = 0
    link_clock_start_unix: float | None = Field(
        None, description="wall-clock time (Unix seconds) at which every replica's emulated link trace starts; default: "
        "when the replica starts. `aivd bench cluster` sets it to when its load starts, so that every run of a repeat "
        "meets the same link conditions at the same point of its arrivals")
    placement: Literal["rank", "resources"] = Field(
        "rank", description="how a replica finds its node class: by replica rank in the order of `edge`, or by "
        "a resource `aivd_class_<name>` on its Ray node")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value != RAY_DEFAULT_ROUTER and value not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; known: {', '.join([*POLICIES, RAY_DEFAULT_ROUTER])}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        moved = [f"{key}: now {MOVED[key]}" for key in MOVED if isinstance(data, dict) and key in data]
        if isinstance(data, dict) and isinstance(data.get("cloud"), dict) and "enabled" in data["cloud"]:
            moved.append("cloud.enabled: now pipeline.cloud.backend (none: edge only)")
        if moved:
            raise ValueError(f"moved into the pipeline section (docs/runtime.md): {'; '.join(moved)}")
        return data

    @field_validator("pipeline", mode="before")
    @classmethod
    def _pipeline_file(cls, value):
        """A path names the pipeline's YAML file, read as `aivd inspect --config` reads it."""
        return build_config(Path(value)) if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _reviews_need_learning(self) -> ClusterConfig:
        if self.reviews_db is not None and not (self.pipeline.update.enabled and self.pipeline.update.reviews):
            raise ValueError("reviews_db: the updater learns from reviews only with pipeline.update.enabled and pipeline.update.reviews")
        return self

    @field_validator("edge")
    @classmethod
    def _unique_names(cls, value: list[EdgeNodeClass]) -> list[EdgeNodeClass]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError(f"edge node class names must be unique, got {names}")
        return value

    @property
    def edge_replicas(self) -> int:
        return sum(c.replicas for c in self.edge)

    def class_for_rank(self, rank: int) -> EdgeNodeClass:
        """Replicas 0..n-1 fill the classes in order: the first class's replicas, then the next class's."""
        rank %= self.edge_replicas
        for node_class in self.edge:
            if rank < node_class.replicas:
                return node_class
            rank -= node_class.replicas
        raise AssertionError("unreachable")

    def class_named(self, name: str) -> EdgeNodeClass:
        return next(c for c in self.edge if c.name == name)


def load_cluster_config(path: str | Path) -> ClusterConfig:
    path = Path(path)
    data = read_yaml_mapping(path, ConfigError)
    if isinstance(data.get("pipeline"), str):  # relative to the cluster file, wherever aivd serve is started
        data["pipeline"] = path.parent / data["pipeline"]
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: {'; '.join(problems_of(error))}") from None
