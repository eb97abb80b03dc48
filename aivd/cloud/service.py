"""The cloud analysis service: any `Analyzer` behind HTTP, with limits, clear errors and Prometheus metrics.

`create_app(analyzer)` returns a FastAPI app; `aivd serve cloud` runs it under uvicorn. The edge talks to it
with `aivd.cloud.http_client.HttpAnalyzer`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import aivd
from aivd.auth.web import Access
from aivd.cloud.analyzer import Analyzer, AnalyzerError
from aivd.schema.analysis import DefectAnalysis
from aivd.schema.wire import (
    MAX_CROP_SIDE,
    AnalyzeRequest,
    AnalyzeResponse,
    ErrorResponse,
    Health,
    PublicLimits,
    RegionPayload,
    TimingsMs,
    decode_region,
    payload_pixels,
)
from aivd.serving.body_limit import BodyLimit
from aivd.serving.fair import FairTurns

DESCRIPTION = """
Analyses candidate defect regions cut by the aivd edge tier: for each region, whether it is a real defect,
its class, severity, likely causes and the recommended action.

`POST /v1/analyze` takes a batch of regions (lossless grayscale PNG crops, with the template window when there
is one) and answers one `DefectAnalysis` per region, in order. Every error is `{"detail": "..."}` with one line
naming the region and the reason: 413 for a body over the size limit, 422 for invalid input or a request over the
work budget (`GET /healthz` tells the limits), 503 when the analyzer cannot answer or the request waited past its
deadline, and 500 when the analyzer crashes (the client may retry both). When the service has API keys, every
endpoint but `/healthz` needs `Authorization: Bearer KEY`: 401 without a valid key, 403 for a role too low
(analysing needs an operator key, metrics a viewer key). Clients take turns on the analyzer:
a big request is analysed in slices, so it cannot hold up the others. `GET /metrics` is Prometheus exposition.
"""
log = logging.getLogger(__name__)
MAX_ERRORS_SHOWN = 5  # a request with 500 broken regions gets a readable line, not 500 of them
CLIENT_GONE = 499  # nginx's code for a request whose client closed the connection: only ever seen in /metrics


class ServiceLimits(BaseModel):
    """What one request may ask of the service. The work budget (`max_regions`, `max_pixels`) is checked from
    the PNG headers before anything is decoded."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, description="larger requests get 413 while they are being received")
    max_regions: int = Field(512, gt=0, description="regions per request; more get 422")
    max_crop_side: int = Field(MAX_CROP_SIDE, gt=0, description="pixels per side of a crop; larger get 422")
    max_pixels: int = Field(16_000_000, gt=0, description="crop and template pixels per request; more get 422")
    slice_pixels: int = Field(1_000_000, gt=0, description="pixels analysed in one turn on the analyzer")
    slice_regions: int = Field(64, gt=0, description="regions analysed in one turn on the analyzer")
    request_timeout_s: float = Field(60.0, gt=0, description="a request not answered in this time, waiting included, gets 503")
    # The Analyzer protocol does not promise thread safety, and a model backend on a small machine is fastest
    # one batch at a time; raise this for backends that wait on I/O (remote LLMs).
    max_concurrent_batches: int = Field(1, gt=0, description="analyzer calls running at once; more requests wait their turn")


class ServiceMetrics:
    """The app's Prometheus metrics, in a registry of its own so that several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aivd_cloud_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry)
        self.request_bytes = Counter("aivd_cloud_request_bytes", "HTTP request body bytes received", ["endpoint"], registry=self.registry)
        self.response_bytes = Counter("aivd_cloud_response_bytes", "HTTP response body bytes sent", ["endpoint"], registry=self.registry)
        self.regions = Counter("aivd_cloud_regions_analyzed", "regions analysed successfully", registry=self.registry)
        self.analyze_seconds = Histogram(
            "aivd_cloud_analyze_seconds", "time in Analyzer.analyze per call (one slice of a request)", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.waiting = Gauge("aivd_cloud_requests_waiting", "requests waiting for a turn on the analyzer", registry=self.registry)


class HttpAccounting:
    """ASGI middleware counting every request's endpoint, status code and body bytes."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Unknown paths share one label so that scanners cannot grow the metrics without bound.
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500  # what the client gets if the app fails before answering
        received = sent = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_bytes.labels(endpoint).inc(received)
            self.metrics.response_bytes.labels(endpoint).inc(sent)


class Refused(Exception):
    """A request the service will not analyse: the status to answer and one line saying why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _validation_message(errors: list[ErrorDetails], body: object) -> str:
    """One line for pydantic's errors, naming the region by its region_id where the error is inside one."""
    given = body.get("regions") if isinstance(body, dict) else None
    regions = given if isinstance(given, list) else []
    lines = []
    for item in errors[:MAX_ERRORS_SHOWN]:
        loc = [part for part in item["loc"] if part != "body"]
        where = ".".join(map(str, loc)) or "body"
        if len(loc) >= 2 and loc[0] == "regions" and isinstance(loc[1], int):
            index = loc[1]
            region = regions[index] if index < len(regions) and isinstance(regions[index], dict) else {}
            name = f"region {region['region_id']}" if isinstance(region.get("region_id"), str) else f"regions[{index}]"
            where = name + (": " + ".".join(map(str, loc[2:])) if loc[2:] else "")
        context = item.get("ctx", {}).get("error")
        lines.append(f"{where}: {item['msg']}" + (f" ({context})" if isinstance(context, str) else ""))
    more = len(errors) - MAX_ERRORS_SHOWN
    return "; ".join(lines) + (f"; and {more} more errors" if more > 0 else "")


def parse_request(body: bytes, limits: ServiceLimits) -> tuple[AnalyzeRequest, list[int]]:
    """The request and each region's pixel count, or `Refused`. Nothing is decoded here but the JSON and the PNG
    headers: the work budget is known before any work is done. Runs in a worker thread rather than on the event
    loop, which serves every other connection (json.loads holds the GIL while it runs, so the loop can still
    pause for the parse of one large body: the body limit bounds it)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise Refused(422, f"the body is not valid JSON: {error}") from None
    try:
        request = AnalyzeRequest.model_validate(document)
    except ValidationError as error:
        raise Refused(422, _validation_message(error.errors(), document)) from None
    if len(request.regions) > limits.max_regions:
        raise Refused(422, f"{len(request.regions)} regions in one request; the limit is {limits.max_regions}")
    seen: set[str] = set()
    for payload in request.regions:
        if payload.region_id in seen:
            raise Refused(422, f"region {payload.region_id}: region_id appears more than once in the request")
        seen.add(payload.region_id)
    try:
        pixels = [payload_pixels(payload, limits.max_crop_side) for payload in request.regions]
    except ValueError as reason:
        raise Refused(422, str(reason)) from None
    if sum(pixels) > limits.max_pixels:
        raise Refused(422, f"the regions hold {sum(pixels)} pixels (crops and templates); the limit per request is "
                           f"{limits.max_pixels}: send fewer or smaller regions per request")
    return request, pixels


def slices(pixels: list[int], max_pixels: int, max_regions: int) -> list[range]:
    """Consecutive index ranges of at most `max_regions` regions and `max_pixels` pixels (a bigger region alone)."""
    ranges, start, total = [], 0, 0
    for index, count in enumerate(pixels):
        if index > start and (total + count > max_pixels or index - start >= max_regions):
            ranges.append(range(start, index))
            start, total = index, 0
        total += count
    if start < len(pixels):
        ranges.append(range(start, len(pixels)))
    return ranges


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _openapi_with_request_body(app: FastAPI) -> dict:
    """FastAPI's OpenAPI document plus the schema of `/v1/analyze`'s body, which the handler parses itself."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        request_schema = AnalyzeRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schema.pop("$defs", {}))
        components["AnalyzeRequest"] = request_schema
        app.openapi_schema = schema
    return app.openapi_schema


ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "the body is over `max_body_bytes`"},
    422: {"model": ErrorResponse, "description": "invalid JSON, an invalid region, or over the work budget"},
    500: {"model": ErrorResponse, "description": "the analyzer crashed on this batch"},
    503: {"model": ErrorResponse, "description": "the analyzer failed, or the request was not answered within `request_timeout_s`"},
}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no valid API key in `Authorization: Bearer KEY`"},
    403: {"model": ErrorResponse, "description": "the API key's role may not do this"},
    503: {"model": ErrorResponse, "description": "the API keys cannot be checked now (their database is unreachable)"},
}


def create_app(analyzer: Analyzer, limits: ServiceLimits = ServiceLimits(), access: Access | None = None) -> FastAPI:
    """The HTTP service for one analyzer. The caller keeps ownership of the analyzer and `access` (and closes
    them). With `access` (keys only: `Access.from_db(url, people=False)`), analysing needs an operator key and
    metrics a viewer key, once any key is configured; without, the service is open."""
    app = FastAPI(title="aivd cloud analysis", version=aivd.__version__, description=DESCRIPTION)

    def needs(role: str, responses: dict[int | str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """A route's dependencies and documented error answers, making it need `role` when the service has keys."""
        if access is None:
            return {"dependencies": [], "responses": responses or {}}
        return {"dependencies": [Depends(access.require(role))], "responses": {**AUTH_ERRORS, **(responses or {})}}
    app.openapi = lambda: _openapi_with_request_body(app)  # type: ignore[method-assign]
    metrics = ServiceMetrics()
    turns = FairTurns(limits.max_concurrent_batches)

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    def analyze_slice(payloads: list[RegionPayload], timings: dict[str, float]) -> list[DefectAnalysis]:
        """Decode and analyse one slice, in a worker thread while holding a turn."""
        start = time.perf_counter()
        try:
            regions = [decode_region(payload, limits.max_crop_side) for payload in payloads]
        except ValueError as reason:  # only the headers were checked before: a corrupt PNG shows here
            raise Refused(422, str(reason)) from None
        decoded = time.perf_counter()
        timings["decode"] += decoded - start
        try:
            analyses = analyzer.analyze(regions)
        except AnalyzerError as reason:
            raise Refused(503, f"analyzer {analyzer.name} failed: {reason}") from None
        except Exception as bug:
            log.exception("analyzer %s crashed on a batch of %d regions", analyzer.name, len(regions))
            raise Refused(500, f"analyzer {analyzer.name} crashed: {type(bug).__name__}: {bug}") from None
        analyze_s = time.perf_counter() - decoded
        timings["analyze"] += analyze_s
        metrics.analyze_seconds.observe(analyze_s)
        if len(analyses) != len(regions):
            raise Refused(503, f"analyzer {analyzer.name} returned {len(analyses)} analyses for {len(regions)} regions")
        return analyses

    async def analyze_in_turns(request: AnalyzeRequest, pixels: list[int], client: str,
                               timings: dict[str, float]) -> list[DefectAnalysis]:
        analyses: list[DefectAnalysis] = []
        for part in slices(pixels, limits.slice_pixels, limits.slice_regions):
            metrics.waiting.inc()
            waiting = True
            try:
                async with turns.turn(client):
                    metrics.waiting.dec()
                    waiting = False
                    analyses += await run_in_threadpool(analyze_slice, [request.regions[i] for i in part], timings)
            finally:
                if waiting:
                    metrics.waiting.dec()
        return analyses

    @app.post(
        "/v1/analyze", response_model=AnalyzeResponse, summary="Analyse a batch of candidate regions",
        **needs("operator", ERRORS), openapi_extra={"requestBody": {
            "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AnalyzeRequest"}}}}},
    )
    async def analyze(request: Request):
        start = time.perf_counter()
        body = await request.body()
        try:
            parsed, pixels = await run_in_threadpool(parse_request, body, limits)
        except Refused as refusal:
            return error(refusal.status, refusal.detail)
        del body
        # Clients take turns by address, and within a client its requests do (see FairTurns).
        client = request.client.host if request.client else "unknown"
        timings = {"decode": time.perf_counter() - start, "analyze": 0.0}  # parsing and checking count as decoding
        outcome: list[DefectAnalysis] | Refused | None = None
        async with anyio.create_task_group() as watch:
            async def watch_client() -> None:
                await _until_disconnected(request.receive)
                watch.cancel_scope.cancel()  # the client has gone: stop at the end of the slice in hand

            watch.start_soon(watch_client)
            try:
                with anyio.fail_after(limits.request_timeout_s):
                    outcome = await analyze_in_turns(parsed, pixels, client, timings)
            except Refused as refusal:
                outcome = refusal
            except TimeoutError:
                outcome = Refused(503, f"not answered within {limits.request_timeout_s:g} s: the analyzer is busy; retry later")
            watch.cancel_scope.cancel()
        if outcome is None:
            log.info("client %s went away; its request of %d regions was dropped", client, len(parsed.regions))
            return error(CLIENT_GONE, "the client closed the connection before the answer")
        if isinstance(outcome, Refused):
            return error(outcome.status, outcome.detail)
        metrics.regions.inc(len(outcome))
        return AnalyzeResponse(analyzer=analyzer.name, analyses=outcome,
                               timings_ms=TimingsMs(decode=timings["decode"] * 1000, analyze=timings["analyze"] * 1000))

    public_limits = PublicLimits(max_body_bytes=limits.max_body_bytes, max_regions=limits.max_regions,
                                 max_crop_side=limits.max_crop_side, max_pixels=limits.max_pixels)

    # async: answered on the event loop itself, so busy worker threads never delay it.
    @app.get("/healthz", response_model=Health, summary="Liveness, the analyzer, its calibrated proposal threshold and the request limits")
    async def healthz() -> Health:
        return Health(status="ok", analyzer=analyzer.name, proposal_threshold=getattr(analyzer, "proposal_threshold", None),
                      limits=public_limits)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, **needs("viewer"))
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Added after the routes so that the known endpoints are all there; FastAPI builds the middleware stack at
    # startup. The last added is the outermost: accounting sees the 413s too.
    app.add_middleware(BodyLimit, max_body_bytes=limits.max_body_bytes, advice="send fewer regions per request")
    app.add_middleware(HttpAccounting, metrics=metrics, endpoints=frozenset(route.path for route in app.routes if isinstance(route, Route)))
    return app
