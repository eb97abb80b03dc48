"""The review queue's priority of an inspected image: how much a human label of it would teach.

An image's priority depends only on its own defect rows and on whether the run's drift monitor was in its drift
state when it was inspected (`images.drifted`), all written in the one transaction that adds the image and never
changed after. So it is computed once, in SQL, as the image's row is written (`score_images`, called by
`ResultStore.add`, by migration 0008 for older rows and by the console benchmark's bulk seeding), and stored in
`images.priority`, which an index keeps in the queue's order: the review queue (aivd.review.store) is then an
indexed `ORDER BY priority DESC, id LIMIT n` whose cost does not grow with the database.

The terms, summed:
- uncertainty: 1 - the lowest confidence among the image's candidates (reported or rejected; 0 without any);
- + 1 when the tiers disagree on a class: a reported defect whose edge class differs from the cloud's;
- + 1 when the cloud rejected a box the edge proposed (a possible false alarm, or a defect the cloud missed);
- + DRIFT_WEIGHT when the drift monitor was in its drift state: the edge is known to be off there, so the images
  teach the most about what changed (null, as without a learner, adds nothing).
An image inspected with an error has no priority (null) and is never queued: there is nothing to label.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, and_, case, func, select, update
from sqlalchemy.engine import Connection

from aivd.store.database import defects, images

# As much as a class disagreement or a cloud rejection: an image in the drift window with a sure, agreed answer ranks
# with an unsure one outside it.
DRIFT_WEIGHT = 1.0
# The most the terms add up to (uncertainty below 1, and three terms of 1): the random audit share ranks above every
# other image (aivd.review.store).
MOST = 4.0

_DISAGREES = and_(defects.c.rejected.is_(False), defects.c.edge_type.is_not(None), defects.c.edge_type != defects.c.defect_type)
_CLOUD_REJECTED = and_(defects.c.rejected.is_(True), defects.c.source != "edge")


def _terms() -> tuple[ColumnElement, ColumnElement, ColumnElement]:
    """Aggregates over one image's defect rows: uncertainty, disagreement (0 or 1), cloud rejection (0 or 1), each 0
    for an image without defects (an aggregate over no rows is null)."""
    return (func.coalesce(1.0 - func.min(defects.c.confidence), 0.0),
            func.coalesce(func.max(case((_DISAGREES, 1), else_=0)), 0),
            func.coalesce(func.max(case((_CLOUD_REJECTED, 1), else_=0)), 0))


def image_terms(image_row_ids: list[int]) -> Select:
    """Rows (image_row_id, uncertainty, disagrees, rejected) for those of `image_row_ids` with defects: why each
    ranks where it does."""
    uncertainty, disagrees, rejected = _terms()
    return (select(defects.c.image_row_id, uncertainty.label("uncertainty"), disagrees.label("disagrees"), rejected.label("rejected"))
            .where(defects.c.image_row_id.in_(image_row_ids)).group_by(defects.c.image_row_id))


def score_images(connection: Connection, condition: ColumnElement[bool]) -> None:
    """Set `images.priority` of the rows matching `condition` that were inspected without error, from their defect
    rows (a correlated subquery that reads only the covering index defects_image_filter) and their drift flag."""
    uncertainty, disagrees, rejected = _terms()
    own = select(uncertainty + disagrees + rejected).where(defects.c.image_row_id == images.c.id).scalar_subquery()
    drift = case((images.c.drifted.is_(True), DRIFT_WEIGHT), else_=0.0)
    connection.execute(update(images).where(condition, images.c.status == "ok").values(priority=own + drift))
