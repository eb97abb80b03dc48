"""`HttpAnalyzer`: the edge's client of the cloud analysis service (`aivd serve cloud`), itself an `Analyzer`."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
from pydantic import ValidationError

from aivd.cloud.analyzer import AnalyzerError
from aivd.cloud.schema import DefectAnalysis
from aivd.cloud.wire import AnalyzeRequest, AnalyzeResponse, encode_region
from aivd.core import Region
from aivd.core.redaction import redact_url


def _detail(response: httpx.Response) -> str:
    """The service's one-line error, or the start of whatever else answered (a proxy's HTML page)."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200].strip() or response.reason_phrase
    return detail if isinstance(detail, str) else str(detail)[:200]


class HttpAnalyzer:
    """Sends each batch of regions to the cloud service in one POST, over a kept-alive connection.

    Connection failures, timeouts and 5xx answers are retried `retries` times with exponential backoff
    (`backoff_s`, then twice that, ...); a 4xx answer means the request itself is wrong and is not retried.
    Every failure is an `AnalyzerError` saying why, so the edge can fall back to its own verdict.

    `bytes_sent` and `bytes_received` count HTTP body bytes over the object's life, retries included;
    `last_bytes_sent` and `last_bytes_received` those of the latest `analyze` call, to attribute traffic to
    an image. These make an instance a one-thread object: give each thread its own.
    """

    def __init__(self, url: str, timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.2) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"cloud service URL must be http(s)://host[:port], got {redact_url(url)!r}")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError(f"need timeout_s > 0, retries >= 0 and backoff_s >= 0; got {timeout_s}, {retries}, {backoff_s}")
        self.url = redact_url(url.rstrip("/"))  # for messages, which end up in records: no password
        self.retries = retries
        self.backoff_s = backoff_s
        self.bytes_sent = self.bytes_received = 0
        self.last_bytes_sent = self.last_bytes_received = 0
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)
        name, threshold = self._remote_identity()
        self.name = f"remote:{name}"
        # The edge proposes candidates down to the threshold the remote analyzer was calibrated for, when it says.
        if threshold is not None:
            self.proposal_threshold = threshold

    def _remote_identity(self) -> tuple[str, float | None]:
        # One try, no retries: an unreachable cloud must not hold up the edge's start; analyze() retries later.
        try:
            response = self._client.get("/healthz")
            health = response.json() if response.status_code == 200 else {}
            name, threshold = health.get("analyzer"), health.get("proposal_threshold")
        except (httpx.HTTPError, ValueError, AttributeError):
            return "unknown", None
        name = name if isinstance(name, str) and name else "unknown"
        valid = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1
        return name, float(threshold) if valid else None

    def analyze(self, regions: Sequence[Region]) -> list[DefectAnalysis]:
        self.last_bytes_sent = self.last_bytes_received = 0
        if not regions:
            return []
        body = AnalyzeRequest(regions=[encode_region(region) for region in regions]).model_dump_json().encode()
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.post("/v1/analyze", content=body, headers={"content-type": "application/json"})
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                problem = f"cannot connect ({str(error) or type(error).__name__})"
                continue  # nothing was sent
            except httpx.TransportError as error:
                self._count(len(body), 0)  # the connection was up, so the body (or part of it) went out
                problem = f"{type(error).__name__} ({str(error) or 'no details'})"
                continue
            self._count(len(body), response.num_bytes_downloaded)
            if response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code != 200:
                raise AnalyzerError(f"{self.url} refused the batch of {len(regions)} regions (HTTP {response.status_code}): {_detail(response)}")
            return self._analyses(response, len(regions))
        raise AnalyzerError(f"{self.url} failed {self.retries + 1} times for a batch of {len(regions)} regions; last: {problem}")

    def _count(self, sent: int, received: int) -> None:
        self.bytes_sent += sent
        self.bytes_received += received
        self.last_bytes_sent += sent
        self.last_bytes_received += received

    def _analyses(self, response: httpx.Response, expected: int) -> list[DefectAnalysis]:
        try:
            answer = AnalyzeResponse.model_validate_json(response.content)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "body"
            raise AnalyzerError(f"{self.url} sent an invalid answer: {where}: {first['msg']} ({error.error_count()} errors)") from None
        if len(answer.analyses) != expected:
            raise AnalyzerError(f"{self.url} sent {len(answer.analyses)} analyses for {expected} regions")
        return answer.analyses

    def close(self) -> None:
        self._client.close()
