"""Keep the share of regions sent to the cloud on budget while score distributions move.

`BudgetController` sets a filter's cutoff to the (1 - budget) quantile of the uncertainties seen over a sliding
window of recent detections, after every image: if the edge grows less sure (drift), the cutoff rises with
the scores, and the share sent stays near the budget instead of flooding the cloud. The window trades
reaction speed against noise.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from aivd.collab.hard_examples import HardExampleFilter
from aivd.core import Detections


class BudgetController:
    def __init__(self, filter_: HardExampleFilter, budget: float = 0.3, window: int = 2000, warmup: int = 50) -> None:
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget must be in [0, 1], got {budget}")
        if window < 1 or warmup < 1:
            raise ValueError("window and warmup must be at least 1")
        self.filter, self.budget, self.warmup = filter_, budget, warmup
        self.recent: deque[float] = deque(maxlen=window)
        self.sent = 0
        self.seen = 0

    def select(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        """The mask of detections to send for this image; then the cutoff moves with what was seen."""
        if len(detections) == 0:
            return np.zeros(0, bool)
        uncertainty = self.filter.uncertainty(detections, class_probs)
        hard = uncertainty > self.filter.cutoff
        self.recent.extend(uncertainty.tolist())
        self.seen += len(hard)
        self.sent += int(hard.sum())
        if len(self.recent) >= self.warmup:
            self.filter.cutoff = float(np.quantile(np.fromiter(self.recent, float), 1.0 - self.budget))
        return hard

    @property
    def upload_ratio(self) -> float:
        """Share of detections sent so far (KubeEdge Ianvs's upload ratio)."""
        return self.sent / self.seen if self.seen else 0.0
