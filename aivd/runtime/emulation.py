"""Emulated heterogeneity for one machine: a slower device and a worse network, applied inside a replica.

Honest in the sense that matters for benchmarks: the transfer time comes from the real payload size and the
link's bandwidth at that moment (the same trace the simulator draws for the same profile and seed), transfers
on one link go one at a time, and a slow-down stretches the replica's *measured* service time, so a heavier
image is slower on every device. A device service time (`service_s`, as the simulator's node classes have)
pads the measured time up to one draw of it, for benchmarks that copy a simulator scenario.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from aivd.sim.links import LinkTrace
from aivd.sim.scenarios import LinkProfile

T = TypeVar("T")


class EmulatedNode:
    def __init__(self, slowdown: float = 1.0, link: LinkProfile | None = None, seed: int | list[int] = 0,
                 service_s: float | None = None, service_cv: float = 0.0, clock_start_unix: float | None = None) -> None:
        self.slowdown = slowdown
        self.service_s, self.service_cv = service_s, service_cv
        # The link draws from the seed itself, as the simulator's link with that seed does; the device's service
        # times from an independent child stream.
        self.trace = LinkTrace(link, np.random.default_rng(seed)) if link else None
        self._work = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        # The trace's time zero: when this replica starts, or a wall-clock time shared by every replica (a benchmark
        # sets it to when its load starts, so that every run meets the same link conditions at the same point).
        self.started = time.monotonic() - (0.0 if clock_start_unix is None else time.time() - clock_start_unix)
        self._wire = asyncio.Lock()  # one transfer at a time on the link
        self._server = asyncio.Lock()  # one inspection at a time: the device's single accelerator
        self.busy_s = 0.0

    def link_now(self) -> tuple[float, float]:
        """(bytes/s, one-way latency s) of the emulated link now; an unemulated link is treated as free."""
        if self.trace is None:
            return float("inf"), 0.0
        return self.trace.at(time.monotonic() - self.started)

    async def receive(self, payload_bytes: int) -> float:
        """Wait as long as `payload_bytes` take to cross the link; returns the seconds spent, queueing included."""
        if self.trace is None:
            return 0.0
        started = time.monotonic()
        async with self._wire:
            now = time.monotonic() - self.started
            await asyncio.sleep(self.trace.transfer_s(now, payload_bytes))
            latency = self.link_now()[1]
        await asyncio.sleep(latency)
        return time.monotonic() - started

    async def reply(self) -> None:
        """The small answer goes back over the link: one latency."""
        await asyncio.sleep(self.link_now()[1])

    @property
    def emulated(self) -> bool:
        return self.slowdown > 1.0 or self.service_s is not None or self.trace is not None

    def device_time_s(self) -> float:
        """One service time of the emulated device: lognormal with mean `service_s` and spread `service_cv`."""
        assert self.service_s is not None  # drawn only for a node given a service time
        sigma = math.sqrt(math.log1p(self.service_cv**2))
        return self.service_s * math.exp(sigma * self._work.standard_normal() - sigma**2 / 2)

    async def serve(self, work: Callable[..., T], *args) -> tuple[T, float]:
        """Run `work` on a thread, one call at a time; returns (result, service s). The service lasts the measured
        time x the slow-down, or one draw of the device's own service time if that is longer: a machine busier
        than the emulated device shows as such instead of being multiplied."""
        async with self._server:
            started = time.monotonic()
            result = await asyncio.to_thread(work, *args)
            measured = time.monotonic() - started
            target = measured * self.slowdown
            if self.service_s is not None:
                target = max(target, self.device_time_s())
            if target > measured:
                await asyncio.sleep(target - measured)
            service = time.monotonic() - started
            self.busy_s += service
        return result, service
