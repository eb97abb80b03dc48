"""What the console reads from the inspection database: SQLAlchemy Core over aivd.store.database's tables.

Every list is paged by keyset (newest first, `id < after`), never by OFFSET: page 1000 costs what page 1 costs,
an index walk from a known id. A page's defects, reviews and per-run counts come in one query each for the whole
page, never one per row. Counts stop at `COUNT_LIMIT`: counting every match of a loose filter over millions of rows
would cost more than the page itself, and "more than 10,000" is all a person reads from it. A filter on defects or
reviews counts among the newest `COUNT_SCAN` images only: one that matches few would otherwise probe every image
in the database to count them, and its total is then a lower bound ("65+").
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import ColumnElement, Table, and_, exists, func, literal, select
from sqlalchemy.engine import Connection

from aivd.schema.analysis import Severity
from aivd.store.database import audit_log, defects, images, reviews, runs, timings

COUNT_LIMIT = 10_000
COUNT_SCAN = 20_000  # the most images a count probes for their defects or reviews
PAGE_LIMIT = 200  # the most rows one page may ask for
SEVERITY_ORDER = [severity.value for severity in Severity]  # worst first
LIVE_WINDOW_S = 60.0


@dataclass(frozen=True)
class ImageFilter:
    """The images list's filters; None (or empty) leaves a filter out. Class, severity and confidence select images
    with at least one reported defect matching all three at once (not the rejected candidates)."""

    since: datetime | None = None
    until: datetime | None = None
    run_id: int | None = None
    source: str | None = None  # a prefix of the image's stored path: a camera's folder, a line's share
    defect_type: str | None = None
    severity: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    status: str | None = None  # ok or error
    reviewed: bool | None = None

    def image_conditions(self) -> list:
        """The conditions on the image's own row."""
        where = []
        if self.since is not None:
            where.append(images.c.inspected_at >= self.since)
        if self.until is not None:
            where.append(images.c.inspected_at < self.until)
        if self.run_id is not None:
            where.append(images.c.run_id == self.run_id)
        if self.source:
            where.append(images.c.image.startswith(self.source, autoescape=True))
        if self.status:
            where.append(images.c.status == self.status)
        return where

    def probe_conditions(self) -> list[ColumnElement[bool]]:
        """The conditions that look up each image's defects or reviews."""
        where: list[ColumnElement[bool]] = []
        defect_where: list[ColumnElement[bool]] = []
        if self.defect_type:
            defect_where.append(defects.c.defect_type == self.defect_type)
        if self.severity:
            defect_where.append(defects.c.severity == self.severity)
        if self.min_confidence is not None:
            defect_where.append(defects.c.confidence >= self.min_confidence)
        if self.max_confidence is not None:
            defect_where.append(defects.c.confidence <= self.max_confidence)
        # A correlated EXISTS, not `id IN (SELECT image_row_id ...)`: SQLite answers the IN form by listing every
        # matching defect first (165,000 for one class over 100,000 images, 0.6-1 s at p95 under load), while EXISTS
        # walks the images newest first and stops at the page's end, each probe one lookup in migration 0007's
        # (image_row_id, rejected, defect_type, ...) index. PostgreSQL plans both forms alike.
        if defect_where:
            where.append(exists(select(literal(1)).where(
                defects.c.image_row_id == images.c.id, defects.c.rejected.is_(False), *defect_where)))
        if self.reviewed is not None:  # reviews are few: listing them once is cheaper than a probe per image
            was_reviewed = images.c.id.in_(select(reviews.c.image_row_id))
            where.append(was_reviewed if self.reviewed else ~was_reviewed)
        return where


@dataclass(frozen=True)
class ImageRow:
    id: int
    run_id: int
    image_id: str
    image: str
    status: str
    error: str | None
    inspected_at: datetime | None
    detector: str | None
    analyzer: str | None
    defects: int  # reported defects, not the rejected candidates
    classes: dict[str, int]
    worst_severity: str | None
    min_confidence: float | None
    reviewed: bool


@dataclass(frozen=True)
class Page:
    items: list
    next_after: int | None  # pass as `after` for the next page; None on the last
    total: int
    total_capped: bool  # counting stopped (at COUNT_LIMIT matches or COUNT_SCAN images): more may match


def _utc(value: datetime | None) -> datetime | None:
    """SQLite returns stored datetimes without their zone; every time aivd stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _bounded_count(connection: Connection, ids) -> tuple[int, bool]:
    counted = connection.execute(select(func.count()).select_from(ids.limit(COUNT_LIMIT + 1).subquery())).scalar_one()
    return min(counted, COUNT_LIMIT), counted > COUNT_LIMIT


def _probed_count(connection: Connection, image_where: list, probes: list) -> tuple[int, bool]:
    """The images matching `probes` among the newest COUNT_SCAN that `image_where` selects, bounded like
    _bounded_count, and whether counting stopped short: one statement, each limit an index walk."""
    def newest(n):
        return select(images.c.id).where(*image_where).order_by(images.c.id.desc()).limit(n)
    scanned = newest(COUNT_SCAN).subquery()
    matched = select(images.c.id).where(images.c.id.in_(select(scanned.c.id)), *probes).limit(COUNT_LIMIT + 1).subquery()
    counted, seen = connection.execute(select(
        select(func.count()).select_from(matched).scalar_subquery(),
        select(func.count()).select_from(newest(COUNT_SCAN + 1).subquery()).scalar_subquery())).one()
    return min(counted, COUNT_LIMIT), counted > COUNT_LIMIT or seen > COUNT_SCAN


def _worst(severities) -> str | None:
    ranks = [SEVERITY_ORDER.index(s) for s in severities if s in SEVERITY_ORDER]
    return SEVERITY_ORDER[min(ranks)] if ranks else None


def list_images(connection: Connection, filters: ImageFilter, limit: int = 50, after: int | None = None) -> Page:
    """One page of images matching `filters`, newest first, each with its reported defects summed up."""
    limit = max(1, min(limit, PAGE_LIMIT))
    image_where, probes = filters.image_conditions(), filters.probe_conditions()
    where = image_where + probes
    page_where = where + ([images.c.id < after] if after is not None else [])
    columns = [images.c[name] for name in ("id", "run_id", "image_id", "image", "status", "error", "inspected_at", "detector", "analyzer")]
    rows = connection.execute(select(*columns).where(*page_where).order_by(images.c.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [row.id for row in rows]
    found: dict[int, list] = defaultdict(list)
    reviewed: set[int] = set()
    if ids:
        found_rows = connection.execute(
            select(defects.c.image_row_id, defects.c.defect_type, defects.c.severity, defects.c.confidence)
            .where(defects.c.image_row_id.in_(ids), defects.c.rejected.is_(False)))
        for defect in found_rows:
            found[defect.image_row_id].append(defect)
        reviewed = set(connection.execute(select(reviews.c.image_row_id).where(reviews.c.image_row_id.in_(ids)).distinct()).scalars())
    if probes:
        total, capped = _probed_count(connection, image_where, probes)
    else:
        total, capped = _bounded_count(connection, select(images.c.id).where(*image_where))
    items = [
        ImageRow(
            id=row.id, run_id=row.run_id, image_id=row.image_id, image=row.image, status=row.status, error=row.error,
            inspected_at=_utc(row.inspected_at), detector=row.detector, analyzer=row.analyzer,
            defects=len(found[row.id]), classes=dict(Counter(d.defect_type for d in found[row.id]).most_common()),
            worst_severity=_worst(d.severity for d in found[row.id]),
            min_confidence=min((d.confidence for d in found[row.id]), default=None), reviewed=row.id in reviewed,
        )
        for row in rows
    ]
    return Page(items, rows[-1].id if more else None, total, capped)


def defect_dict(row) -> dict:
    return {
        "id": row.id, "rejected": row.rejected, "bbox": [row.x1, row.y1, row.x2, row.y2], "defect_type": row.defect_type,
        "confidence": row.confidence, "source": row.source, "edge_type": row.edge_type, "edge_confidence": row.edge_confidence,
        "severity": row.severity, "description": row.description, "recommended_action": row.recommended_action,
        "likely_causes": json.loads(row.likely_causes), "offload": json.loads(row.offload) if row.offload else None,
    }


def review_dict(row) -> dict:
    return {"id": row.id, "reviewer": row.reviewer, "reviewed_at": _utc(row.reviewed_at), "verdict": row.verdict,
            "labels": json.loads(row.labels), "note": row.note}


def image_detail(connection: Connection, image_row_id: int) -> dict | None:
    """An image's row with all its candidate regions (reported and rejected), its stage timings and its reviews,
    newest first; None when there is no such image."""
    row = connection.execute(select(images).where(images.c.id == image_row_id)).one_or_none()
    if row is None:
        return None
    regions = connection.execute(select(defects).where(defects.c.image_row_id == image_row_id).order_by(defects.c.id)).all()
    stages = connection.execute(select(timings.c.stage, timings.c.ms).where(timings.c.image_row_id == image_row_id)).all()
    history = connection.execute(
        select(reviews).where(reviews.c.image_row_id == image_row_id).order_by(reviews.c.id.desc())).all()
    return {
        **{name: row._mapping[name] for name in ("id", "run_id", "image_id", "image", "template", "status", "error", "detector",
                                                  "analyzer", "cloud_error", "bytes_to_cloud", "bytes_from_cloud")},
        "inspected_at": _utc(row.inspected_at), "timings_ms": {stage: ms for stage, ms in stages},
        "defects": [defect_dict(region) for region in regions], "reviews": [review_dict(review) for review in history],
    }


def image_path(connection: Connection, image_row_id: int) -> str | None:
    """The path the database stores for an image: the only files the console serves."""
    return connection.execute(select(images.c.image).where(images.c.id == image_row_id)).scalar_one_or_none()


def defect_region(connection: Connection, defect_id: int) -> tuple[str, tuple[float, float, float, float]] | None:
    """The image path and box of one candidate region, for its crop."""
    row = connection.execute(select(images.c.image, defects.c.x1, defects.c.y1, defects.c.x2, defects.c.y2)
                             .join(images, defects.c.image_row_id == images.c.id).where(defects.c.id == defect_id)).one_or_none()
    return None if row is None else (row.image, (row.x1, row.y1, row.x2, row.y2))


def _newest_first(connection: Connection, table: Table, limit: int, after: int | None) -> tuple[list, int | None]:
    """One keyset page of `table`'s rows, newest id first, below id `after`: the rows, and the `after` of the next
    page (None on the last)."""
    limit = max(1, min(limit, PAGE_LIMIT))
    rows = connection.execute(select(table).where(*([table.c.id < after] if after is not None else []))
                              .order_by(table.c.id.desc()).limit(limit + 1)).all()
    return list(rows[:limit]), rows[limit - 1].id if len(rows) > limit else None


def list_runs(connection: Connection, limit: int = 50, after: int | None = None) -> Page:
    """Runs newest first, each with the images recorded so far (a running run's `images` total is not set yet)."""
    rows, next_after = _newest_first(connection, runs, limit, after)
    ids = [row.id for row in rows]
    recorded: dict[int, int] = dict(connection.execute(select(images.c.run_id, func.count()).where(images.c.run_id.in_(ids))
                                       .group_by(images.c.run_id)).all()) if ids else {}
    items = [{"id": row.id, "started_at": _utc(row.started_at), "finished_at": _utc(row.finished_at), "status": row.status,
              "command": row.command, "images": row.images, "ok": row.ok, "failed": row.failed, "defects": row.defects,
              "recorded": recorded.get(row.id, 0)} for row in rows]
    total, capped = _bounded_count(connection, select(runs.c.id))
    return Page(items, next_after, total, capped)


def run_exists(connection: Connection, run_id: int) -> bool:
    return connection.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None


def defect_classes(connection: Connection) -> list[str]:
    """The classes the database has defects of, for the filter form (an index scan of defects.defect_type)."""
    return list(connection.execute(select(defects.c.defect_type).distinct().order_by(defects.c.defect_type)).scalars())


def list_audit(connection: Connection, limit: int = 50, after: int | None = None) -> Page:
    rows, next_after = _newest_first(connection, audit_log, limit, after)
    items = [{"id": row.id, "at": _utc(row.at), "actor": row.actor, "action": row.action, "target": row.target,
              "detail": json.loads(row.detail) if row.detail else None, "remote_addr": row.remote_addr} for row in rows]
    total, capped = _bounded_count(connection, select(audit_log.c.id))
    return Page(items, next_after, total, capped)


def live_stats(connection: Connection, now: datetime | None = None, window_s: float = LIVE_WINDOW_S) -> dict:
    """The line over the last `window_s` seconds, by when records were stored: throughput, error rate, the share of
    candidate regions offloaded to the cloud, latency per stage (p50, p95) and the models that served."""
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(seconds=window_s)
    in_window = and_(images.c.inspected_at >= start, images.c.inspected_at <= now)
    counts = connection.execute(select(images.c.status, func.count()).where(in_window).group_by(images.c.status)).all()
    by_status: dict[str, int] = dict(counts)
    total = sum(by_status.values())
    errors = by_status.get("error", 0)
    # The offload note is JSON text (portable across SQLite and PostgreSQL, see aivd.store.database), written by
    # json.dumps from OffloadNote, whose first field is `sent`: matching its text avoids parsing every region.
    region_join = defects.join(images, defects.c.image_row_id == images.c.id)
    regions, sent = connection.execute(
        select(func.count(defects.c.offload), func.count().filter(defects.c.offload.like('{"sent": true%')))
        .select_from(region_join).where(in_window)).one()
    stage_rows = connection.execute(select(timings.c.stage, timings.c.ms).select_from(timings.join(images, timings.c.image_row_id == images.c.id))
                                    .where(in_window)).all()
    by_stage: dict[str, list[float]] = defaultdict(list)
    for stage, ms in stage_rows:
        by_stage[stage].append(ms)
    latency = {stage: {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)), "count": len(values)}
               for stage, values in sorted(by_stage.items())}
    models: dict[str, int] = dict(connection.execute(select(images.c.detector, func.count()).where(in_window, images.c.detector.is_not(None))
                                     .group_by(images.c.detector)).all())
    newest = connection.execute(select(images.c.inspected_at, images.c.detector).order_by(images.c.id.desc()).limit(1)).one_or_none()
    return {
        "window_s": window_s, "at": now, "images": total, "throughput_per_s": total / window_s, "errors": errors,
        "error_rate": errors / total if total else 0.0, "regions": regions, "offloaded": sent,
        "offload_ratio": sent / regions if regions else 0.0, "latency_ms": latency, "models": models,
        "last_inspected_at": _utc(newest.inspected_at) if newest else None, "last_detector": newest.detector if newest else None,
    }
