"""Online learning on the cluster: one updater deployment learns from every edge replica's results.

Each edge replica, after an image's cloud half, sends the updater the image, its template and its `ImageResult`
(`EdgeNode` in `aivd.runtime.app`). The updater runs the same `LiveLearner` as `aivd inspect` (replay buffer,
drift monitor, trigger, `OnlineUpdater`, gate, rollback) and publishes to the cluster's model store, from which
every edge replica already hot-swaps (`ClusterConfig.model_store`). A call only queues the image (a full queue
drops it unobserved), so no replica waits for training; the call answers whether a validation image is due, which
the replica's offloader reads for its next image (`LabelAll`). Images are observed in the order they arrive
from all replicas, so positions in its update records count arrivals.

The update trains on the learner's thread, in the updater's own Ray actor process: that process is already
apart from the replicas, and Ray places it where `ClusterConfig.updater_resources` says.

With `ClusterConfig.reviews_db`, the learner also learns from the human reviews stored there, as a live run learns
from its own database's (`LiveLearner.follow_reviews`): on its own thread, after each image it observes, it reads
the reviews stored since the last (`ReviewFeed`) and hands them to the updater with top trust, so `observe` never
waits for the database.
"""

from __future__ import annotations

from ray import serve

from aivd.config import UpdateConfig
from aivd.core import LabelMap
from aivd.pipeline.engine import ImageResult


@serve.deployment(name="updater", num_replicas=1)
class EdgeUpdater:
    def __init__(self, update: UpdateConfig, reviews_db: str | None = None, labels: LabelMap | None = None) -> None:
        """`reviews_db`: the database of the reviews to learn from (its boxes of the edge model's `labels`)."""
        from aivd.pipeline.live_update import learner_for

        self.learner = learner_for(update, isolation="thread")
        if reviews_db is not None:
            assert labels is not None  # _updater passes the edge model's with the database
            self.learner.follow_reviews(reviews_db, labels)
        self.arrived = 0

    def observe(self, image_id: str, image, template, result: ImageResult) -> bool:
        """Queue one inspected image; returns whether the next image should send all its regions (validation)."""
        self.learner.offer(self.arrived, image_id, image, template, result)
        self.arrived += 1
        return self.learner.wants_full_labels()

    def report(self) -> dict:
        learner = self.learner
        return {"arrived": self.arrived, "observed": learner.observed, "dropped": learner.dropped, "updates": list(learner.updates),
                "reviewed": learner.updater.buffer.reviewed_added}
