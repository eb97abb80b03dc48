"""The JSON Schemas published in docs/schema/, generated from the pydantic models so they cannot drift."""

from __future__ import annotations

import json
from pathlib import Path

from aivd.config import PipelineConfig
from aivd.core import DEEPPCB_CLASSES
from aivd.schema.analysis import DefectAnalysis, analysis_json_schema
from aivd.schema.records import InspectionRecord


def schemas() -> dict[str, dict]:
    return {
        "pipeline_config.schema.json": PipelineConfig.model_json_schema(),
        "inspection_record.schema.json": InspectionRecord.model_json_schema(),
        "defect_analysis.schema.json": DefectAnalysis.model_json_schema(),
        "llm_answer.deeppcb.schema.json": analysis_json_schema(DEEPPCB_CLASSES.names),
    }


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = out_dir / name
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written
