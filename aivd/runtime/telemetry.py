"""What an edge replica reports to the router, and how the router turns a report into a policy's `NodeState`.

Replicas report through Ray Serve's `record_routing_stats`, which the controller polls every
`routing_stats_period_s`; the router sees the report that long (plus delivery) later, as in the simulator.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import psutil

from aivd.runtime.emulation import EmulatedNode
from aivd.scheduling import NodeState

# Seconds each routing decision took in this process, newest last; the router lives in the process that holds
# the deployment handle (the ingress), whose /v1/router endpoint reads this.
DECISION_SECONDS: deque[float] = deque(maxlen=100_000)
SMOOTHING = 0.2  # weight of the newest service time in the reported average, as in the simulator
UNKNOWN_BANDWIDTH_BPS = 1e12  # an unemulated link on one machine: effectively free


class ReplicaTelemetry:
    """Counts what the replica does between reports."""

    def __init__(self, node_class: str, emulated: EmulatedNode) -> None:
        self.node_class = node_class
        self.emulated = emulated
        self.ongoing = 0
        self.errors = 0
        self.mean_service_s: float | None = None
        self._last_report = (time.monotonic(), emulated.busy_s)
        psutil.cpu_percent(interval=None)  # the first call only starts psutil's measurement window

    def served(self, service_s: float) -> None:
        previous = self.mean_service_s
        self.mean_service_s = service_s if previous is None else previous + SMOOTHING * (service_s - previous)

    def report(self) -> dict[str, Any]:
        """The routing stats: a plain dict (Ray sends it to the controller and on to every router)."""
        now = time.monotonic()
        since, busy_before = self._last_report
        self._last_report = (now, self.emulated.busy_s)
        if self.emulated.emulated:
            # An emulated device shares this machine's CPUs with the others: its own busy share is its CPU.
            busy = (self.emulated.busy_s - busy_before) / max(now - since, 1e-6)
            cpu_idle = 1.0 - min(max(busy, 0.0), 1.0)
        else:
            cpu_idle = 1.0 - psutil.cpu_percent(interval=None) / 100.0
        bandwidth, latency = self.emulated.link_now()
        errors, self.errors = self.errors, 0
        return {
            "time": time.time(), "node_class": self.node_class, "cpu_idle": round(cpu_idle, 4),
            "queue_len": self.ongoing, "service_s": self.mean_service_s,
            "bandwidth_bps": min(bandwidth, UNKNOWN_BANDWIDTH_BPS), "latency_s": latency, "errors": errors,
        }


def node_state(node_id: str, stats: dict[str, Any], queue_len: int | None, queue_bound: int, period_s: float,
               now: float, missed_for_unhealthy: int = 3) -> NodeState:
    """A policy's view of one replica. A replica that has not reported yet looks idle, fast and close, so that a
    new or restarted replica gets work at once; a report older than a period counts missed heartbeats."""
    reported_at = stats.get("time")
    missed = 0 if reported_at is None else max(0, int((now - reported_at) / period_s) - 1)
    service_s = stats.get("service_s")
    return NodeState(
        node_id=node_id,
        cpu_idle=float(min(max(stats.get("cpu_idle", 1.0), 0.0), 1.0)),
        queue_len=int(queue_len if queue_len is not None else stats.get("queue_len", 0)),
        queue_bound=queue_bound,
        bandwidth_bps=float(stats.get("bandwidth_bps") or UNKNOWN_BANDWIDTH_BPS),
        latency_s=float(max(stats.get("latency_s") or 0.0, 0.0)),
        service_rate=1.0 / service_s if service_s else 1e3,
        healthy=missed < missed_for_unhealthy,
        missed_heartbeats=missed,
        errors=int(stats.get("errors", 0)),
    )
