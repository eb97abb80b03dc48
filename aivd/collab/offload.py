"""The offloading stage: which of an image's candidate regions go to the cloud, and why.

Every policy answers `decide(candidates) -> OffloadDecision`, image by image in input order, and may learn from
the cloud's answers through `feedback`. Sending everything and keeping everything at the edge are two policies
of the same stage (`SendAll`, `KeepAtEdge`), so the engine has one path.

`BudgetController` sets a filter's cutoff to the (1 - budget) quantile of the uncertainties seen over a sliding
window of recent detections, after every image: if the edge grows less sure (drift), the cutoff rises with
the scores, and the share sent stays near the budget instead of flooding the cloud. The window trades
reaction speed against noise.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aivd.collab.hard_examples import HardExampleFilter
from aivd.core import Detections

# Why a region went to the cloud or stayed at the edge, as records say it.
SENT_ALL, KEPT_ALL = "send_all", "edge_only"  # the policy sends every region / none
HARD, EASY, AUDIT = "hard", "easy", "audit"  # uncertainty above / not above the cutoff; a kept region sent to measure the edge
VALIDATION = "validation"  # sent with the rest of its image, for the online updater's fully labelled validation images


@dataclass(frozen=True)
class OffloadDecision:
    """Per candidate region of one image: sent to the cloud or not, and why."""

    sent: np.ndarray  # bool
    reasons: list[str]
    uncertainty: np.ndarray | None = None  # the filter's score per region, when a filter decided
    cutoff: float | None = None  # the filter's cutoff when it decided


class Offloader(Protocol):
    name: str

    def decide(self, candidates: Detections) -> OffloadDecision: ...

    def feedback(self, decision: OffloadDecision, edge_was_right: np.ndarray) -> None:
        """The cloud's verdict on the regions `decision` sent: was the edge's own decision the same?"""
        ...


class _FixedPolicy:
    def __init__(self, send: bool) -> None:
        self.send = send
        self.name = SENT_ALL if send else KEPT_ALL

    def decide(self, candidates: Detections) -> OffloadDecision:
        return OffloadDecision(np.full(len(candidates), self.send), [self.name] * len(candidates))

    def feedback(self, decision: OffloadDecision, edge_was_right: np.ndarray) -> None:
        pass


def SendAll() -> Offloader:  # noqa: N802 - reads as the policy it builds
    return _FixedPolicy(True)


def KeepAtEdge() -> Offloader:  # noqa: N802
    return _FixedPolicy(False)


def _filtered(hard: np.ndarray, uncertainty: np.ndarray, cutoff: float, audit: np.ndarray | None = None) -> OffloadDecision:
    reasons = [HARD if h else EASY for h in (uncertainty > cutoff)]
    if audit is not None:
        reasons = [AUDIT if a and r == EASY else r for a, r in zip(audit, reasons)]
    return OffloadDecision(hard, reasons, uncertainty, cutoff)


class BudgetController:
    def __init__(self, filter_: HardExampleFilter, budget: float = 0.3, window: int = 2000, warmup: int = 50) -> None:
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget must be in [0, 1], got {budget}")
        if window < 1 or warmup < 1:
            raise ValueError("window and warmup must be at least 1")
        self.filter, self.budget, self.warmup = filter_, budget, warmup
        self.name = f"budget:{filter_.name}"
        self.recent: deque[float] = deque(maxlen=window)
        self.sent = 0
        self.seen = 0

    def decide(self, candidates: Detections) -> OffloadDecision:
        """The regions to send for this image, judged by the cutoff in force; then the cutoff moves with what was seen."""
        cutoff = self.filter.cutoff
        if len(candidates) == 0:
            return OffloadDecision(np.zeros(0, bool), [], np.zeros(0), cutoff)
        uncertainty = self.filter.uncertainty(candidates)
        hard = uncertainty > cutoff
        self.recent.extend(uncertainty.tolist())
        self.seen += len(hard)
        self.sent += int(hard.sum())
        if len(self.recent) >= self.warmup:
            self.filter.cutoff = float(np.quantile(np.fromiter(self.recent, float), 1.0 - self.budget))
        return _filtered(hard, uncertainty, cutoff)

    def feedback(self, decision: OffloadDecision, edge_was_right: np.ndarray) -> None:
        pass  # a budget does not depend on whether the edge was right

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

    In a live pipeline `decide` runs on the edge's thread and `feedback` on the cloud's, so the cutoff is locked.
    """

    def __init__(self, filter_: HardExampleFilter, target: float = 0.98, band: float = 0.05, step: float = 0.01,
                 explore: float = 0.02, seed: int = 0) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {target}")
        if not 0.0 < band <= 1.0 or step <= 0.0 or not 0.0 <= explore < 1.0:
            raise ValueError("band must be in (0, 1], step positive and explore in [0, 1)")
        self.filter, self.tolerance, self.band, self.step, self.explore = filter_, 1.0 - target, band, step, explore
        self.name = f"target:{filter_.name}"
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.sent = 0
        self.seen = 0

    def decide(self, candidates: Detections) -> OffloadDecision:
        with self.lock:
            cutoff = self.filter.cutoff
        if len(candidates) == 0:
            return OffloadDecision(np.zeros(0, bool), [], np.zeros(0), cutoff)
        uncertainty = self.filter.uncertainty(candidates)
        # A few kept regions go too, so that the edge's error near the cutoff stays measured even when the
        # cutoff has risen above everything.
        audit = self.rng.random(len(uncertainty)) < self.explore
        hard = (uncertainty > cutoff) | audit
        self.seen += len(hard)
        self.sent += int(hard.sum())
        return _filtered(hard, uncertainty, cutoff, audit)

    def feedback(self, decision: OffloadDecision, edge_was_right: np.ndarray) -> None:
        """`edge_was_right` per sent region of `decision`, in order."""
        with self.lock:
            for uncertainty, right in zip(np.asarray(decision.uncertainty, float)[decision.sent], np.asarray(edge_was_right, bool)):
                if abs(uncertainty - self.filter.cutoff) <= self.band:
                    moved = self.filter.cutoff + self.step * (self.tolerance if right else self.tolerance - 1.0)
                    # Kept where the band still reaches uncertainties in [0, 1], so feedback never dries up.
                    self.filter.cutoff = min(max(moved, -self.band / 2), 1.0 + self.band / 2)

    @property
    def upload_ratio(self) -> float:
        return self.sent / self.seen if self.seen else 0.0


class LabelAll:
    """`inner`'s decision, except that an image with any region to send sends all of them while `wanted()` says
    so: the online updater validates a candidate model on fully labelled images (`OnlineUpdater.wants_full_labels`)."""

    def __init__(self, inner: Offloader, wanted) -> None:
        self.inner, self.wanted = inner, wanted
        self.name = inner.name

    def decide(self, candidates: Detections) -> OffloadDecision:
        decision = self.inner.decide(candidates)
        if not decision.sent.any() or decision.sent.all() or not self.wanted():
            return decision
        reasons = [reason if sent else VALIDATION for sent, reason in zip(decision.sent, decision.reasons)]
        return OffloadDecision(np.ones_like(decision.sent), reasons, decision.uncertainty, decision.cutoff)

    def feedback(self, decision: OffloadDecision, edge_was_right: np.ndarray) -> None:
        self.inner.feedback(decision, edge_was_right)
