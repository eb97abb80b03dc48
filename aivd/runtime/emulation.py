"""Emulated heterogeneity for one machine: a slower device and a worse network, applied inside a replica.

Honest in the sense that matters for benchmarks: the transfer time comes from the real payload size and the
link's bandwidth at that moment (the same trace the simulator draws for the same profile and seed), transfers
on one link go one at a time, and a slow-down stretches the replica's *measured* service time, so a heavier
image is slower on every device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from aivd.sim.links import LinkTrace
from aivd.sim.scenarios import LinkProfile

T = TypeVar("T")


class EmulatedNode:
    def __init__(self, slowdown: float = 1.0, link: LinkProfile | None = None, seed: int | list[int] = 0) -> None:
        self.slowdown = slowdown
        self.trace = LinkTrace(link, np.random.default_rng(seed)) if link else None
        self.started = time.monotonic()
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
            bandwidth, latency = self.link_now()
            await asyncio.sleep(payload_bytes / bandwidth)
        await asyncio.sleep(latency)
        return time.monotonic() - started

    async def reply(self) -> None:
        """The small answer goes back over the link: one latency."""
        await asyncio.sleep(self.link_now()[1])

    async def serve(self, work: Callable[..., T], *args) -> tuple[T, float]:
        """Run `work` on a thread, one call at a time, stretched by the slow-down; returns (result, service s)."""
        async with self._server:
            started = time.monotonic()
            result = await asyncio.to_thread(work, *args)
            measured = time.monotonic() - started
            if self.slowdown > 1.0:
                await asyncio.sleep(measured * (self.slowdown - 1.0))
            service = time.monotonic() - started
            self.busy_s += service
        return result, service
