"""The result records `aivd inspect` writes, one JSON object per input image in results.jsonl.

With the cloud tier a defect carries the cloud's analysis (severity, causes, description, action) and the
measurements aivd takes from the pixels; edge-only defects leave those fields null. The JSON Schema of
`InspectionRecord` is published in docs/schema/.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from aivd.schema.analysis import Measurements, Severity


class OffloadNote(BaseModel):
    """Whether a candidate region went to the cloud, and why (`aivd.collab.offload`)."""

    sent: bool
    reason: str = Field(description="send_all, edge_only, hard (uncertainty above the cutoff), easy (not above it), "
                                    "audit (sent to measure the edge), validation (sent with the rest of its image for the "
                                    "online updater) or below_proposal_threshold")
    uncertainty: float | None = Field(None, description="the hard-example filter's score for the region, when a filter decided")
    cutoff: float | None = Field(None, description="the filter's cutoff the region was judged by")


class DefectRecord(BaseModel):
    bbox: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in pixels of the input image")
    defect_type: str = Field(description="class name, e.g. open, short, mousebite, spur, copper, pin-hole")
    confidence: float = Field(ge=0, le=1)
    source: str = Field(description="which tier decided the class: 'edge' or 'cloud:<backend>'")
    edge_type: str | None = Field(None, description="the edge detector's class, when the cloud decided")
    edge_confidence: float | None = Field(None, ge=0, le=1, description="the edge detector's score, when the cloud decided")
    severity: Severity | None = None
    likely_causes: list[str] = Field(default_factory=list)
    description: str | None = None
    recommended_action: str | None = None
    measurements: Measurements | None = None
    offload: OffloadNote | None = Field(None, description="whether this candidate region went to the cloud, and why")


class InspectionRecord(BaseModel):
    image: str = Field(description="path of the inspected image as given")
    image_id: str
    template: str | None = Field(description="path of the aligned template used, if any")
    status: Literal["ok", "error"]
    error: str | None = Field(description="why the image could not be inspected; null when status is ok")
    detector: str | None = None
    analyzer: str | None = Field(None, description="the cloud backend that analysed the regions; null for edge-only")
    cloud_error: str | None = Field(
        None, description="why the cloud tier could not analyse this image; its defects are then the edge's own")
    defects: list[DefectRecord] = []
    rejected: list[DefectRecord] = Field(
        default_factory=list, description="the other candidate regions, kept for audit: those the cloud judged not to be "
                                          "defects, and those kept at the edge below its threshold")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per stage: read, detect, analyze, total")
    bytes_to_cloud: int = Field(0, description="request bytes sent to a remote cloud tier for this image (0 in-process)")
    bytes_from_cloud: int = Field(0, description="response bytes received from a remote cloud tier for this image (0 in-process)")
    edge_node: str | None = Field(
        None, description="the edge node (Ray Serve replica and its node class) that inspected the image; null in-process")
