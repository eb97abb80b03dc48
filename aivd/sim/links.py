"""A link's bandwidth and latency over time, drawn from a `LinkProfile`: the simulator's links and the runtime's
emulated links (aivd.runtime.emulation) follow the same trace for the same profile and seed."""

from __future__ import annotations

import math

import numpy as np

from aivd.sim.scenarios import LinkProfile


class LinkTrace:
    """Bandwidth and latency that change every epoch; epochs are drawn in order on first use, so the values
    depend only on the seed, not on when they are asked for."""

    def __init__(self, profile: LinkProfile, rng: np.random.Generator) -> None:
        self.profile, self.rng = profile, rng
        self._bandwidth: list[float] = []
        self._latency: list[float] = []

    def at(self, t: float) -> tuple[float, float]:
        """(bytes per second, one-way latency in seconds) at `t` seconds after the trace's start."""
        epoch = self._epoch(t)
        return self._bandwidth[epoch], self._latency[epoch]

    def transfer_s(self, t: float, payload_bytes: float) -> float:
        """Seconds that `payload_bytes` started at `t` take to cross the link, at each epoch's bandwidth in turn.

        A transfer goes at the link's rate of the moment, as TCP's does, not at the rate it started with: one
        that starts in a spike speeds up when the spike ends instead of holding the link for the whole payload
        at the spike's rate (which stalled the degraded links of scenario 3, docs/scheduling.md)."""
        start = max(t, 0.0)
        epoch, now, left = self._epoch(start), start, float(payload_bytes)
        while True:  # epochs counted, not recomputed from the clock, so that float rounding cannot stall the loop
            end = (epoch + 1) * self.profile.epoch_s
            bandwidth = self._bandwidth[epoch]
            if left <= bandwidth * (end - now):
                return now + left / bandwidth - start
            left -= bandwidth * max(end - now, 0.0)
            now, epoch = end, epoch + 1
            self._draw(epoch)

    def _epoch(self, t: float) -> int:
        """The epoch of `t`, drawing the epochs up to it first."""
        epoch = int(max(t, 0.0) / self.profile.epoch_s)
        self._draw(epoch)
        return epoch

    def _draw(self, epoch: int) -> None:
        """Draw the epochs up to `epoch`, in order, so that their values depend only on the seed."""
        p = self.profile
        while len(self._bandwidth) <= epoch:
            factor = math.exp(p.sigma * self.rng.standard_normal() - p.sigma**2 / 2)
            spike = p.spike_factor if self.rng.random() < p.spike_prob else 1.0
            self._bandwidth.append(p.bandwidth_bps * factor / spike)
            self._latency.append(p.latency_s / factor * spike)
