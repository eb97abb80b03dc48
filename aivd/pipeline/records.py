"""The result records `aivd inspect` writes, one JSON object per input image in results.jsonl."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DefectRecord(BaseModel):
    bbox: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in pixels of the input image")
    defect_type: str = Field(description="class name, e.g. open, short, mousebite, spur, copper, pin-hole")
    confidence: float = Field(ge=0, le=1)
    source: str = Field(description="which tier produced the class: 'edge' or 'cloud:<backend>'")


class InspectionRecord(BaseModel):
    image: str = Field(description="path of the inspected image as given")
    image_id: str
    template: str | None = Field(description="path of the aligned template used, if any")
    status: Literal["ok", "error"]
    error: str | None = Field(description="why the image could not be inspected; null when status is ok")
    detector: str | None = None
    defects: list[DefectRecord] = []
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per stage: read, detect, total")
