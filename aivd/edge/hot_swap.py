"""An edge detector that follows a model store: a promoted version is served from the next image on.

`HotSwapDetector` reads the store's CURRENT at most every `poll_s` seconds and, when it names another version,
loads that version and swaps it in under a lock; an image already being detected finishes on the model it
started with. A version that fails to load, or that the store refuses (a name or detector path reaching outside
it), is logged and skipped (the worker keeps serving the one it has), so a bad upload never takes an edge node
down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from aivd.core import Detections, LabelMap
from aivd.edge.detector import ModelError, TemplateDetector
from aivd.edge.tiling import TiledDetector
from aivd.model_store import ModelStore, ModelStoreError

log = logging.getLogger(__name__)


class HotSwapDetector:
    uses_template = True

    def __init__(self, store: ModelStore, poll_s: float = 1.0, threads: int = 2) -> None:
        self.store, self.poll_s, self.threads = store, poll_s, threads
        version = store.current()
        if version is None:
            raise ModelStoreError(f"{store.root}: no CURRENT version to serve; publish and promote one first")
        self.version = version
        self.detector = TemplateDetector(store.detector_path(version), threads=threads)
        self.swaps = 0
        self._failed: str | None = None  # a version that would not load is not retried at every poll
        self._lock = threading.Lock()
        self._checked = time.monotonic()

    @property
    def labels(self) -> LabelMap:
        return self.detector.labels

    @property
    def min_confidence(self) -> float:
        return self.detector.min_confidence

    @property
    def name(self) -> str:
        return f"{self.detector.name}@{self.version}"

    def refresh(self) -> bool:
        """Swap to the store's CURRENT version if it changed; returns whether a swap happened."""
        self._checked = time.monotonic()
        version = self.store.current()
        if version is None or version in (self.version, self._failed):
            return False
        try:
            detector = TemplateDetector(self.store.detector_path(version), threads=self.threads)
        except (ModelError, ModelStoreError) as error:
            log.error("not swapping to %s: %s", version, error)
            self._failed = version
            return False
        if detector.labels != self.detector.labels:
            log.error("not swapping to %s: labels %s differ from %s", version, detector.labels.names, self.detector.labels.names)
            self._failed = version
            return False
        with self._lock:
            self.detector, self.version = detector, version
            self.swaps += 1
        log.info("edge model swapped to %s", version)
        return True

    def check(self) -> None:
        """Follows the store now (an idle worker too), then raises `ModelStoreError` if the version served is gone
        from the store: a worker started now could not load it, and no one could reproduce its results."""
        self.refresh()
        path = self.store.detector_path(self.version)  # raises when the version itself is gone
        if not path.is_file():
            raise ModelStoreError(f"{path}: the detector of {self.version}, which this worker serves, is gone")

    def detect(self, image: np.ndarray, template: np.ndarray | None = None, min_confidence: float | None = None) -> Detections:
        return self.detect_batch([image], [template], min_confidence)[0]

    def detect_batch(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None],
                     min_confidence: float | None = None) -> list[Detections]:
        """`detect` of each image, in order, all on one model version."""
        if time.monotonic() - self._checked >= self.poll_s:
            self.refresh()
        with self._lock:
            detector = self.detector
        return detector.detect_batch(images, templates, min_confidence)


def hot_swapping(detector) -> HotSwapDetector | None:
    """The `HotSwapDetector` that `detector` is or wraps (tiled), else None."""
    while isinstance(detector, TiledDetector):
        detector = detector.detector
    return detector if isinstance(detector, HotSwapDetector) else None
