"""What an edge replica reports to the router, how the router turns a report into a policy's `NodeState`, and the
runtime's metrics.

Replicas report through Ray Serve's `record_routing_stats`, which the controller polls every
`routing_stats_period_s`; the router sees the report that long (plus delivery) later, as in the simulator.

Metrics go through Ray Serve's metrics API (`ray.serve.metrics`): Ray exports them, with the deployment, replica
and application as tags, on every node's metrics port in Prometheus format (prefixed `ray_`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import psutil
from ray.serve.metrics import Counter, Gauge, Histogram

from aivd.pipeline.inspect import InspectSummary
from aivd.runtime.emulation import EmulatedNode
from aivd.scheduling import NodeState
from aivd.schema.records import InspectionRecord

# 1 us to 1 s, each bucket 19% wider than the last: a quantile read from the buckets is within that of the truth.
DECISION_BUCKETS_S = tuple(float(1e-6 * 2 ** (i / 4)) for i in range(81))


class DecisionTimes:
    """The routing policy's time per decision, observed into a Ray Serve histogram (`aivd_router_decision_seconds`)
    and counted in the same buckets here, so that the ingress's `/v1/router` gives the quantiles Prometheus's
    `histogram_quantile` gives from the exported histogram."""

    def __init__(self) -> None:
        self.histogram = Histogram("aivd_router_decision_seconds", description="time the routing policy took per decision",
                                   boundaries=list(DECISION_BUCKETS_S), tag_keys=("policy",))
        self.counts = np.zeros(len(DECISION_BUCKETS_S) + 1, np.int64)  # the last counts those over the last bound
        self._lock = threading.Lock()  # routers of several handles may run on several threads of one process

    def observe(self, seconds: float, policy: str) -> None:
        self.histogram.observe(seconds, tags={"policy": policy})
        with self._lock:
            self.counts[np.searchsorted(DECISION_BUCKETS_S, seconds)] += 1

    def quantile(self, q: float) -> float | None:
        """Seconds, interpolated linearly inside the bucket as `histogram_quantile` does; None before any decision."""
        with self._lock:
            counts = self.counts.copy()
        total = int(counts.sum())
        if total == 0:
            return None
        rank = q * total
        index = min(int(np.searchsorted(np.cumsum(counts), rank)), len(DECISION_BUCKETS_S) - 1)
        below = int(counts[:index].sum())
        lower = DECISION_BUCKETS_S[index - 1] if index else 0.0
        upper = DECISION_BUCKETS_S[index]
        return lower + (upper - lower) * (rank - below) / max(int(counts[index]), 1)

    def summary(self, policy: str) -> dict:
        median, p99 = self.quantile(0.5), self.quantile(0.99)
        if median is None or p99 is None:  # no decision yet
            return {"policy": policy, "decisions": 0}
        return {"policy": policy, "decisions": int(self.counts.sum()), "median_ms": round(median * 1000, 4),
                "p99_ms": round(p99 * 1000, 4)}


# One per process: Ray builds the request router itself, in the process that holds the handle (the ingress), and the
# ingress's /v1/router must read what that router observed.
DECISIONS = DecisionTimes()


NODE_FORGET_S = 60.0  # a replica the router has not seen this long is gone (stopped, its node lost): dropped


class NodeTable:
    """Each edge replica's state the router last routed on, its node class and the policy's score (None for a
    policy without scores, or a replica it did not consider), for the ingress's `/v1/router`. Replicas not seen for
    `forget_s` are dropped, so that replicas replaced over a long run do not pile up."""

    def __init__(self, forget_s: float = NODE_FORGET_S) -> None:
        self.forget_s = forget_s
        self._seen: dict[str, tuple[float, str | None, NodeState, float | None]] = {}
        self._lock = threading.Lock()  # as DecisionTimes: routers on several threads

    def record(self, states: list[NodeState], node_classes: dict[str, str | None], scores: dict[str, float],
               now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for state in states:
                self._seen[state.node_id] = (now, node_classes.get(state.node_id), state, scores.get(state.node_id))
            self._forget(now)

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._forget(now)
            seen = sorted(self._seen.items())
        return [{"replica": replica, "node_class": node_class, "cpu_idle": state.cpu_idle, "queue_len": state.queue_len,
                 "bandwidth_bps": state.bandwidth_bps, "latency_s": state.latency_s, "score": score,
                 "age_s": round(now - at, 3)} for replica, (at, node_class, state, score) in seen]

    def _forget(self, now: float) -> None:
        for replica in [r for r, (at, *_) in self._seen.items() if now - at > self.forget_s]:
            del self._seen[replica]


# As DECISIONS: what this process's router saw, for this process's ingress.
NODES = NodeTable()


class EdgeMetrics:
    """What an edge replica did, for Prometheus: images by status, candidate regions and those offloaded to the cloud
    (their ratio also as a gauge of this replica's offloading stage), and images whose cloud analysis failed. Counted
    from the records as `aivd inspect` counts its summary.json."""

    def __init__(self, node_class: str) -> None:
        self.tags = {"node_class": node_class}
        keys = ("node_class",)
        # Ray Serve annotates tag_keys as tuple[str] (one key); it takes any number, as ray.util.metrics does.
        self.images = Counter("aivd_edge_images", description="images inspected, by status", tag_keys=(*keys, "status"))  # type: ignore[arg-type]
        self.candidates = Counter("aivd_edge_candidates", description="candidate regions the edge proposed", tag_keys=keys)
        self.offloaded = Counter("aivd_edge_offloaded", description="candidate regions sent to the cloud", tag_keys=keys)
        self.cloud_errors = Counter("aivd_edge_cloud_errors", description="images whose cloud analysis failed", tag_keys=keys)
        self.ratio = Gauge("aivd_edge_offload_ratio", description="share of this replica's candidate regions sent to the cloud",
                           tag_keys=keys)
        self.totals = InspectSummary()

    def inspected(self, record: InspectionRecord) -> None:
        totals = self.totals
        before = (totals.candidates, totals.sent, totals.cloud_failed)
        totals.count(record)
        self.images.inc(tags={**self.tags, "status": record.status})
        for counter, was, now in zip((self.candidates, self.offloaded, self.cloud_errors), before,
                                     (totals.candidates, totals.sent, totals.cloud_failed)):
            if now > was:
                counter.inc(now - was, tags=self.tags)
        self.ratio.set(totals.offload_ratio, tags=self.tags)


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
               now: float, missed_for_unhealthy: int = 3, cap: int | None = None) -> NodeState:
    """A policy's view of one replica. A replica that has not reported yet looks idle, fast and close, so that a
    new or restarted replica gets work at once; a report older than a period counts missed heartbeats. `cap` is the
    replica's max_ongoing_requests: at it, the replica has no room."""
    reported_at = stats.get("time")
    missed = 0 if reported_at is None else max(0, int((now - reported_at) / period_s) - 1)
    service_s = stats.get("service_s")
    queue_len = int(queue_len if queue_len is not None else stats.get("queue_len", 0))
    return NodeState(
        node_id=node_id,
        cpu_idle=float(min(max(stats.get("cpu_idle", 1.0), 0.0), 1.0)),
        queue_len=queue_len,
        queue_bound=queue_bound,
        bandwidth_bps=float(stats.get("bandwidth_bps") or UNKNOWN_BANDWIDTH_BPS),
        latency_s=float(max(stats.get("latency_s") or 0.0, 0.0)),
        service_rate=1.0 / service_s if service_s else 1e3,
        healthy=missed < missed_for_unhealthy,
        missed_heartbeats=missed,
        errors=int(stats.get("errors", 0)),
        room=cap is None or queue_len < cap,
    )
