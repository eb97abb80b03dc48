"""The operator console: server-rendered pages and a JSON API over the inspection database.

Roles (aivd.auth): a viewer sees everything but the audit log; an operator also reviews images and exports the
reviewed data set; an admin also promotes and rolls back model versions and reads the audit log. Pages send a
signed-out browser to /login; the API answers 401. Every form and every unsafe API call under a cookie session
carries the session's CSRF token (`access.csrf`). The only files served are the static assets shipped in the
package and the image files the database names.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import cv2
import httpx
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as Path_
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image, UnidentifiedImageError
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BeforeValidator, TypeAdapter, ValidationError

import aivd
from aivd.auth.web import Access, login_router
from aivd.console import api_models as m
from aivd.console import queries
from aivd.core import DEEPPCB_CLASSES
from aivd.core.errors import AivdError
from aivd.core.redaction import redact_url
from aivd.model_store import ModelStore, ModelStoreError
from aivd.review import ReviewError, ReviewStore, export_dataset
from aivd.store import ResultStore


def _not_a_number(value: Any) -> Any:
    """Pydantic reads a number as a Unix time where a datetime is expected; the API documents ISO 8601 date-times
    alone (OpenAPI `format: date-time`), so a number is refused rather than taken for a moment in 1970."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("expected an ISO 8601 date-time such as 2026-12-04T08:00:00Z, not a number")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_not_a_number)]
HERE = Path(__file__).parent
# What the image route serves, by the format Pillow finds in the file's content (not its name).
IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff", "WEBP": "image/webp"}
CROP_SIDE = 160
CLASSES_TTL_S = 60.0
RUNTIME_TTL_S = 1.0
# Pages load only the package's own script and style; no inline script can run, nothing from another origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Row ids are 32-bit INTEGER columns (PostgreSQL refuses larger values with an error, not an empty answer), and
# PostgreSQL text cannot hold NUL: both are refused as bad requests before they reach the database.
MAX_ID, NO_NUL = m.MAX_ID, m.NO_NUL


class TimedCache:
    """One value, recomputed when older than `ttl_s`: what every live-page poll would otherwise ask again."""

    def __init__(self, ttl_s: float, compute) -> None:
        self.ttl_s, self.compute = ttl_s, compute
        self._lock = threading.Lock()
        self._at, self._value = -float("inf"), None

    def get(self):
        with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                self._value, self._at = self.compute(), time.monotonic()
            return self._value


def _image_format(path: str) -> tuple[str, tuple[int, int]] | None:
    """The media type and size of an image file as its content says, or None when it is not one the console serves."""
    try:
        with Image.open(path) as image:  # reads the header only
            media = IMAGE_TYPES.get(image.format or "")
            return (media, image.size) if media else None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):  # the last: over 179 Mpx
        return None


def invalid(loc: tuple, message: str, value=None) -> RequestValidationError:
    """A 422 in the shape FastAPI gives its own (and documents in the OpenAPI schema): `detail` is a list of errors."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": value}])


def _as_utc(value: datetime | None) -> datetime | None:
    """A time from a form or a query in UTC, the zone aivd stores times in; one without a zone (a datetime-local
    field) is taken as UTC. SQLite compares stored times as text, so a parameter must be in that zone."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:  # year 1 at UTC+1 is before year 1 in UTC
        raise invalid(("query",), f"{value} is out of range", str(value)) from None


def _known_parameters_only(request: Request) -> None:
    """An API query parameter the route does not take is refused (422), not ignored: `?class=open` for
    `?defect_type=open` would otherwise answer every image, as if filtered."""
    route = request.scope.get("route")
    if not request.url.path.startswith("/api/") or not isinstance(route, APIRoute):
        return
    known, pending = set(), [route.dependant]
    while pending:  # the route's own parameters and those of its dependencies (the filters)
        dependant = pending.pop()
        known |= {param.alias for param in dependant.query_params}
        pending += dependant.dependencies
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name), "input": request.query_params[name],
                                       "msg": f"unknown query parameter; this route takes {sorted(known) or 'none'}"} for name in unknown])


NODE_LIST = TypeAdapter(list[m.RuntimeNode])


def _runtime_status(url: str, key: str | None) -> tuple[dict | None, str | None]:
    """What the runtime's /v1/router reports, or why it cannot be read (shown on the live page, so with the URL's
    password redacted)."""
    base = url.rstrip("/")
    try:
        answer = httpx.get(f"{base}/v1/router", timeout=1.0, headers={"Authorization": f"Bearer {key}"} if key else {})
        answer.raise_for_status()
        body = answer.json()
    except (httpx.HTTPError, ValueError) as error:
        return None, f"{redact_url(base)}: {str(error).replace(base, redact_url(base))}"
    if not isinstance(body, dict):
        return {"value": body}, None
    try:  # the live page's node table reads these fields
        body["nodes"] = [node.model_dump() for node in NODE_LIST.validate_python(body.get("nodes", []))]
    except ValidationError as error:
        return None, f"{redact_url(base)}: its edge nodes are not as aivd's /v1/router reports them ({error.error_count()} errors)"
    return body, None


def _run_metrics(url: str) -> dict:
    """The drift state and model of a live run, from the Prometheus metrics it serves (`aivd inspect|watch
    --metrics-port`, aivd.pipeline.live_update.LiveMetrics)."""
    shown = redact_url(url)
    try:
        answer = httpx.get(url, timeout=0.5)
        answer.raise_for_status()
        families = {family.name: family for family in text_string_to_metric_families(answer.text)}
    except (httpx.HTTPError, ValueError) as error:
        return {"url": shown, "error": str(error).replace(url, shown)}

    def value(name: str) -> float | None:
        family = families.get(name)
        return family.samples[0].value if family is not None and family.samples else None

    drift = value("aivd_drift")
    model = families.get("aivd_edge_model_info")  # an Info is exposed as a gauge named _info
    updates = families.get("aivd_model_updates")
    return {
        "url": shown, "error": None, "drift": None if drift is None else drift >= 1, "cloud_disagreement": value("aivd_cloud_disagreement"),
        "offload_ratio": value("aivd_offload_ratio"),
        "model": "@".join(filter(None, (model.samples[0].labels.get("model"), model.samples[0].labels.get("version"))))
        if model is not None and model.samples else None,  # as images.detector writes it: name@version
        "updates": {sample.labels["action"]: int(sample.value) for sample in updates.samples if sample.name.endswith("_total")}
        if updates is not None else {},
    }


def build_console_app(db_url: str, access: Access, model_store: Path | str | None = None, runtime_url: str | None = None,
                      runtime_key: str | None = None, metrics_urls: Sequence[str] = ()) -> FastAPI:
    """The console over the database at `db_url` (its schema brought up to date), guarded by `access`
    (aivd.auth.web.Access); `model_store` enables /models, `runtime_url` adds a runtime's router state to the live
    view, read with the API key `runtime_key` (a viewer's is enough), and each of `metrics_urls` a live run's drift
    state and model (its Prometheus metrics)."""
    audit = access.audit
    if audit is None:  # reviews, promotions and rollbacks must be recorded
        raise ValueError("the console needs an Access with an audit log (Access.from_db(url))")
    store = ResultStore(db_url)
    reviews = ReviewStore(db_url)
    models = ModelStore(model_store) if model_store is not None else None
    app = FastAPI(title="aivd console", version=aivd.__version__, dependencies=[Depends(_known_parameters_only)],
                  description="The operator console's JSON API: what its pages show. Send `Authorization: Bearer KEY`.")
    app.router.on_shutdown.extend([store.close, reviews.close])
    templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(login_router(access, templates=templates))
    classes_cache = TimedCache(CLASSES_TTL_S, lambda: _read(queries.defect_classes) or list(DEEPPCB_CLASSES.names))
    run_classes: dict[int, TimedCache] = {}
    metrics_cache = TimedCache(RUNTIME_TTL_S, lambda: [_run_metrics(url) for url in metrics_urls])
    runtime_cache = TimedCache(RUNTIME_TTL_S, lambda: _runtime_status(runtime_url, runtime_key)) if runtime_url else None

    @contextmanager
    def reading():
        with store.errors("read"), store.engine.connect() as connection:
            yield connection

    def _read(query, *args, **kwargs):
        with reading() as connection:
            return query(connection, *args, **kwargs)

    @app.middleware("http")
    async def blank_fields_are_unset(request: Request, call_next):
        """A GET form sends its empty fields as `name=`; on the pages that means "no filter". (The API keeps them,
        and refuses an empty number as its schema says.)"""
        if request.method == "GET" and not request.url.path.startswith("/api/") and b"=&" in request.scope["query_string"] + b"&":
            kept = [(key, value) for key, value in request.query_params.multi_items() if value != ""]
            request.scope["query_string"] = urlencode(kept).encode()
        return await call_next(request)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(AivdError)
    async def one_line(_request: Request, error: AivdError):
        return JSONResponse({"detail": str(error)}, status_code=503)

    viewer_page, operator_page, admin_page = (Depends(access.require(role, page=True)) for role in ("viewer", "operator", "admin"))
    viewer, operator, admin = (Depends(access.require(role)) for role in ("viewer", "operator", "admin"))
    csrf = Depends(access.csrf)
    auth_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": m.Error, "description": "not signed in and no valid API key"},
        403: {"model": m.Error, "description": "the role is too low (or the CSRF token is wrong)"}}
    not_found: dict[int | str, dict[str, Any]] = {404: {"model": m.Error, "description": "no such record"}}

    def page(request: Request, name: str, principal, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"principal": principal, **context})

    # --- filters, shared by the images page and its API -------------------------------------------------------------

    def image_filter(
        since: IsoDatetime | None = Query(None, description="inspected at or after (ISO 8601)"),
        until: IsoDatetime | None = Query(None, description="inspected before (ISO 8601)"),
        run_id: int | None = Query(None, ge=1, le=MAX_ID),
        # Blank text is no filter, as the pages' GET form sends it; plain strings rather than nullable ones, so that
        # the OpenAPI document says so (and a fuzzer does not take the text "false" for a boolean made invalid).
        source: str = Query("", max_length=1000, pattern=NO_NUL, description="a prefix of the image's stored path; blank: any"),
        defect_type: str = Query("", max_length=64, pattern=NO_NUL, description="has a reported defect of this class; blank: any"),
        severity: Literal["critical", "major", "minor"] | None = Query(None),
        min_confidence: float | None = Query(None, ge=0, le=1),
        max_confidence: float | None = Query(None, ge=0, le=1),
        status: Literal["ok", "error"] | None = Query(None),
        reviewed: bool | None = Query(None),
    ) -> queries.ImageFilter:
        return queries.ImageFilter(_as_utc(since), _as_utc(until), run_id, source or None, defect_type or None, severity, min_confidence,
                                   max_confidence, status, reviewed)

    # Each route gets parameter objects of its own: FastAPI fills in a parameter's name on the object it is given.
    def row_id():
        return Path_(ge=1, le=MAX_ID)

    def limit_param():
        return Query(50, ge=1, le=queries.PAGE_LIMIT)

    def after_param():
        return Query(None, ge=1, le=MAX_ID, description="the previous page's next_after")

    def page_of(found: queries.Page) -> dict:
        return asdict(found)  # its items too, dataclasses or dicts

    def detail(image_row_id: int) -> dict:
        found = _read(queries.image_detail, image_row_id)
        if found is None:
            raise HTTPException(404, f"no image {image_row_id}")
        size = _image_format(found["image"])
        found["width"], found["height"] = size[1] if size else (None, None)
        return found

    def live() -> dict:
        stats = _read(queries.live_stats)
        stats["runtime"], stats["runtime_error"] = runtime_cache.get() if runtime_cache else (None, None)
        stats["lines"] = metrics_cache.get()
        return stats

    # --- JSON API -------------------------------------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/live", response_model=m.Live, responses=auth_errors, dependencies=[viewer])
    def api_live():
        """The last minute of the line: throughput, latency per stage, error rate, offload ratio, models served."""
        return live()

    @app.get("/api/images", response_model=m.ImagePage, responses=auth_errors, dependencies=[viewer])
    def api_images(filters: queries.ImageFilter = Depends(image_filter), limit: int = limit_param(), after: int | None = after_param()):
        """Images matching the filters, newest first, by pages of `limit`."""
        return page_of(_read(queries.list_images, filters, limit, after))

    @app.get("/api/images/{image_row_id}", response_model=m.ImageDetail, responses={**auth_errors, **not_found}, dependencies=[viewer])
    def api_image(image_row_id: int = row_id()):
        """One image with every candidate region and its reviews."""
        return detail(image_row_id)

    @app.get("/api/images/{image_row_id}/file", response_class=FileResponse, dependencies=[viewer],
             responses={**auth_errors, **not_found, 200: {"content": {media: {} for media in IMAGE_TYPES.values()}, "description": "the image"},
                        415: {"model": m.Error, "description": "the stored path is not an image file the console serves"}})
    def api_image_file(image_row_id: int = row_id()):
        """The image file, from the path the database stores for it."""
        path = _read(queries.image_path, image_row_id)
        if path is None:
            raise HTTPException(404, f"no image {image_row_id}")
        if not Path(path).is_file():
            raise HTTPException(404, f"image {image_row_id}'s file is gone")
        found = _image_format(path)
        if found is None:
            raise HTTPException(415, f"image {image_row_id}'s file is not an image the console serves")
        return FileResponse(path, media_type=found[0])

    @app.get("/api/defects/{defect_id}/crop", response_class=Response, dependencies=[viewer],
             responses={**auth_errors, **not_found, 200: {"content": {"image/jpeg": {}}, "description": "the region, with a margin"},
                        415: {"model": m.Error, "description": "the image file cannot be read"}})
    def api_crop(defect_id: int = row_id()):
        """A thumbnail of one candidate region."""
        region = _read(queries.defect_region, defect_id)
        if region is None:
            raise HTTPException(404, f"no defect {defect_id}")
        path, (x1, y1, x2, y2) = region
        if not Path(path).is_file() or _image_format(path) is None or (picture := cv2.imread(path)) is None:
            raise HTTPException(415, f"defect {defect_id}'s image cannot be read")
        margin = max(x2 - x1, y2 - y1) * 0.5 + 4
        height, width = picture.shape[:2]
        left, top = int(max(0, x1 - margin)), int(max(0, y1 - margin))
        right, bottom = int(min(width, x2 + margin)), int(min(height, y2 + margin))
        if right <= left or bottom <= top:
            raise HTTPException(415, f"defect {defect_id}'s box lies outside its image")
        crop = picture[top:bottom, left:right]
        scale = CROP_SIDE / max(crop.shape[:2])
        if scale < 1:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])[1]
        return Response(encoded.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/runs", response_model=m.RunPage, responses=auth_errors, dependencies=[viewer])
    def api_runs(limit: int = limit_param(), after: int | None = after_param()):
        """Runs, newest first."""
        return page_of(_read(queries.list_runs, limit, after))

    @app.get("/api/classes", response_model=list[str], responses={**auth_errors, **not_found}, dependencies=[viewer])
    def api_classes(run_id: int | None = Query(None, ge=1, le=MAX_ID, description="the classes a review of this run may name")):
        """Defect classes: those a review of run `run_id` may name (the review page's number keys, in this order), or
        without it every class the database has defects of."""
        if run_id is None:
            return classes_cache.get()
        if not _read(queries.run_exists, run_id):
            raise HTTPException(404, f"no run {run_id}")
        # Reading a run's classes scans its defects when its config lacks them (a quarter of a second for 100k
        # images): remembered per run, like the database's classes. Only existing runs get an entry.
        if run_id not in run_classes:
            run_classes[run_id] = TimedCache(CLASSES_TTL_S, lambda: reviews.known_classes(run_id))
        return run_classes[run_id].get()

    def model_state() -> dict:
        if models is None:
            return {"configured": False, "current": None, "versions": [], "history": []}
        return {"configured": True, "current": models.current(), "versions": [models.info(v) for v in models.versions()],
                "history": models.history()[::-1]}

    @app.get("/api/models", response_model=m.Models, responses=auth_errors, dependencies=[viewer])
    def api_models():
        """The edge model versions, which one is served, and every promotion and rollback, newest first."""
        return model_state()

    @app.get("/api/audit", response_model=m.AuditPage, responses=auth_errors, dependencies=[admin])
    def api_audit(limit: int = limit_param(), after: int | None = after_param()):
        """Who did what, newest first (admins only)."""
        return page_of(_read(queries.list_audit, limit, after))

    @app.get("/api/review/queue", response_model=list[m.QueueEntry], responses=auth_errors, dependencies=[operator])
    def api_queue(limit: int = limit_param(), run_id: int | None = Query(None, ge=1, le=MAX_ID)):
        """The images a human label would teach most, most useful first; reviewed images are left out."""
        return [{"image_row_id": item.image_row_id, "priority": item.priority, "reasons": list(item.reasons)}
                for item in reviews.queue(limit, run_id=run_id)]

    @app.post("/api/reviews", response_model=m.ReviewSaved, dependencies=[csrf],
              responses={**auth_errors, **not_found, 400: {"model": m.Error, "description": "the body is not JSON"},
                         422: {"description": "a box, class or defect id that does not fit the image (aivd.review checks each)"}})
    def api_review(review: m.ReviewIn, request: Request, principal=operator):
        """Store a human review of an image: a labelling of its own, never a change to the machine's records."""
        if _read(queries.image_path, review.image_row_id) is None:
            raise HTTPException(404, f"no image {review.image_row_id}")
        labels = [label.model_dump(mode="json") for label in review.labels]
        try:
            review_id = reviews.add(review.image_row_id, principal.name, review.verdict, labels, review.note)
        except ReviewError as error:
            raise invalid(("body", "labels"), str(error)) from None
        audit.record(principal.name, "review", target=f"image:{review.image_row_id}",
                     detail={"review": review_id, "verdict": review.verdict, "boxes": len(labels)},
                     remote_addr=request.client.host if request.client else None)
        return {"id": review_id}

    @app.get("/api/export", response_class=Response, dependencies=[operator],
             responses={**auth_errors, 200: {"content": {"application/zip": {}}, "description": "the reviewed images and their labels"},
                        409: {"model": m.Error, "description": "nothing to export: no reviewed image, or one whose file is gone"}})
    def api_export(format: Literal["yolo", "voc", "coco"] = Query("yolo", description="the data set's layout")):
        """The reviewed images with their human labels as a data set (`aivd train pack`, `aivd finetune build` read it), zipped."""
        folder = Path(tempfile.mkdtemp(prefix="aivd-export-"))
        try:
            try:
                export_dataset(db_url, folder / "dataset", format)
            except ReviewError as error:
                raise HTTPException(409, str(error)) from None
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
                for path in sorted((folder / "dataset").rglob("*")):
                    if path.is_file():
                        zipped.write(path, path.relative_to(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Response(archive.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="aivd-reviewed-{format}.zip"'})

    # --- pages ----------------------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def live_page(request: Request, principal=viewer_page):
        return page(request, "live.html", principal, live=live())

    @app.get("/images", response_class=HTMLResponse, include_in_schema=False)
    def images_page(request: Request, filters: queries.ImageFilter = Depends(image_filter), limit: int = limit_param(),
                    after: int | None = after_param(), principal=viewer_page):
        found = _read(queries.list_images, filters, limit, after)
        query = {key: value for key, value in request.query_params.items() if key != "after" and value != ""}
        return page(request, "images.html", principal, found=found, query=query, classes=classes_cache.get())

    @app.get("/images/{image_row_id}", response_class=HTMLResponse, include_in_schema=False)
    def image_page(request: Request, image_row_id: int = row_id(), principal=viewer_page):
        return page(request, "image.html", principal, image=detail(image_row_id))

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(request: Request, limit: int = limit_param(), after: int | None = after_param(), principal=viewer_page):
        return page(request, "runs.html", principal, found=_read(queries.list_runs, limit, after))

    @app.get("/models", response_class=HTMLResponse, include_in_schema=False)
    def models_page(request: Request, principal=viewer_page):
        return page(request, "models.html", principal, state=model_state())

    def change_model(request: Request, principal, action: str, fields) -> RedirectResponse:
        if models is None:
            raise HTTPException(404, "the console was started without --model-store")
        try:
            form = m.ModelChange.model_validate({name: fields[name] for name in ("version", "reason") if name in fields})
        except ValidationError as error:
            raise RequestValidationError(error.errors(include_url=False, include_context=False)) from None
        reason = form.reason or f"console: {principal.name}"
        version = form.version
        try:
            previous = models.current()
            if action == "promote":
                if version is None:
                    raise invalid(("body", "version"), "which version to promote?")
                models.promote(version, reason)
            else:
                version = models.rollback(reason)
        except ModelStoreError as error:
            raise HTTPException(409, str(error)) from None
        audit.record(principal.name, action, target=f"model:{version}", detail={"previous": previous, "reason": reason},
                     remote_addr=request.client.host if request.client else None)
        return RedirectResponse("/models", status_code=303)

    # The form is read in the route rather than declared as Form parameters: FastAPI reads declared ones before the
    # dependencies run, and the CSRF check must read the same body first.
    @app.post("/models/promote", include_in_schema=False, dependencies=[csrf])
    async def promote(request: Request, principal=admin_page):
        return await run_in_threadpool(change_model, request, principal, "promote", await request.form())

    @app.post("/models/rollback", include_in_schema=False, dependencies=[csrf])
    async def rollback(request: Request, principal=admin_page):
        return await run_in_threadpool(change_model, request, principal, "rollback", await request.form())

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_page(request: Request, run_id: int | None = Query(None, ge=1, le=MAX_ID), principal=operator_page):
        return page(request, "review.html", principal, run_id=run_id)

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_page(request: Request, limit: int = limit_param(), after: int | None = after_param(), principal=admin_page):
        return page(request, "audit.html", principal, found=_read(queries.list_audit, limit, after))

    return app
