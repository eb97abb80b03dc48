"""Hard-example filters: which of the edge's detections (or images) go to the cloud.

Names and parameters follow KubeEdge Sedna's joint-inference filters where they exist. Every filter scores each
detection's *uncertainty* in [0, 1] (higher = harder) and calls it hard above a cutoff, so one controller
(`aivd.collab.offload.BudgetController`) can move any filter's cutoff to hold an offload budget.

Class probabilities are optional: when a detector gives only its top score, `cross_entropy` and `margin` treat
that score as a two-way (this class / not) distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aivd.core import Detections


class HardExampleFilter(Protocol):
    name: str
    cutoff: float  # uncertainty above which a detection is hard

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray: ...


def _two_way(detections: Detections, class_probs: np.ndarray | None) -> np.ndarray:
    if class_probs is not None:
        probs = np.asarray(class_probs, np.float64)
        if probs.ndim != 2 or len(probs) != len(detections) or probs.shape[1] < 2:
            raise ValueError(f"class_probs must be (N, K >= 2) for N = {len(detections)} detections, got {probs.shape}")
        return probs
    p = np.clip(detections.confidence.astype(np.float64), 0.0, 1.0)
    return np.stack([p, 1.0 - p], axis=1)


def is_hard(filter_: HardExampleFilter, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over the detections: which to send to the cloud."""
    if len(detections) == 0:
        return np.zeros(0, bool)
    return filter_.uncertainty(detections, class_probs) > filter_.cutoff


class ThresholdFilter:
    """Hard when the detection's score is below `threshold` (Sedna's ThresholdFilter)."""

    name = "threshold"

    def __init__(self, threshold: float = 0.5) -> None:
        self.cutoff = 1.0 - threshold

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        return 1.0 - np.clip(detections.confidence.astype(np.float64), 0.0, 1.0)


class CrossEntropyFilter:
    """Hard when the class distribution's normalised entropy is high: certainty 1 - H(p)/log K below
    `threshold` (Sedna's CrossEntropyFilter)."""

    name = "cross_entropy"

    def __init__(self, threshold: float = 0.5) -> None:
        self.cutoff = 1.0 - threshold

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        probs = _two_way(detections, class_probs)
        probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
        entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
        return entropy / np.log(probs.shape[1])


class MarginFilter:
    """Hard when the top class beats the second by less than `threshold`."""

    name = "margin"

    def __init__(self, threshold: float = 0.2) -> None:
        self.cutoff = 1.0 - threshold

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        top2 = np.sort(_two_way(detections, class_probs), axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])


class IBTFilter:
    """Image-box threshold (Sedna's IBTFilter): the whole image is hard when at least `threshold_img` of its
    boxes score below `threshold_box`; then every box of it goes to the cloud."""

    name = "ibt"

    def __init__(self, threshold_img: float = 0.5, threshold_box: float = 0.5) -> None:
        self.threshold_box = threshold_box
        self.cutoff = 1.0 - threshold_img

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        low_share = float(np.mean(detections.confidence < self.threshold_box)) if len(detections) else 0.0
        # >= threshold_img means hard; the cutoff compares with >, so nudge by the smallest step.
        return np.full(len(detections), np.nextafter(low_share, 2.0))


class RandomFilter:
    """Each detection is hard with probability `probability` (a baseline with the same budget)."""

    name = "random"

    def __init__(self, probability: float = 0.3, seed: float = 0) -> None:
        self.rng = np.random.default_rng(int(seed))
        self.cutoff = 1.0 - probability

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        return self.rng.random(len(detections))


class EdgeOnlyFilter:
    name = "edge_only"
    cutoff = 1.0  # nothing is ever above it

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        return np.zeros(len(detections))


class CloudOnlyFilter:
    name = "cloud_only"
    cutoff = -1.0  # everything is above it

    def uncertainty(self, detections: Detections, class_probs: np.ndarray | None = None) -> np.ndarray:
        return np.zeros(len(detections))


class FilterConfig(BaseModel):
    """A filter by name with its parameters, as data (config files, CLI)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("threshold", description=f"one of: {', '.join(['threshold', 'cross_entropy', 'margin', 'ibt', 'random', 'edge_only', 'cloud_only'])}")
    params: dict[str, float] = Field(default_factory=dict)


FILTERS: dict[str, Callable[..., HardExampleFilter]] = {
    "threshold": ThresholdFilter, "cross_entropy": CrossEntropyFilter, "margin": MarginFilter, "ibt": IBTFilter,
    "random": RandomFilter, "edge_only": EdgeOnlyFilter, "cloud_only": CloudOnlyFilter,
}


def make_filter(config: FilterConfig | str) -> HardExampleFilter:
    """A fresh filter; unknown names and parameters raise ValueError naming what is allowed."""
    config = FilterConfig(name=config) if isinstance(config, str) else config
    if config.name not in FILTERS:
        raise ValueError(f"unknown hard-example filter {config.name!r}; known: {', '.join(FILTERS)}")
    try:
        return FILTERS[config.name](**config.params)
    except TypeError as error:
        raise ValueError(f"filter {config.name!r}: {error}") from None
