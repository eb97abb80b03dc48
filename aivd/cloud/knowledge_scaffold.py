"""A knowledge base to start from for a new data set (`aivd kb init`): one entry per class, every text a TODO
for the user to replace, and size rules from the data set's own boxes, so that it loads and works as written.

The output is YAML text written by hand rather than dumped, because its comments are its documentation; every
string in it is a double-quoted scalar made by PyYAML, so any class name or text reads back unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import yaml

from aivd.cloud.knowledge import DEFAULT_SUBJECT
from aivd.core import Detections
from aivd.schema.analysis import Severity

MAJOR_PERCENTILE = 75  # boxes at least this large (by their longer side) within their class are major

HEADER = """\
# The defect knowledge base for {name}, scaffolded by `aivd kb init` from the data set's classes and boxes.
# Replace every TODO: the file loads as it is, but records and LLM prompts quote its text word for word.
#
# The built-in cloud backend composes each record's text from this file; prompts for multimodal LLM backends
# quote it too. Pass it with --knowledge (aivd inspect, aivd serve cloud, aivd finetune build).
#
# `subject` is what is inspected, as it completes "a quality engineer inspecting ..." in the LLM prompts.
# Per class: `summary` (what the defect is, one sentence), `likely_causes` (the process steps that most often
# cause it), `severity` rules tried in order (the first whose `when` holds wins; `default` otherwise), `notes`
# (sentences added to the description when their `when` holds) and `action` per severity (critical, major,
# minor: what to do with the item and the process). A `when` maps a measurement (see aivd/schema/analysis.py:
# Measurements, plus max_side_px and max_side_mm, the box's longer side) to a value it must equal, or to
# {{">=": x}} / {{"<": x}}. A measurement that is unknown (no imaging scale, no template) never holds.
#
# How the size rules were chosen: a defect whose box's longer side is at least the {percentile}th percentile
# of the longer sides of that class's boxes in the training split (its largest quarter) is major, the rest
# minor. They are a starting point: replace them with your tolerances (rules in mm, max_side_mm or area_mm2,
# need the imaging scale, --pixels-per-mm).
"""


def longer_sides(truths: Iterable[Detections]) -> dict[str, list[float]]:
    """Per class, the longer side in pixels of each box in `truths` (what `max_side_px` measures)."""
    sides: dict[str, list[float]] = {}
    for truth in truths:
        for (x1, y1, x2, y2), name in zip(truth.xyxy, truth.class_names):
            sides.setdefault(name, []).append(float(max(x2 - x1, y2 - y1)))
    return sides


def _quoted(text: str) -> str:
    """`text` as a YAML double-quoted scalar that reads back as exactly `text`."""
    return yaml.safe_dump(text, default_style='"', allow_unicode=True, width=math.inf).rstrip("\n")


def _severity_lines(name: str, sides: Sequence[float]) -> list[str]:
    if not len(sides):
        return [f"    severity: []  # no {name} boxes in the training split, so no size rule: every one is the default"]
    threshold = round(float(np.percentile(sides, MAJOR_PERCENTILE)), 1)
    return [
        "    severity:",
        f"      # the {MAJOR_PERCENTILE}th percentile of the longer sides of {len(sides)} {name} boxes in the training split",
        f'      - when: {{max_side_px: {{">=": {threshold}}}}}',
        "        severity: major",
    ]


def _class_lines(name: str, sides: Sequence[float]) -> list[str]:
    actions = [f"      {severity.value}: {_quoted(f'TODO: what to do with the item and the process when {name} is {severity.value}.')}"
               for severity in Severity]
    return [
        f"  {_quoted(name)}:",
        f"    summary: {_quoted(f'TODO: describe the {name} defect in one sentence a quality engineer can read.')}",
        "    likely_causes:",
        f"      - {_quoted(f'TODO: the process step that most often causes {name}')}",
        *_severity_lines(name, sides),
        f"    default: {Severity.minor.value}",
        "    notes: []",
        "    action:",
        *actions,
    ]


def scaffold_knowledge(name: str, class_names: list[str], box_sides_px: Mapping[str, Sequence[float]]) -> str:
    """The YAML text of a knowledge base named `name` with one TODO entry per class in `class_names`.
    `box_sides_px[class]` holds the longer side, in pixels, of each of that class's training boxes (a class
    missing from it, or with none, gets no size rule)."""
    if not class_names:
        raise ValueError("no classes: a knowledge base needs at least one")
    repeated = sorted({c for c in class_names if class_names.count(c) > 1})
    if repeated:
        raise ValueError(f"classes {repeated} are named more than once")
    lines = [
        HEADER.format(name=name, percentile=MAJOR_PERCENTILE).rstrip("\n"), "version: 1", f"name: {_quoted(name)}",
        f'subject: {_quoted(DEFAULT_SUBJECT)}  # TODO: what is inspected, e.g. "hot-rolled steel strip surfaces"', "classes:",
    ]
    for class_name in class_names:
        lines += _class_lines(class_name, box_sides_px.get(class_name, ()))
    return "\n".join(lines) + "\n"
