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


class MarginalErrorController:
    """Send as much as it takes for the edge's errors near the cutoff to stay at a tolerance.

    The cloud's answers on sent regions tell whether the edge would have been right there. The marginal regions
    are those within `band` of the cutoff: the next to be kept if it rose, or the last kept (a share `explore` of
    the kept regions is sent anyway, to measure them). Each marginal answer moves the cutoff, stochastic-
    approximation style: down by `step x (1 - tolerance)` when the edge was wrong (send more), up by
    `step x tolerance` when it was right (send less), tolerance = 1 - `target`. In expectation the cutoff stops
    where the edge is wrong on the band at exactly the tolerated rate; where its errors fall with its certainty,
    every region kept is at least that reliable.
    """

    def __init__(self, filter_: HardExampleFilter, target: float = 0.98, band: float = 0.05, step: float = 0.01,
                 explore: float = 0.02, seed: int = 0) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {target}")
        if not 0.0 < band <= 1.0 or step <= 0.0 or not 0.0 <= explore < 1.0:
            raise ValueError("band must be in (0, 1], step positive and explore in [0, 1)")
        self.filter, self.tolerance, self.band, self.step, self.explore = filter_, 1.0 - target, band, step, explore
        self.rng = np.random.default_rng(seed)
        self.sent = 0
        self.seen = 0

    def select(self, detections: Detections, class_probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mask of detections to send, their uncertainties): pass both back to `feedback` with the cloud's verdict."""
        if len(detections) == 0:
            return np.zeros(0, bool), np.zeros(0)
        uncertainty = self.filter.uncertainty(detections, class_probs)
        # A few kept regions go too, so that the edge's error near the cutoff stays measured even when the
        # cutoff has risen above everything.
        hard = (uncertainty > self.filter.cutoff) | (self.rng.random(len(uncertainty)) < self.explore)
        self.seen += len(hard)
        self.sent += int(hard.sum())
        return hard, uncertainty

    def feedback(self, sent_uncertainty: np.ndarray, edge_was_right: np.ndarray) -> None:
        """The cloud's verdict on the sent regions: was the edge's own decision the same as the cloud's?"""
        for uncertainty, right in zip(np.asarray(sent_uncertainty, float), np.asarray(edge_was_right, bool)):
            if abs(uncertainty - self.filter.cutoff) <= self.band:
                moved = self.filter.cutoff + self.step * (self.tolerance if right else self.tolerance - 1.0)
                # Kept where the band still reaches uncertainties in [0, 1], so feedback never dries up.
                self.filter.cutoff = min(max(moved, -self.band / 2), 1.0 + self.band / 2)

    @property
    def upload_ratio(self) -> float:
        return self.sent / self.seen if self.seen else 0.0
