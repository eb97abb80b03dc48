"""When to update the edge model: drift seen in how often the cloud overrules the edge.

The cloud's answers on the regions it is sent are free labels. `AgreementMonitor` compares the edge's
disagreement rate with the cloud over a sliding window of recent regions against the rate it had on its first
`reference` regions (the conditions it was trained and calibrated for). A rise of more than `tolerance` is drift:
the camera, the boards or the process changed in a way the edge model has not learned. The rates are over sent
regions only, whose mix shifts with the offload cutoff; the tolerance absorbs that. On the undrifted DeepPCB test
stream the rate over 150 regions wanders between 0.13 and 0.18 (so 0.05 raised false alarms); blur takes it to
0.25-0.36.

`UpdateTrigger` then asks for an update once `min_images` hard images have been collected since the drift, and
`follow_ups` more times every `min_images` hard images after that (the first update has seen only the start of
the drift; later ones train on more of it), or every `every` hard images regardless of drift when that is set.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AgreementMonitor:
    def __init__(self, reference: int = 300, window: int = 150, tolerance: float = 0.1) -> None:
        if reference < 1 or window < 1 or not 0 < tolerance < 1:
            raise ValueError("reference and window must be at least 1 and tolerance in (0, 1)")
        self.reference_size, self.tolerance = reference, tolerance
        self.reference: list[bool] = []
        self.recent: deque[bool] = deque(maxlen=window)

    def update(self, agrees: np.ndarray) -> None:
        """Record, for each region the cloud decided, whether the edge's own decision was the cloud's."""
        for value in np.asarray(agrees, bool).tolist():
            if len(self.reference) < self.reference_size:
                self.reference.append(value)
            else:
                self.recent.append(value)

    def rebase(self) -> None:
        """Forget the reference and the window, after the edge model changed: its new rate becomes the reference."""
        self.reference, self.recent = [], deque(maxlen=self.recent.maxlen)

    @property
    def reference_disagreement(self) -> float | None:
        return 1.0 - float(np.mean(self.reference)) if len(self.reference) == self.reference_size else None

    @property
    def recent_disagreement(self) -> float | None:
        return 1.0 - float(np.mean(self.recent)) if len(self.recent) == self.recent.maxlen else None

    @property
    def drifted(self) -> bool:
        reference, recent = self.reference_disagreement, self.recent_disagreement
        return reference is not None and recent is not None and recent - reference > self.tolerance


class TriggerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_images: int = Field(40, ge=1, description="hard images collected since the drift (or the last update) before an update")
    follow_ups: int = Field(1, ge=0, description="further updates, every min_images hard images, after the first one for a drift")
    every: int | None = Field(None, ge=1, description="also update every this many hard images, drift or not")


class UpdateTrigger:
    def __init__(self, config: TriggerConfig | None = None) -> None:
        self.config = config or TriggerConfig()
        self.since_update = 0  # hard images since the last update
        self.since_drift: int | None = None  # hard images since drift was seen (or the last update for it), None before
        self.follow_ups_left = 0

    def observe(self, hard_image: bool, drifted: bool) -> bool:
        """Count one image; True when an update should run now."""
        self.since_update += int(hard_image)
        if drifted and self.since_drift is None:
            self.since_drift, self.follow_ups_left = 0, self.config.follow_ups
        if self.since_drift is not None:
            self.since_drift += int(hard_image)
        due = self.since_drift is not None and self.since_drift >= self.config.min_images
        periodic = self.config.every is not None and self.since_update >= self.config.every
        return due or periodic

    def updated(self, promoted: bool = True) -> None:
        """After an update: a drift's follow-up updates continue while updates are promoted."""
        self.since_update = 0
        if self.since_drift is None:
            return
        if promoted and self.follow_ups_left > 0:
            self.since_drift, self.follow_ups_left = 0, self.follow_ups_left - 1
        else:
            self.since_drift = None
