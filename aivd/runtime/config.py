"""`cluster.yaml` as data: edge node classes, replica counts, the routing policy and its weights, the cloud tier.

Every value is validated with pydantic; `load_cluster_config` turns any problem into one `ConfigError` that
names the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aivd.config import UpdateConfig
from aivd.core.errors import AivdError
from aivd.core.regions import PIXELS_PER_MM_RANGE
from aivd.data.yaml_files import read_yaml_mapping
from aivd.scheduling import POLICIES, AivdConfig
from aivd.sim.scenarios import LinkProfile

# Ray's own router (power of two choices on probed queue lengths), selectable beside ours.
RAY_DEFAULT_ROUTER = "ray"


class ConfigError(AivdError, ValueError):
    pass


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
    enabled: bool = Field(True, description="false: the edge's decisions are final (edge only)")
    replicas: int = Field(1, ge=1, le=64)
    max_batch_size: int = Field(16, ge=1, le=512)
    batch_wait_s: float = Field(0.01, ge=0.0, le=5.0)
    timeout_s: float = Field(30.0, gt=0.0, description="an edge replica gives up on the cloud after this")


class ClusterConfig(Strict):
    edge: list[EdgeNodeClass] = Field(min_length=1)
    policy: str = Field("aivd", description=f"one of aivd's policies or '{RAY_DEFAULT_ROUTER}' for Ray Serve's own router")
    weights: AivdConfig = AivdConfig()
    cloud: CloudTier = CloudTier()
    max_ongoing_requests: int = Field(4, ge=1, le=1024, description="per edge replica; more wait at the router")
    routing_stats_period_s: float = Field(0.5, gt=0.0, le=60.0, description="how often replicas report their state")
    retries: int = Field(3, ge=0, le=20, description="times the ingress resends a request whose edge replica died")
    request_timeout_s: float = Field(60.0, gt=0.0)
    pixels_per_mm: float | None = Field(None, gt=PIXELS_PER_MM_RANGE[0], lt=PIXELS_PER_MM_RANGE[1],
                                         description="imaging scale for sizes in mm; 48 for DeepPCB")
    edge_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray resources each edge replica needs, to place it on edge nodes")
    cloud_resources: dict[str, float] = Field(default_factory=dict)
    ingress_resources: dict[str, float] = Field(default_factory=dict)
    model_store: Path | None = Field(
        None, description="a model-store folder (`aivd.model_store`) every edge replica can read, on a shared file "
        "system across machines: replicas serve its CURRENT version and swap to a newly promoted one. Default: the built-in model")
    model_poll_s: float = Field(5.0, gt=0.0, description="how often an edge replica checks the model store for a new version")
    pack: Path | None = Field(
        None, description="a model pack folder (`aivd train pack`) every replica can read: the edge replicas' detectors and "
        "the cloud's classifier and knowledge base. Default: the built-in DeepPCB pack")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    seed: int = 0
    placement: Literal["rank", "resources"] = Field(
        "rank", description="how a replica finds its node class: by replica rank in the order of `edge`, or by "
        "a resource `aivd_class_<name>` on its Ray node")

    update: UpdateConfig = Field(
        UpdateConfig(), description="online learning: an updater deployment learns from every edge replica's results and "
                                    "publishes to update.model_store, which must be `model_store` (aivd.runtime.updater)")
    updater_resources: dict[str, float] = Field(default_factory=dict, description="Ray resources the updater needs (it trains)")

    @model_validator(mode="after")
    def _updates_reach_the_edge(self) -> ClusterConfig:
        if self.update.enabled and self.update.model_store != self.model_store:
            raise ValueError("update.model_store must be model_store: the store the edge replicas follow")
        if self.update.enabled and not self.cloud.enabled:
            raise ValueError("update.enabled needs cloud.enabled: the edge learns from the cloud's answers")
        return self

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value != RAY_DEFAULT_ROUTER and value not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; known: {', '.join([*POLICIES, RAY_DEFAULT_ROUTER])}")
        return value

    @field_validator("pack")
    @classmethod
    def _loadable_pack(cls, value: Path | None) -> Path | None:
        if value is not None:
            from aivd.packs import load_pack

            load_pack(value)  # a PackError (a ValueError) becomes this field's problem
        return value

    def model_pack(self):
        from aivd.packs import builtin_pack, load_pack

        return builtin_pack() if self.pack is None else load_pack(self.pack)

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
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from None
