"""`ReviewStore`: human reviews of inspected images, the queue of images worth reviewing, and the feed learners read.

A review labels a whole image (table `reviews`, aivd.store.database): it never changes the machine's rows in
`defects`, and an image's newest review is its human label; older ones stay as its history. Labels are checked
before they are stored (one line saying which label and why): a box must have x1 < x2 and y1 < y2, lie inside the
image when its file can be read for its size, and name one of the run's classes (`known_classes`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import BigInteger, ColumnElement, and_, cast, exists, func, select

from aivd.core import Detections, LabelMap
from aivd.core.errors import AivdError
from aivd.data.dataset import PIXEL_TOLERANCE
from aivd.data.images import ImageError, read_image_size
from aivd.store.database import StoreBacked, defects, images, reviews, runs
from aivd.store.priority import MOST, image_terms

VERDICTS = ("accepted", "corrected", "good")


class ReviewError(AivdError, ValueError):
    """A review that cannot be stored as given (unknown image, bad verdict or label); the message says which."""


@dataclass(frozen=True)
class ReviewLabel:
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the image
    defect_type: str
    defect_id: int | None = None  # the machine's defect row this label keeps or corrects; None for a box a human added

    def as_json(self) -> dict:
        return {"bbox": list(self.bbox), "defect_type": self.defect_type, "defect_id": self.defect_id}


@dataclass(frozen=True)
class Review:
    id: int
    image_row_id: int
    reviewer: str
    reviewed_at: datetime
    verdict: str
    labels: tuple[ReviewLabel, ...]
    note: str | None
    # The reviewed image, so that a learner or an export can read its pixels without another query.
    run_id: int
    image_id: str
    image: str
    template: str | None

    def detections(self, classes: LabelMap) -> Detections:
        """The review's boxes as Detections of `classes` (score 1); a box of a class `classes` lacks is left out,
        since a model cannot be taught a class it does not have."""
        kept = [label for label in self.labels if label.defect_type in classes.names]
        return Detections(np.array([label.bbox for label in kept], np.float32).reshape(-1, 4), np.ones(len(kept), np.float32),
                          np.array([classes.id(label.defect_type) for label in kept], np.int64), classes)


@dataclass(frozen=True)
class QueueItem:
    image_row_id: int
    priority: float
    reasons: tuple[str, ...]


_REVIEW_COLUMNS = (reviews, images.c.run_id, images.c.image_id, images.c.image, images.c.template)


def _review(row) -> Review:
    labels = tuple(ReviewLabel(tuple(item["bbox"]), item["defect_type"], item.get("defect_id")) for item in json.loads(row.labels))
    reviewed_at = row.reviewed_at if row.reviewed_at.tzinfo else row.reviewed_at.replace(tzinfo=timezone.utc)  # SQLite drops it
    return Review(row.id, row.image_row_id, row.reviewer, reviewed_at, row.verdict, labels, row.note,
                  row.run_id, row.image_id, row.image, row.template)


# Knuth's multiplicative hash: an odd constant near 2^32 / golden ratio, which spreads consecutive ids over [0, 2^32).
_HASH = 2654435761


def _audited(share: float, seed: int) -> ColumnElement[bool]:
    """Whether an image is in the seeded random audit share: Knuth's multiplicative hash of its row id modulo 2^32,
    shifted by an offset drawn from `seed`, below `share` of 2^32. Drawn per image, not per call, so an image stays in
    or out of the audit share however the queue is paged or refreshed. In SQL, so that the queue filters on it while
    it walks its index; the product stays below 2^63 for every 32-bit id (the id is widened to 64 bits first)."""
    offset = int(np.random.default_rng(seed).integers(0, 2**32))
    return (cast(images.c.id, BigInteger) * _HASH + offset) % 2**32 < share * 2**32


class ReviewStore(StoreBacked):
    """Reviews in the result database at a SQLAlchemy URL (brought up to date like every store); a context manager."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._errors, self._engine = self._store.errors, self._store.engine

    def add(self, image_row_id: int, reviewer: str, verdict: str, labels=None, note: str | None = None) -> int:
        """Store one review of image row `image_row_id`; returns its id. `labels` are `ReviewLabel`s or dicts
        {"bbox", "defect_type", "defect_id"}; with verdict `accepted` and no labels, the machine's reported defects
        as they are; with `good`, none may be given."""
        if verdict not in VERDICTS:
            raise ReviewError(f"review of image {image_row_id}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not reviewer or not reviewer.strip():
            raise ReviewError(f"review of image {image_row_id}: no reviewer named")
        with self._errors("read"), self._engine.connect() as connection:
            image = connection.execute(select(images.c.id, images.c.run_id, images.c.image).where(images.c.id == image_row_id)).one_or_none()
            if image is None:
                raise ReviewError(f"review of image {image_row_id}: the result database {self.url} has no such image")
            machine = connection.execute(
                select(defects.c.id, defects.c.x1, defects.c.y1, defects.c.x2, defects.c.y2, defects.c.defect_type, defects.c.rejected)
                .where(defects.c.image_row_id == image_row_id).order_by(defects.c.id)).all()
        if verdict == "good" and labels:
            raise ReviewError(f"review of image {image_row_id}: verdict good means no defect, but {len(labels)} labels were given")
        if verdict == "accepted" and not labels:
            labels = [ReviewLabel((row.x1, row.y1, row.x2, row.y2), row.defect_type, row.id) for row in machine if not row.rejected]
        checked = self._checked(image_row_id, image.run_id, image.image, labels or [], {row.id for row in machine})
        with self._errors("write"), self._engine.begin() as connection:
            result = connection.execute(reviews.insert().values(
                image_row_id=image_row_id, reviewer=reviewer.strip(), reviewed_at=datetime.now(timezone.utc), verdict=verdict,
                labels=json.dumps([label.as_json() for label in checked]), note=note))
            return result.inserted_primary_key[0]  # type: ignore[index]  # an insert of one row always has its key

    def _checked(self, image_row_id: int, run_id: int, path: str, labels, machine_ids: set[int]) -> list[ReviewLabel]:
        classes = set(self.known_classes(run_id))
        try:
            size: tuple[int, int] | None = read_image_size(path)
        except ImageError:  # the image file is gone or elsewhere: its size is unknown, the box is checked without it
            size = None
        checked = []
        for number, label in enumerate(labels, start=1):
            where = f"review of image {image_row_id}: label {number}"
            if isinstance(label, dict):
                unknown = set(label) - {"bbox", "defect_type", "defect_id"}
                if unknown or "bbox" not in label or "defect_type" not in label:
                    raise ReviewError(f"{where}: expected keys bbox, defect_type and optionally defect_id, got {sorted(label)}")
                label = ReviewLabel(label["bbox"], label["defect_type"], label.get("defect_id"))
            try:
                bbox = tuple(float(value) for value in label.bbox)
            except (TypeError, ValueError):
                raise ReviewError(f"{where}: bbox must be 4 numbers x1, y1, x2, y2, got {label.bbox!r}") from None
            if len(bbox) != 4 or not all(math.isfinite(value) for value in bbox):
                raise ReviewError(f"{where}: bbox must be 4 finite numbers x1, y1, x2, y2, got {label.bbox!r}")
            x1, y1, x2, y2 = bbox
            if not (x1 < x2 and y1 < y2):
                raise ReviewError(f"{where}: bbox {list(bbox)} needs x1 < x2 and y1 < y2")
            if size is not None and (min(x1, y1) < -PIXEL_TOLERANCE or x2 > size[0] + PIXEL_TOLERANCE or y2 > size[1] + PIXEL_TOLERANCE):
                raise ReviewError(f"{where}: bbox {list(bbox)} lies outside the {size[0]}x{size[1]} image")
            if label.defect_type not in classes:
                raise ReviewError(f"{where}: class {label.defect_type!r} is not one of the run's classes ({', '.join(sorted(classes))})")
            if label.defect_id is not None and label.defect_id not in machine_ids:
                raise ReviewError(f"{where}: defect {label.defect_id} is not one of this image's defects")
            checked.append(ReviewLabel(bbox, label.defect_type, label.defect_id))
        return checked

    def known_classes(self, run_id: int) -> list[str]:
        """The classes a label of run `run_id` may name: those its configuration lists (`aivd inspect` stores the
        edge model's), else, for runs recorded before it did, every class its defects were given by either tier."""
        with self._errors("read"), self._engine.connect() as connection:
            config = connection.execute(select(runs.c.config).where(runs.c.id == run_id)).scalar_one()
            classes = json.loads(config).get("classes")
            if classes:
                return list(classes)
            in_run = defects.c.image_row_id.in_(select(images.c.id).where(images.c.run_id == run_id))
            found = list(connection.execute(select(defects.c.defect_type).where(in_run).distinct()).scalars())
            found += connection.execute(select(defects.c.edge_type).where(in_run, defects.c.edge_type.is_not(None)).distinct()).scalars().all()
        return sorted(set(found))

    def machine_boxes(self, image_row_id: int) -> np.ndarray:
        """(N, 4) boxes of every candidate the machine recorded for the image, reported or rejected."""
        query = (select(defects.c.x1, defects.c.y1, defects.c.x2, defects.c.y2)
                 .where(defects.c.image_row_id == image_row_id).order_by(defects.c.id))
        with self._errors("read"), self._engine.connect() as connection:
            return np.array(connection.execute(query).all(), np.float32).reshape(-1, 4)

    def current(self, image_row_id: int) -> Review | None:
        """The image's human label: its newest review, or None when it has none."""
        query = (select(*_REVIEW_COLUMNS).join(images, images.c.id == reviews.c.image_row_id)
                 .where(reviews.c.image_row_id == image_row_id).order_by(reviews.c.id.desc()).limit(1))
        with self._errors("read"), self._engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else _review(row)

    def history(self, image_row_id: int) -> list[Review]:
        """Every review of the image, oldest first."""
        return self._reviews(reviews.c.image_row_id == image_row_id)

    def reviewed_since(self, review_id: int) -> list[Review]:
        """Reviews stored after review `review_id` (0: all), oldest first: a learner keeps the last id it read. A later
        review of the same image supersedes an earlier one."""
        return self._reviews(reviews.c.id > review_id)

    def current_reviews(self, run_id: int | None = None) -> list[Review]:
        """Each reviewed image's newest review (of run `run_id`, or of every run), in image order."""
        newest = select(func.max(reviews.c.id)).group_by(reviews.c.image_row_id)
        condition: ColumnElement[bool] = reviews.c.id.in_(newest)
        if run_id is not None:
            condition = and_(condition, images.c.run_id == run_id)
        return sorted(self._reviews(condition), key=lambda review: review.image_row_id)

    def _reviews(self, condition) -> list[Review]:
        query = select(*_REVIEW_COLUMNS).join(images, images.c.id == reviews.c.image_row_id).where(condition).order_by(reviews.c.id)
        with self._errors("read"), self._engine.connect() as connection:
            return [_review(row) for row in connection.execute(query)]

    def queue(self, limit: int, run_id: int | None = None, audit_share: float = 0.05, seed: int = 0) -> list[QueueItem]:
        """The `limit` unreviewed images (inspected without error) a human label would teach most, best first.

        By each image's priority (aivd.store.priority: uncertainty, edge-cloud class disagreement, a box the cloud
        rejected, and the drift window), stored as its row was written; ties go to the older image. A seeded random
        audit share (`audit_share` of the images, `_audited`) ranks above all the others (+ `MOST`, the most the
        terms add up to), so that images the machine is sure of are checked too: without them its confident mistakes
        would never be seen.

        Two queries, each walking the index images_queue (images_run_queue within a run) from the top and stopping
        after its page: first the audited images, then the others. Their cost grows with the page and the reviewed
        images passed over, not with the database: a page of the console must answer in 0.3 s over 100,000 images.
        """
        if limit < 1:
            raise ReviewError(f"queue limit must be at least 1, got {limit}")
        if not 0 <= audit_share <= 1:
            raise ReviewError(f"audit share must be in [0, 1], got {audit_share}")
        open_ = [images.c.priority.is_not(None), ~exists().where(reviews.c.image_row_id == images.c.id)]
        if run_id is not None:
            open_.append(images.c.run_id == run_id)
        audited = _audited(audit_share, seed)
        page = select(images.c.id, images.c.priority, images.c.drifted).order_by(images.c.priority.desc(), images.c.id)
        with self._errors("read"), self._engine.connect() as connection:
            rows = [(row, True) for row in connection.execute(page.where(*open_, audited).limit(limit))] if audit_share > 0 else []
            if len(rows) < limit:
                rows += [(row, False) for row in connection.execute(page.where(*open_, ~audited).limit(limit - len(rows)))]
            terms = {row.image_row_id: row for row in connection.execute(image_terms([row.id for row, _ in rows]))}
        items = []
        for row, audit in rows:
            term = terms.get(row.id)
            uncertainty = 0.0 if term is None else float(term.uncertainty)
            reasons = [f"uncertainty {uncertainty:.2f}"] if uncertainty > 0 else []
            reasons += ["edge and cloud classes differ"] if term is not None and term.disagrees else []
            reasons += ["cloud rejected an edge box"] if term is not None and term.rejected else []
            reasons += ["in the drift window"] if row.drifted else []
            reasons += ["random audit"] if audit else []
            items.append(QueueItem(row.id, round(row.priority + MOST * audit, 6), tuple(reasons)))
        return items
