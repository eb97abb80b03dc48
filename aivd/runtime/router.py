"""The scheduling policies as a Ray Serve request router.

Ray Serve calls `choose_replicas` for every request with the replicas it may use; we describe each as a
`NodeState` (the router's own count of requests in flight, the replica's last routing stats) and let the same
policy object the simulator uses pick one. We return it as the first rank and the others as the second: Ray
sends the request to our choice unless that replica is at `max_ongoing_requests`, and then to the least loaded
of the rest, so a request waits at the router only when every replica is full (late binding). A policy that waits
for room (`waits_for_room`: aivd's hold) gets its choice as the only rank, and when it holds the request we return
no rank at all: Ray then backs off and asks again, so the request waits at the router for a replica that would
finish it sooner than one with room, as the simulator's dispatcher holds it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from aivd.runtime import telemetry
from aivd.scheduling import AivdConfig, AivdScore, PolicyConfig, Task, make_policy, waits_for_room


def payload_bytes(request: PendingRequest | None) -> int:
    """The bytes the request carries to the edge node (its image and template)."""
    if request is None:
        return 0
    values = list(request.args) + list(request.kwargs.values())
    return sum(len(v) for v in values if isinstance(v, (bytes, bytearray)))


class PolicyDecider:
    """One routing decision from the replicas' routing stats and queue lengths, timed into `times` (the module's
    DecisionTimes unless given). Free of Ray's types so that `aivd bench router` times the same code at replica
    counts one machine cannot run."""

    def __init__(self, policy: str = "aivd", weights: dict[str, Any] | None = None, queue_bound: int = 4,
                 stats_period_s: float = 0.5, seed: int = 0, times: telemetry.DecisionTimes | None = None) -> None:
        self.policy_name = policy
        self.policy = make_policy(policy, PolicyConfig.with_weights(policy, AivdConfig(**weights) if weights else None))
        self.queue_bound = queue_bound
        self.stats_period_s = stats_period_s
        self.rng = np.random.default_rng(seed)
        self.decisions = 0
        self.times = times

    def decide(self, stats: dict[str, dict], queue_lens: dict[str, int | None], payload: int, now: float,
               started: float | None = None, caps: dict[str, int] | None = None, waiting: int = 1) -> str | None:
        """The replica id the policy picks, None if it holds the request; `stats`, `queue_lens` and `caps` (each
        replica's max_ongoing_requests) are keyed by replica id, `waiting` counts the requests waiting for a replica,
        this one included. The time observed runs from `started` (a caller's `perf_counter()`, so that its own
        preparation counts) or from this call."""
        started = time.perf_counter() if started is None else started
        caps = caps or {}
        states = [telemetry.node_state(rid, stats[rid], queue_lens.get(rid), self.queue_bound, self.stats_period_s, now,
                                       cap=caps.get(rid)) for rid in stats]
        self.decisions += 1
        task = Task(self.decisions, payload, waiting)
        scores: dict[str, float] = {}
        chosen_id: str | None
        if isinstance(self.policy, AivdScore):
            chosen_id, scores = self.policy.choose_scored(task, states, self.rng)
        else:
            chosen_id = self.policy.choose(task, states, self.rng)
        # Through the module, not a name imported from it: Ray ships this class to the replicas by value, and
        # the counts must be the one object the ingress reads.
        (self.times or telemetry.DECISIONS).observe(time.perf_counter() - started, self.policy_name)
        telemetry.NODES.record(states, {rid: s.get("node_class") for rid, s in stats.items()}, scores)
        return chosen_id


class PolicyRequestRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, policy: str = "aivd", weights: dict[str, Any] | None = None, queue_bound: int = 4,
                         stats_period_s: float = 0.5, seed: int = 0, **_: Any) -> None:
        self.decider = PolicyDecider(policy, weights, queue_bound, stats_period_s, seed)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Ray retries a request none of our ranks could take (every replica full, or a hold) at once, in a loop
            # that yields to nothing unless this is set: with [] it would spin the router's event loop, and with full
            # replicas it probed them back to back. Ray's own routers set it too (after their locality tries).
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        started = time.perf_counter()
        cache = self.replica_queue_len_cache
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        chosen_id = self.decider.decide({rid: r.routing_stats or {} for rid, r in by_id.items()},
                                        {rid: cache.get(r.replica_id) for rid, r in by_id.items()},
                                        payload_bytes(pending_request), time.time(), started,
                                        {rid: r.max_ongoing_requests for rid, r in by_id.items()},
                                        max(self.num_pending_requests, 1))
        if chosen_id is None:
            return []  # held: Ray backs off and asks again
        chosen = by_id[chosen_id]
        rest = [r for r in candidate_replicas if r is not chosen]
        return [[chosen], rest] if rest and not waits_for_room(self.decider.policy) else [[chosen]]
