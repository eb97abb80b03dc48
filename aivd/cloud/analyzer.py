"""The interface of a cloud backend."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from aivd.core import Region
from aivd.core.errors import AivdError
from aivd.schema.analysis import DefectAnalysis


class AnalyzerError(AivdError, RuntimeError):
    """A backend could not analyse a batch (unreachable service, invalid answer); the message says why, and
    `bytes_sent` / `bytes_received` what the failed attempts cost on the wire."""

    def __init__(self, message: str, bytes_sent: int = 0, bytes_received: int = 0) -> None:
        super().__init__(message)
        self.bytes_sent, self.bytes_received = bytes_sent, bytes_received

    def __reduce__(self):  # pickled with its costs (Ray carries it between processes); the default keeps only args
        return type(self), (str(self), self.bytes_sent, self.bytes_received)


class Analyses(list[DefectAnalysis]):
    """One batch's analyses, one per region in order, with the bytes the batch cost on the wire: request and
    response bodies (retries included) for a remote backend, 0 for one in this process. The cost travels with
    the answer, so a backend shared by threads attributes its traffic to the right image."""

    def __init__(self, analyses: Iterable[DefectAnalysis] = (), bytes_sent: int = 0, bytes_received: int = 0) -> None:
        super().__init__(analyses)
        self.bytes_sent, self.bytes_received = bytes_sent, bytes_received


class Analyzer(Protocol):
    name: str  # recorded as the defect's source: "cloud:<name>"

    def analyze(self, regions: Sequence[Region]) -> Analyses:
        """One analysis per region, in order. Raises `AnalyzerError` when the batch cannot be analysed."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RemoteAnalyzer(Analyzer, Protocol):
    """A backend that talks to a server: it can say whether the server answers now."""

    def check(self, timeout_s: float) -> None:
        """Raises `AnalyzerError` saying why when the server does not answer within `timeout_s`."""
        ...
