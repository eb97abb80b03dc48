"""The defect knowledge base: a data file (see knowledge/deeppcb.yaml) turned into record text and severity."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from aivd.core.errors import AivdError
from aivd.data.yaml_files import first_problem, read_yaml_mapping
from aivd.schema.analysis import DefectAnalysis, Measurements, Severity

DEFAULT_KNOWLEDGE = Path(__file__).parent / "knowledge" / "deeppcb.yaml"
DEFAULT_SUBJECT = "industrial parts"
Comparison = Literal[">=", "<"]
Condition = dict[str, bool | float | dict[Comparison, float]]


class KnowledgeError(AivdError, ValueError):
    """A knowledge-base file that cannot be used; the message names the file and the problem."""


class SeverityRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: Condition
    severity: Severity


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: Condition
    text: str


class ClassKnowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary: str
    likely_causes: list[str]
    severity: list[SeverityRule] = []
    default: Severity
    notes: list[Note] = []
    action: dict[Severity, str]

    @field_validator("action")
    @classmethod
    def _every_severity(cls, action: dict) -> dict:
        missing = [s.value for s in Severity if s not in action]
        if missing:
            raise ValueError(f"action has no text for severity {', '.join(missing)}")
        return action


class KnowledgeBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    name: str
    # What is inspected, as it completes "a quality engineer inspecting ...": prompts for LLM backends say it.
    subject: str = DEFAULT_SUBJECT
    classes: dict[str, ClassKnowledge]

    @classmethod
    def load(cls, path: str | Path = DEFAULT_KNOWLEDGE) -> KnowledgeBase:
        path = Path(path)
        raw = read_yaml_mapping(path, KnowledgeError)
        try:
            base = cls.model_validate(raw)
        except ValidationError as error:
            raise KnowledgeError(first_problem(error, str(path))) from None
        for name, entry in base.classes.items():
            for condition in [rule.when for rule in entry.severity] + [note.when for note in entry.notes]:
                unknown = set(condition) - MEASURABLE
                if unknown:
                    raise KnowledgeError(f"{path}: classes.{name}: unknown measurement {', '.join(sorted(unknown))}")
        return base

    def analysis(self, defect_type: str, confidence: float, is_defect: bool, measurements: Measurements, edge_class: str) -> DefectAnalysis:
        """The record a backend without its own words returns: text and severity from the rules."""
        if defect_type not in self.classes:
            raise KnowledgeError(f"knowledge base {self.name!r} has no class {defect_type!r}")
        if not is_defect:
            return DefectAnalysis(
                is_defect=False, defect_type=defect_type, confidence=confidence, severity=None, likely_causes=[],
                description=f"No defect: the edge's {edge_class} candidate is a false alarm.",
                recommended_action="None.", measurements=measurements,
            )
        entry = self.classes[defect_type]
        facts = _facts(measurements)
        severity = next((rule.severity for rule in entry.severity if _holds(rule.when, facts)), entry.default)
        sentences = [entry.summary, _size_sentence(measurements)] + [note.text for note in entry.notes if _holds(note.when, facts)]
        return DefectAnalysis(
            is_defect=True, defect_type=defect_type, confidence=confidence, severity=severity,
            likely_causes=list(entry.likely_causes), description=" ".join(sentences),
            recommended_action=entry.action[severity], measurements=measurements,
        )


MEASURABLE = set(Measurements.model_fields) | {"max_side_px", "max_side_mm"}


def _facts(measurements: Measurements) -> dict:
    """The measurements a rule can name: the record's own, and the box's longer side."""
    facts = measurements.model_dump()
    facts["max_side_px"] = max(measurements.width_px, measurements.height_px)
    if measurements.width_mm is not None and measurements.height_mm is not None:
        facts["max_side_mm"] = max(measurements.width_mm, measurements.height_mm)
    return facts


def _holds(condition: dict, facts: dict) -> bool:
    for key, expected in condition.items():
        value = facts.get(key)
        if value is None:
            return False
        if isinstance(expected, dict):
            if ">=" in expected and not value >= expected[">="]:
                return False
            if "<" in expected and not value < expected["<"]:
                return False
        elif value != expected:
            return False
    return True


def _size_sentence(measurements: Measurements) -> str:
    if measurements.width_mm is not None:
        return f"About {measurements.width_mm:.2f} x {measurements.height_mm:.2f} mm."
    return f"About {measurements.width_px:.0f} x {measurements.height_px:.0f} pixels."
