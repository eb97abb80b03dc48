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
        p = self.profile
        epoch = int(max(t, 0.0) / p.epoch_s)
        while len(self._bandwidth) <= epoch:
            factor = math.exp(p.sigma * self.rng.standard_normal() - p.sigma**2 / 2)
            spike = p.spike_factor if self.rng.random() < p.spike_prob else 1.0
            self._bandwidth.append(p.bandwidth_bps * factor / spike)
            self._latency.append(p.latency_s / factor * spike)
        return self._bandwidth[epoch], self._latency[epoch]
