"""The cloud analysis service: any `Analyzer` behind HTTP, with limits, clear errors and Prometheus metrics.

`create_app(analyzer)` returns a FastAPI app; `aivd serve cloud` runs it under uvicorn. The edge talks to it
with `aivd.cloud.http_client.HttpAnalyzer`.
"""

from __future__ import annotations

import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import aivd
from aivd.cloud.analyzer import Analyzer, AnalyzerError
from aivd.cloud.wire import MAX_CROP_SIDE, AnalyzeRequest, AnalyzeResponse, ErrorResponse, TimingsMs, decode_region

DESCRIPTION = """
Analyses candidate defect regions cut by the aivd edge tier: for each region, whether it is a real defect,
its class, severity, likely causes and the recommended action.

`POST /v1/analyze` takes a batch of regions (lossless grayscale PNG crops, with the template window when there
is one) and answers one `DefectAnalysis` per region, in order. Every error is `{"detail": "..."}` with one line
naming the region and the reason: 413 for a body over the size limit, 422 for invalid input, 503 when the
analyzer cannot answer and 500 when it crashes (the client may retry both). `GET /metrics` is Prometheus exposition.
"""
log = logging.getLogger(__name__)
MAX_ERRORS_SHOWN = 5  # a request with 500 broken regions gets a readable line, not 500 of them


class ServiceLimits(BaseModel):
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="larger requests get 413 before being parsed")
    max_regions: int = Field(512, gt=0, description="regions per request; more get 422")
    max_crop_side: int = Field(MAX_CROP_SIDE, gt=0, description="pixels per side of a crop; larger get 422")
    # The Analyzer protocol does not promise thread safety, and a model backend on a small machine is fastest
    # one batch at a time; raise this for backends that wait on I/O (remote LLMs).
    max_concurrent_batches: int = Field(1, gt=0, description="analyzer calls running at once; more requests wait")


class ServiceMetrics:
    """The app's Prometheus metrics, in a registry of its own so that several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aivd_cloud_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry)
        self.request_bytes = Counter("aivd_cloud_request_bytes", "HTTP request body bytes received", ["endpoint"], registry=self.registry)
        self.response_bytes = Counter("aivd_cloud_response_bytes", "HTTP response body bytes sent", ["endpoint"], registry=self.registry)
        self.regions = Counter("aivd_cloud_regions_analyzed", "regions analysed successfully", registry=self.registry)
        self.analyze_seconds = Histogram(
            "aivd_cloud_analyze_seconds", "time in Analyzer.analyze per request", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )


class BodyTooLarge(Exception):
    pass


class HttpAccounting:
    """ASGI middleware: refuses bodies over the limit before anything parses them, and counts every request's
    endpoint, status code and body bytes.

    The body is read here, at most `max_body_bytes` of it, and replayed to the app: a client that sends no
    Content-Length (chunked) or a false one is cut off at the limit just the same.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Unknown paths share one label so that scanners cannot grow the metrics without bound.
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500  # what the client gets if the app fails before answering
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            try:
                body = await self._read_body(scope, receive)
            except BodyTooLarge as refusal:
                await self._too_large(str(refusal), scope, receive, counting_send)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body, only http.disconnect comes

            self.metrics.request_bytes.labels(endpoint).inc(len(body))
            await self.app(scope, replay, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.response_bytes.labels(endpoint).inc(sent)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, or `BodyTooLarge` as soon as it is known to be over the limit."""
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body of {int(declared)} bytes is over the limit of {limit} bytes; send fewer regions per request")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the limit of {limit} bytes; send fewer regions per request")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    async def _too_large(reason: str, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, because the unread rest of the body would otherwise be taken for the next request.
        response = JSONResponse({"detail": reason}, status_code=413, headers={"connection": "close"})
        await response(scope, receive, send)


def _validation_message(error: RequestValidationError) -> str:
    """One line for pydantic's errors, naming the region by its region_id where the error is inside one."""
    body = error.body if isinstance(error.body, dict) else {}
    regions = body.get("regions") if isinstance(body.get("regions"), list) else []
    lines = []
    for item in error.errors()[:MAX_ERRORS_SHOWN]:
        loc = [part for part in item["loc"] if part != "body"]
        where = ".".join(map(str, loc)) or "body"
        if len(loc) >= 2 and loc[0] == "regions" and isinstance(loc[1], int):
            index = loc[1]
            region = regions[index] if index < len(regions) and isinstance(regions[index], dict) else {}
            name = f"region {region['region_id']}" if isinstance(region.get("region_id"), str) else f"regions[{index}]"
            where = name + (": " + ".".join(map(str, loc[2:])) if loc[2:] else "")
        context = item.get("ctx", {}).get("error")
        lines.append(f"{where}: {item['msg']}" + (f" ({context})" if isinstance(context, str) else ""))
    more = len(error.errors()) - MAX_ERRORS_SHOWN
    return "; ".join(lines) + (f"; and {more} more errors" if more > 0 else "")


def create_app(analyzer: Analyzer, limits: ServiceLimits = ServiceLimits()) -> FastAPI:
    """The HTTP service for one analyzer. The caller keeps ownership of the analyzer (and closes it)."""
    app = FastAPI(title="aivd cloud analysis", version=aivd.__version__, description=DESCRIPTION)
    metrics = ServiceMetrics()
    analyzer_slots = threading.BoundedSemaphore(limits.max_concurrent_batches)

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _validation_message(exc))

    @app.post(
        "/v1/analyze", response_model=AnalyzeResponse, summary="Analyse a batch of candidate regions",
        responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    )
    def analyze(request: AnalyzeRequest):
        # A plain def: FastAPI runs it in its thread pool, so decoding and the model never block the event loop.
        if len(request.regions) > limits.max_regions:
            return error(422, f"{len(request.regions)} regions in one request; the limit is {limits.max_regions}")
        seen: set[str] = set()
        for payload in request.regions:
            if payload.region_id in seen:
                return error(422, f"region {payload.region_id}: region_id appears more than once in the request")
            seen.add(payload.region_id)
        start = time.perf_counter()
        try:
            regions = [decode_region(payload, limits.max_crop_side) for payload in request.regions]
        except ValueError as reason:
            return error(422, str(reason))
        decode_s, analyze_s, analyses = time.perf_counter() - start, 0.0, []
        if regions:
            with analyzer_slots:
                start = time.perf_counter()
                try:
                    analyses = analyzer.analyze(regions)
                except AnalyzerError as reason:
                    return error(503, f"analyzer {analyzer.name} failed: {reason}")
                except Exception as bug:
                    # Answered here rather than by an app-wide handler: Starlette re-raises after its 500, and
                    # uvicorn then drops the client's kept-alive connection, failing its retry on a dead socket.
                    log.exception("analyzer %s crashed on a batch of %d regions", analyzer.name, len(regions))
                    return error(500, f"analyzer {analyzer.name} crashed: {type(bug).__name__}: {bug}")
                analyze_s = time.perf_counter() - start
            metrics.analyze_seconds.observe(analyze_s)
            if len(analyses) != len(regions):
                return error(503, f"analyzer {analyzer.name} returned {len(analyses)} analyses for {len(regions)} regions")
            metrics.regions.inc(len(regions))
        return AnalyzeResponse(
            analyzer=analyzer.name, analyses=analyses, timings_ms=TimingsMs(decode=decode_s * 1000, analyze=analyze_s * 1000))

    @app.get("/healthz", summary="Liveness, the analyzer's name and the edge proposal threshold it was calibrated for")
    def healthz() -> dict[str, str | float | None]:
        return {"status": "ok", "analyzer": analyzer.name, "proposal_threshold": getattr(analyzer, "proposal_threshold", None)}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Added after the routes so that the known endpoints are all there; FastAPI builds the middleware stack at startup.
    app.add_middleware(
        HttpAccounting, metrics=metrics, max_body_bytes=limits.max_body_bytes,
        endpoints=frozenset(route.path for route in app.routes),
    )
    return app

