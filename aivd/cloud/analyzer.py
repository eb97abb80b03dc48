"""The interface of a cloud backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aivd.core import Region
from aivd.core.errors import AivdError
from aivd.schema.analysis import DefectAnalysis


class AnalyzerError(AivdError, RuntimeError):
    """A backend could not analyse a batch (unreachable service, invalid answer); the message says why."""


class Analyzer(Protocol):
    name: str  # recorded as the defect's source: "cloud:<name>"

    def analyze(self, regions: Sequence[Region]) -> list[DefectAnalysis]:
        """One analysis per region, in order. Raises `AnalyzerError` when the batch cannot be analysed."""
        ...

    def close(self) -> None: ...
