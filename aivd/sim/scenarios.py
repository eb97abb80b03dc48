"""The simulator's assumptions as data: node classes, links, arrivals, the cloud stage and the paper's scenarios.

Every number here is an assumption, written down with its reason in docs/scheduling.md; change them here, not
in the engine.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# DeepPCB images are 640x640 binarised JPEGs of about 42 kB; each task carries the test image and its template.
DEEPPCB_JPEG_BYTES = 42_000


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeClass(Frozen):
    """An edge device type. Service times are lognormal with this mean and coefficient of variation."""

    name: str
    service_mean_s: float = Field(gt=0)
    service_cv: float = Field(ge=0)
    model_memory_mb: float = Field(ge=0, description="resident memory of the detector and runtime")


NODE_CLASSES: dict[str, NodeClass] = {
    "arm": NodeClass(name="arm-board", service_mean_s=0.40, service_cv=0.30, model_memory_mb=350),
    "gpu": NodeClass(name="gpu-module", service_mean_s=0.08, service_cv=0.20, model_memory_mb=900),
    "ipc": NodeClass(name="industrial-pc", service_mean_s=0.15, service_cv=0.25, model_memory_mb=600),
}


class LinkProfile(Frozen):
    """A dispatcher-to-node link. Every `epoch_s` the bandwidth is multiplied and the latency divided by one
    lognormal factor of spread `sigma` (mean 1); with probability `spike_prob` the epoch is a spike in which the
    latency is `spike_factor` times higher and the bandwidth that many times lower."""

    kind: Literal["stable", "fluctuating", "degraded"]
    bandwidth_bps: float = Field(gt=0, description="bytes per second")
    latency_s: float = Field(ge=0)
    sigma: float = Field(0.0, ge=0)
    spike_prob: float = Field(0.0, ge=0, le=1)
    spike_factor: float = Field(1.0, ge=1)
    epoch_s: float = Field(1.0, gt=0)


class Arrivals(Frozen):
    """Poisson arrivals at `load` times the edge capacity, or bursty ones (a two-state Markov-modulated Poisson
    process) with the same mean: bursts at `burst_factor` times the calm rate, `burst_share` of the time."""

    kind: Literal["poisson", "bursty"]
    load: float = Field(gt=0, description="mean arrival rate as a fraction of the sum of node service rates")
    burst_factor: float = Field(4.0, ge=1)
    burst_share: float = Field(0.2, gt=0, lt=1)
    mean_burst_s: float = Field(2.0, gt=0)


class CloudStage(Frozen):
    """The cloud analyzer: crops of each image (or whole images, in the cloud-only and traditional pipelines) go
    up one shared uplink and are analysed in batches."""

    crops_bytes: int = Field(6_000, ge=0, description="crops of one image (a few 1-3 kB regions)")
    uplink_bps: float = Field(2_500_000, gt=0)
    uplink_latency_s: float = Field(0.03, ge=0)
    batch_max: int = Field(16, ge=1)
    batch_timeout_s: float = Field(0.02, ge=0)
    batch_base_s: float = Field(0.010, ge=0)
    per_item_s: float = Field(0.002, ge=0, description="analysis of one image's crops within a batch")
    image_item_s: float = Field(0.008, ge=0, description="detection and analysis of one whole image within a batch")


class NodeEvent(Frozen):
    """A crash (the node stops serving and reporting) or a slow-down (service times times `factor`) of node
    index `node` (modulo the node count), from `start_frac` of the expected run for `duration_frac` of it."""

    kind: Literal["crash", "slow"]
    node: int = Field(ge=0)
    start_frac: float = Field(ge=0)
    duration_frac: float = Field(gt=0)
    factor: float = Field(1.0, ge=1)


class Scenario(Frozen):
    id: int
    name: str
    node_mix: list[str] = Field(description="node classes, cycled over the node indices")
    links: list[LinkProfile] = Field(description="link profiles, cycled over the node indices")
    arrivals: Arrivals
    telemetry_period_s: float = Field(gt=0)
    telemetry_delay_s: float = Field(ge=0)
    unhealthy_after_missed: int = Field(3, ge=1, description="missed heartbeats after which a node is unhealthy")
    queue_bound: int = Field(8, ge=1)
    service_scale: float = Field(1.0, gt=0, description="every node class's service times x this (for emulations "
                                 "on one machine, which run slower devices than the paper's)")
    payload_bytes: int = 2 * DEEPPCB_JPEG_BYTES
    cloud: CloudStage = CloudStage()
    events: list[NodeEvent] = []


LAN = LinkProfile(kind="stable", bandwidth_bps=12_500_000, latency_s=0.002, sigma=0.05)

SCENARIOS: dict[int, Scenario] = {
    1: Scenario(
        id=1, name="normal", node_mix=["gpu", "ipc", "arm", "ipc"], links=[LAN],
        arrivals=Arrivals(kind="poisson", load=0.7), telemetry_period_s=0.5, telemetry_delay_s=0.05,
    ),
    2: Scenario(
        id=2, name="dynamic network", node_mix=["gpu", "ipc", "arm", "ipc"],
        links=[
            LinkProfile(kind="stable", bandwidth_bps=12_500_000, latency_s=0.005, sigma=0.05),
            LinkProfile(kind="fluctuating", bandwidth_bps=5_000_000, latency_s=0.020, sigma=0.5),
            LinkProfile(kind="degraded", bandwidth_bps=1_250_000, latency_s=0.050, sigma=0.5, spike_prob=0.1, spike_factor=5),
        ],
        arrivals=Arrivals(kind="poisson", load=0.7), telemetry_period_s=1.0, telemetry_delay_s=0.2,
    ),
    3: Scenario(
        id=3, name="high load, high latency, strong fluctuation", node_mix=["gpu", "ipc", "arm", "ipc"],
        links=[
            LinkProfile(kind="fluctuating", bandwidth_bps=5_000_000, latency_s=0.040, sigma=0.8),
            LinkProfile(kind="degraded", bandwidth_bps=1_250_000, latency_s=0.100, sigma=0.8, spike_prob=0.2, spike_factor=8),
            LinkProfile(kind="fluctuating", bandwidth_bps=2_500_000, latency_s=0.060, sigma=0.8),
        ],
        arrivals=Arrivals(kind="bursty", load=0.95), telemetry_period_s=1.0, telemetry_delay_s=0.3,
        events=[
            NodeEvent(kind="slow", node=0, start_frac=0.2, duration_frac=0.3, factor=3.0),
            NodeEvent(kind="crash", node=1, start_frac=0.5, duration_frac=0.1),
        ],
    ),
}


def with_load(scenario: Scenario, load: float) -> Scenario:
    """The scenario with its mean arrival rate set to `load` times the edge capacity (above 1: saturation)."""
    return scenario.model_copy(update={"arrivals": scenario.arrivals.model_copy(update={"load": load})})
