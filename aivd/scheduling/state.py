"""What a scheduling policy sees: the task to place and one snapshot per node.

Both are plain frozen dataclasses, not pydantic models, because the simulator builds one per node per decision
(hundreds of thousands per run) and validation there would dominate the run time. Runtimes that receive
telemetry over the network validate it at that boundary, not here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Task:
    """One image to inspect. `payload_bytes` is what crosses the link to the chosen node (test + template)."""

    task_id: int
    payload_bytes: int
    waiting: int = 1  # tasks waiting at the dispatcher for a node, this one included


@dataclass(frozen=True, slots=True)
class NodeState:
    """The dispatcher's view of one edge node at decision time.

    `queue_len` is the dispatcher's own count of tasks sent to the node and not yet acknowledged, so it is exact
    up to the acknowledgement latency; everything else comes from the node's telemetry and is as old as the
    telemetry period plus its delivery delay.
    """

    node_id: str
    cpu_idle: float  # fraction of the last telemetry period the node was idle, in [0, 1]
    queue_len: int
    queue_bound: int  # the queue length beyond which the node counts as overloaded
    bandwidth_bps: float  # bytes per second on the link from the dispatcher to the node
    latency_s: float  # one-way network latency to the node
    service_rate: float  # measured tasks per second when busy (1 / mean service time)
    healthy: bool = True  # false once the node misses too many heartbeats; no policy sends work there
    missed_heartbeats: int = 0
    errors: int = 0  # errors the node reported since its last telemetry
    # False when the node is at the dispatcher's cap on tasks in flight (late binding, Ray Serve's
    # max_ongoing_requests): a task sent now would wait at the dispatcher until the node frees a slot.
    room: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.cpu_idle <= 1.0:
            raise ValueError(f"cpu_idle must be in [0, 1], got {self.cpu_idle}")
        if self.queue_len < 0 or self.queue_bound < 1:
            raise ValueError("queue_len must be >= 0 and queue_bound >= 1")
        if self.bandwidth_bps <= 0 or self.latency_s < 0 or self.service_rate <= 0:
            raise ValueError("bandwidth and service rate must be positive and latency non-negative")
