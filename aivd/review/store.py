"""`ReviewStore`: human reviews of inspected images, the queue of images worth reviewing, and the feed learners read.

A review labels a whole image (table `reviews`, aivd.store.database): it never changes the machine's rows in
`defects`, and an image's newest review is its human label; older ones stay as its history. Labels are checked
before they are stored (one line saying which label and why): a box must have x1 < x2 and y1 < y2, lie inside the
image when its file can be read for its size, and name one of the run's classes (`known_classes`).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import ColumnElement, and_, case, func, select

from aivd.core import Detections, LabelMap
from aivd.core.errors import AivdError
from aivd.data.dataset import PIXEL_TOLERANCE
from aivd.data.images import ImageError, read_image_size
from aivd.store.database import StoreBacked, defects, images, reviews, runs

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


def _audit_draw(image_row_ids: np.ndarray, offset: int) -> np.ndarray:
    """A uniform-looking number in [0, 1) per image row id: Knuth's multiplicative hash of the id modulo 2^32, shifted
    by the seed's offset (`_audit_offset`). Drawn per image, not per call, so an image stays in or out of the audit
    share however the queue is paged or refreshed. In uint64, whose wrap-around keeps the value modulo 2^32."""
    hashed = image_row_ids.astype(np.uint64) * np.uint64(2654435761) + np.uint64(offset)
    return (hashed % np.uint64(2**32)) / 2**32


def _audit_offset(seed: int) -> int:
    return int(np.random.default_rng(seed).integers(0, 2**32))


# Image rows may commit out of id order (several writers at once): each queue call rescores this many of the newest
# ids, so that a row committed late behind a higher id is still scored (far more than writers ever have in flight).
RESCAN_IDS = 1_000


class ReviewStore(StoreBacked):
    """Reviews in the result database at a SQLAlchemy URL (brought up to date like every store); a context manager."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._errors, self._engine = self._store.errors, self._store.engine
        # The queue's scores per image row id: (run id, uncertainty, classes differ, cloud rejected a box, their sum). An image's
        # row and its defects are written in one transaction and never change, so a score holds once computed; the
        # queue scores only the rows stored since (`_score_new_images`). Threads of a web server may share the store.
        self._scores: dict[int, tuple[int, float, bool, bool, float]] = {}
        self._newest_scored = 0
        self._scoring = threading.Lock()

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

        Priority:
        - uncertainty: 1 - the lowest confidence among the image's candidates (reported or rejected; 0 without any);
        - + 1 when the tiers disagree on a class: a reported defect whose edge class differs from the cloud's;
        - + 1 when the cloud rejected a box the edge proposed (a possible false alarm, or a defect the cloud missed);
        - a seeded random audit share (`audit_share` of the images, `_audit_draw`) ranks above all the others
          (+ 3, the most the terms above add up to), so that images the machine is sure of are checked too: without
          them its confident mistakes would never be seen.
        Ties go to the older image. No drift-window term: the result database does not record when the drift monitor
        fired (it lives in the learner's memory and the metrics), so the queue cannot tell which images came after.

        Each image is scored once, in the database, when a call first sees it; a call ranks the scores in memory and
        reads only the newer rows and the set of reviewed images. (Ranking a million defect rows in one query took
        1-2.5 s on SQLite here; a page of the console must answer in 0.3 s.)
        """
        if limit < 1:
            raise ReviewError(f"queue limit must be at least 1, got {limit}")
        if not 0 <= audit_share <= 1:
            raise ReviewError(f"audit share must be in [0, 1], got {audit_share}")
        with self._scoring, self._errors("read"), self._engine.connect() as connection:
            self._score_new_images(connection)
            reviewed = np.fromiter(connection.execute(select(reviews.c.image_row_id).distinct()).scalars(), np.int64)
            ids = np.fromiter(self._scores, np.int64, len(self._scores))
            scores = list(self._scores.values())
        # Ranked in numpy: one Python call per image (its audit draw and sort key) took 150 ms of a 190 ms call on
        # 100,000 images, as much again under a loaded server's threads.
        run_ids = np.fromiter((score[0] for score in scores), np.int64, len(scores))
        summed = np.fromiter((score[4] for score in scores), np.float64, len(scores))
        audit = _audit_draw(ids, _audit_offset(seed)) < audit_share
        priority = summed + 3 * audit
        open_ = np.flatnonzero(~np.isin(ids, reviewed) & ((run_ids == run_id) if run_id is not None else True))
        ranked = open_[np.lexsort((ids[open_], -priority[open_]))[:limit]]  # by priority, ties to the older image
        items = []
        for index in ranked:
            _, uncertainty, disagrees, rejected, _ = scores[index]
            reasons = [f"uncertainty {uncertainty:.2f}"] if uncertainty > 0 else []
            reasons += ["edge and cloud classes differ"] if disagrees else []
            reasons += ["cloud rejected an edge box"] if rejected else []
            reasons += ["random audit"] if audit[index] else []
            items.append(QueueItem(int(ids[index]), round(float(priority[index]), 6), tuple(reasons)))
        return items

    def _score_new_images(self, connection) -> None:
        since = max(0, self._newest_scored - RESCAN_IDS)
        disagrees = and_(defects.c.rejected.is_(False), defects.c.edge_type.is_not(None), defects.c.edge_type != defects.c.defect_type)
        cloud_rejected = and_(defects.c.rejected.is_(True), defects.c.source != "edge")
        per_image = (select(defects.c.image_row_id.label("image_row_id"),
                            func.min(defects.c.confidence).label("lowest"),
                            func.max(case((disagrees, 1), else_=0)).label("disagrees"),
                            func.max(case((cloud_rejected, 1), else_=0)).label("rejected"))
                     .where(defects.c.image_row_id > since).group_by(defects.c.image_row_id).subquery())
        query = (select(images.c.id, images.c.run_id, per_image.c.lowest, per_image.c.disagrees, per_image.c.rejected)
                 .outerjoin(per_image, per_image.c.image_row_id == images.c.id)
                 .where(images.c.id > since, images.c.status == "ok"))
        for row in connection.execute(query):
            uncertainty = 0.0 if row.lowest is None else 1.0 - float(row.lowest)
            disagree, reject = bool(row.disagrees), bool(row.rejected)
            self._scores[row.id] = (row.run_id, uncertainty, disagree, reject, uncertainty + disagree + reject)
            self._newest_scored = max(self._newest_scored, row.id)


