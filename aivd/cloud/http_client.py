"""`HttpAnalyzer`: the edge's client of the cloud analysis service (`aivd serve cloud`), itself an `Analyzer`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import httpx
from pydantic import ValidationError

from aivd.cloud.analyzer import Analyses, AnalyzerError
from aivd.core import Region
from aivd.core.redaction import redact_url
from aivd.schema.analysis import DefectAnalysis
from aivd.schema.wire import AnalyzeRequest, AnalyzeResponse, Health, PublicLimits, RegionPayload, encode_region


def _detail(response: httpx.Response) -> str:
    """The service's one-line error, or the start of whatever else answered (a proxy's HTML page)."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200].strip() or response.reason_phrase
    return detail if isinstance(detail, str) else str(detail)[:200]


# What a service that does not say its limits is assumed to accept: the service's own defaults, a little lower.
ASSUMED_LIMITS = PublicLimits(max_body_bytes=8 * 1024 * 1024, max_regions=256, max_crop_side=1024, max_pixels=8_000_000)
BODY_MARGIN = 0.95  # of max_body_bytes: the JSON around the regions is estimated, not measured
KEY_VARIABLE = "AIVD_CLOUD_KEY"  # the environment variable holding the API key sent to the service, if any


class HttpAnalyzer:
    """Sends each batch of regions to the cloud service over a kept-alive connection: in one POST, or in as few
    as keep to the limits the service tells in `/healthz` (regions, pixels and bytes per request).

    Connection failures, timeouts and 5xx answers are retried `retries` times with exponential backoff
    (`backoff_s`, then twice that, ...); a 4xx answer means the request itself is wrong and is not retried.
    Every failure is an `AnalyzerError` saying why, so the edge can fall back to its own verdict. A service with
    API keys gets the key in the environment variable AIVD_CLOUD_KEY as a bearer token; its 401 or 403 names
    the variable and is not retried. The key never appears in a message.

    Each `analyze` answer carries the HTTP body bytes it cost, retries included; `bytes_sent` and
    `bytes_received` add them up over the object's life. Threads may share an instance (the Ray cloud deployment
    analyzes several edge requests at once): httpx's client is thread-safe and the totals are locked.
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
        self._lock = threading.Lock()
        key = os.environ.get(KEY_VARIABLE, "").strip()
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers)
        name, threshold, self.limits = self._remote_identity()
        self.name = f"remote:{name}"
        # The edge proposes candidates down to the threshold the remote analyzer was calibrated for, when it says.
        if threshold is not None:
            self.proposal_threshold = threshold

    def _remote_identity(self) -> tuple[str, float | None, PublicLimits]:
        # One try, no retries: an unreachable cloud must not hold up the edge's start; analyze() retries later.
        try:
            response = self._client.get("/healthz")
            health = Health.model_validate_json(response.content) if response.status_code == 200 else None
        except (httpx.HTTPError, ValidationError):
            health = None
        if health is None:
            return "unknown", None, ASSUMED_LIMITS
        name = health.analyzer or "unknown"
        threshold = health.proposal_threshold
        valid = threshold is not None and 0 <= threshold <= 1
        return name, threshold if valid else None, health.limits

    def analyze(self, regions: Sequence[Region]) -> Analyses:
        analyses = Analyses()
        for batch in self._requests([encode_region(region) for region in regions], regions):
            self._post(batch, analyses)
        return analyses

    def _requests(self, payloads: list[RegionPayload], regions: Sequence[Region]) -> list[list[RegionPayload]]:
        """The payloads in consecutive requests within the service's limits (a region over them alone, to be
        refused with the service's reason)."""
        limits, requests, pixels, size = self.limits, [], 0, 0
        current: list[RegionPayload] = []
        for payload, region in zip(payloads, regions):
            region_pixels = region.image.size + (0 if region.template is None else region.template.size)
            region_size = len(payload.image_png) + len(payload.template_png or "") + 300  # + ids, box, JSON
            if current and (len(current) == limits.max_regions or pixels + region_pixels > limits.max_pixels
                            or size + region_size > limits.max_body_bytes * BODY_MARGIN):
                requests.append(current)
                current, pixels, size = [], 0, 0
            current.append(payload)
            pixels += region_pixels
            size += region_size
        return requests + ([current] if current else [])

    def _post(self, payloads: list[RegionPayload], analyses: Analyses) -> None:
        """Analyses of one request, appended to `analyses` with what the request cost; an `AnalyzerError` carries
        the cost of this call's requests so far."""
        body = AnalyzeRequest(regions=payloads).model_dump_json().encode()
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
                self._count(analyses, len(body), 0)  # the connection was up, so the body (or part of it) went out
                problem = f"{type(error).__name__} ({str(error) or 'no details'})"
                continue
            self._count(analyses, len(body), response.num_bytes_downloaded)
            if response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code in (401, 403):
                given = f"the key in {KEY_VARIABLE}" if "authorization" in self._client.headers else f"no key ({KEY_VARIABLE} is not set)"
                raise self._error(analyses, f"{self.url} refused {given} (HTTP {response.status_code}): {_detail(response)}")
            if response.status_code != 200:
                raise self._error(analyses, f"{self.url} refused the batch of {len(payloads)} regions (HTTP {response.status_code}): {_detail(response)}")
            analyses += self._analyses(response, len(payloads), analyses)
            return
        raise self._error(analyses, f"{self.url} failed {self.retries + 1} times for a batch of {len(payloads)} regions; last: {problem}")

    def check(self, timeout_s: float) -> None:
        """Raises `AnalyzerError` when the service's /healthz does not answer 200 within `timeout_s` (one try)."""
        try:
            response = self._client.get("/healthz", timeout=timeout_s)
        except httpx.HTTPError as error:
            raise AnalyzerError(f"{self.url}: not answering: {type(error).__name__} ({str(error) or 'no details'})") from None
        if response.status_code != 200:
            raise AnalyzerError(f"{self.url}: /healthz answered HTTP {response.status_code}: {_detail(response)}")

    def _count(self, analyses: Analyses, sent: int, received: int) -> None:
        analyses.bytes_sent += sent
        analyses.bytes_received += received
        with self._lock:
            self.bytes_sent += sent
            self.bytes_received += received

    @staticmethod
    def _error(analyses: Analyses, message: str) -> AnalyzerError:
        return AnalyzerError(message, analyses.bytes_sent, analyses.bytes_received)

    def _analyses(self, response: httpx.Response, expected: int, analyses: Analyses) -> list[DefectAnalysis]:
        try:
            answer = AnalyzeResponse.model_validate_json(response.content)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "body"
            raise self._error(analyses, f"{self.url} sent an invalid answer: {where}: {first['msg']} ({error.error_count()} errors)") from None
        if len(answer.analyses) != expected:
            raise self._error(analyses, f"{self.url} sent {len(answer.analyses)} analyses for {expected} regions")
        return answer.analyses

    def close(self) -> None:
        self._client.close()
