"""The console API's answers, as pydantic models: FastAPI documents each route with them, so the OpenAPI schema
says exactly what comes back (tests/test_console_api.py fuzzes the API against it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

Box = tuple[float, float, float, float]
MAX_ID = 2**31 - 1  # ids are 32-bit INTEGER columns
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL


class DefectOut(BaseModel):
    id: int
    rejected: bool = Field(description="an edge candidate the cloud judged not to be a defect")
    bbox: Box = Field(description="x1, y1, x2, y2 in pixels of the image")
    defect_type: str
    confidence: float
    source: str = Field(description="which tier decided the class: 'edge' or 'cloud:<backend>'")
    edge_type: str | None
    edge_confidence: float | None
    severity: str | None
    description: str | None
    recommended_action: str | None
    likely_causes: list[str]
    offload: dict[str, Any] | None


class Label(BaseModel):
    """One box of a human review."""

    bbox: Box = Field(description="x1, y1, x2, y2 in pixels of the image; x1 < x2 and y1 < y2")
    defect_type: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    defect_id: int | None = Field(None, ge=1, le=MAX_ID, description="the machine's defect this box keeps or corrects; null for one the reviewer added")

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, box: Box) -> Box:
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 and 0 <= y1 < y2 and max(box) < 1e6):
            raise ValueError("a box is [x1, y1, x2, y2] with 0 <= x1 < x2 and 0 <= y1 < y2, in pixels")
        return box


class ReviewOut(BaseModel):
    id: int
    reviewer: str
    reviewed_at: datetime
    verdict: str
    labels: list[Label]
    note: str | None


class ImageSummary(BaseModel):
    id: int
    run_id: int
    image_id: str
    image: str = Field(description="the image's path as stored")
    status: str
    error: str | None
    inspected_at: datetime | None
    detector: str | None
    analyzer: str | None
    defects: int = Field(description="reported defects, not the rejected candidates")
    classes: dict[str, int]
    worst_severity: str | None
    min_confidence: float | None
    reviewed: bool


class ImagePage(BaseModel):
    items: list[ImageSummary]
    next_after: int | None = Field(description="the `after` of the next page; null on the last")
    total: int
    total_capped: bool = Field(description="counting stopped early: at least `total` images match, maybe more (a count reads at most 10,000 matches and, for a filter on defects or reviews, the newest 20,000 images its other conditions select)")


class ImageDetail(BaseModel):
    id: int
    run_id: int
    image_id: str
    image: str
    template: str | None
    status: str
    error: str | None
    detector: str | None
    analyzer: str | None
    cloud_error: str | None
    bytes_to_cloud: int
    bytes_from_cloud: int
    inspected_at: datetime | None
    width: int | None = Field(description="pixels, when the image file can be read")
    height: int | None
    timings_ms: dict[str, float]
    defects: list[DefectOut] = Field(description="every candidate region, reported and rejected")
    reviews: list[ReviewOut] = Field(description="newest first; the first is the image's human label")


class RunOut(BaseModel):
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str | None
    command: str
    images: int | None = Field(description="the run's totals, set when it finished or was interrupted")
    ok: int | None
    failed: int | None
    defects: int | None
    recorded: int = Field(description="images recorded so far")


class RunPage(BaseModel):
    items: list[RunOut]
    next_after: int | None
    total: int
    total_capped: bool


class StageLatency(BaseModel):
    p50: float
    p95: float
    count: int


class LineMetrics(BaseModel):
    """A live run's state, from the Prometheus metrics it serves (`aivd inspect|watch --metrics-port`)."""

    url: str
    error: str | None = Field(description="why its metrics cannot be read now; the other fields are then absent")
    drift: bool | None = Field(None, description="the drift monitor sees the edge disagree with the cloud more than it used to")
    cloud_disagreement: float | None = None
    offload_ratio: float | None = None
    model: str | None = Field(None, description="the edge model served for its latest image")
    updates: dict[str, int] = Field({}, description="online updates of the edge model by outcome")


class RuntimeNode(BaseModel):
    """One edge replica as the runtime's router last routed on it (`aivd serve --config`'s GET /v1/router "nodes")."""

    replica: str
    node_class: str | None
    cpu_idle: float
    queue_len: int
    bandwidth_bps: float
    latency_s: float
    score: float | None = Field(description="the policy's score; null for a policy without one")
    age_s: float = Field(description="seconds since the router last saw it")


class Live(BaseModel):
    window_s: float
    at: datetime
    images: int
    throughput_per_s: float
    errors: int
    error_rate: float
    regions: int = Field(description="candidate regions with an offload note in the window")
    offloaded: int
    offload_ratio: float
    latency_ms: dict[str, StageLatency]
    models: dict[str, int] = Field(description="images per detector version in the window")
    last_inspected_at: datetime | None
    last_detector: str | None
    runtime: dict[str, Any] | None = Field(description="what the runtime's /v1/router reports (drift, edge nodes), with --runtime")
    runtime_error: str | None
    lines: list[LineMetrics] = Field(description="each --metrics run's drift state and model")


class ModelVersion(BaseModel):
    version: str
    detector: str | None = None
    parent: str | None = None
    metrics: dict[str, Any] = {}
    created: str | None = None


class ModelHistoryEntry(BaseModel):
    at: str
    action: str
    version: str
    previous: str | None = None
    reason: str = ""


class Models(BaseModel):
    configured: bool = Field(description="whether the console was given a model store")
    current: str | None
    versions: list[ModelVersion]
    history: list[ModelHistoryEntry]


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: Any
    remote_addr: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_after: int | None
    total: int
    total_capped: bool


class QueueEntry(BaseModel):
    image_row_id: int
    priority: float
    reasons: list[str]


class ReviewIn(BaseModel):
    image_row_id: int = Field(ge=1, le=MAX_ID)
    verdict: Literal["accepted", "corrected", "good"]
    labels: list[Label] = Field(max_length=1000)
    note: str | None = Field(None, max_length=2000, pattern=NO_NUL)

    @model_validator(mode="after")
    def _good_has_no_boxes(self) -> ReviewIn:
        if self.verdict == "good" and self.labels:
            raise ValueError("an image marked good has no defect boxes")
        return self


class ModelChange(BaseModel):
    """The promote and roll-back forms."""

    version: str | None = Field(None, max_length=32, pattern=NO_NUL)
    reason: str = Field("", max_length=500, pattern=NO_NUL)


class ReviewSaved(BaseModel):
    id: int


class Error(BaseModel):
    detail: str
