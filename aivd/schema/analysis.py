"""What a cloud backend answers for one region, and the measurements aivd takes from the pixels itself.

`DefectAnalysis` is deliberately what a multimodal LLM can produce as structured output (its JSON Schema is
`analysis_json_schema`): a verdict, a class from the data set's vocabulary, a confidence, a severity and
text. Sizes and connectivity are not left to a model's guess: `Measurements` are computed from the crop by
`aivd.cloud.measure` whatever the backend.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Severity(str, Enum):
    critical = "critical"  # the item fails in use or will (a board: electrically): scrap or repair before anything else
    major = "major"  # out of tolerance; repair or review before shipping
    minor = "minor"  # cosmetic or within tolerance; record and watch the trend


class Measurements(BaseModel):
    """What aivd measures from the crop itself (`aivd.cloud.measure`). The size, area and contrast are always
    given; millimetres only when the imaging scale is known; the PCB facts (copper and conductors) only for a
    PCB deployment and a region with a template."""

    model_config = ConfigDict(extra="forbid")

    width_px: float = Field(description="box width in image pixels")
    height_px: float = Field(description="box height in image pixels")
    area_px: float | None = Field(None, description="box area in square image pixels")
    contrast: float | None = Field(
        None, description="mean grey level inside the box minus that of a ring a few pixels wide around it, clipped to the "
                          "crop (-255..255; positive: the box is brighter); null when the box fills the crop")
    width_mm: float | None = Field(None, description="box width in millimetres, when the imaging scale is known")
    height_mm: float | None = Field(None, description="box height in millimetres, when the imaging scale is known")
    area_mm2: float | None = Field(None, description="box area in square millimetres, when the imaging scale is known")
    changed_area_px: int | None = Field(None, description="PCB: pixels inside the box where test and template copper differ")
    changed_area_mm2: float | None = Field(None, description="PCB: the same area in square millimetres, when the scale is known")
    extra_copper_px: int | None = Field(None, description="PCB: pixels that are copper in the test image but not in the template")
    missing_copper_px: int | None = Field(None, description="PCB: pixels that are copper in the template but not in the test image")
    joins_conductors: bool | None = Field(
        None, description="PCB: test copper connects conductors that are separate in the template (a short circuit)")
    splits_conductor: bool | None = Field(
        None, description="PCB: a conductor that is one piece in the template is cut into several in the test image")


class DefectAnalysis(BaseModel):
    """One region's analysis. Backends fill every field; `measurements` are added by aivd."""

    model_config = ConfigDict(extra="forbid")

    is_defect: bool = Field(description="false when the region shows no defect (an edge false alarm)")
    defect_type: str = Field(description="the most likely class, one of the data set's classes")
    confidence: float = Field(ge=0, le=1, description="probability that the region is a defect of defect_type")
    severity: Severity | None = Field(description="null when is_defect is false")
    likely_causes: list[str] = Field(default_factory=list, description="process steps that most often cause this defect")
    description: str = Field(description="one or two sentences a quality engineer can read")
    recommended_action: str = Field(description="what to do with the inspected item and the process")
    measurements: Measurements | None = None


LLM_FIELDS = ("is_defect", "defect_type", "confidence", "severity", "likely_causes", "description", "recommended_action")


def analysis_json_schema(class_names: list[str] | tuple[str, ...]) -> dict:
    """The JSON Schema a generative backend must answer with: `DefectAnalysis` without the measurements, with
    `defect_type` limited to `class_names`."""
    schema = DefectAnalysis.model_json_schema()
    schema["properties"] = {name: schema["properties"][name] for name in LLM_FIELDS}
    schema["properties"]["defect_type"]["enum"] = list(class_names)
    schema["required"] = list(LLM_FIELDS)
    schema["$defs"].pop("Measurements", None)
    return schema
