"""Scheduling policies: pick the edge node that inspects a task.

Each policy is a small class with one method, `choose(task, states, rng) -> node_id`, in the spirit of Ray Serve's
RequestRouter. They know nothing of simpy, Ray, HTTP or files, so the simulator and the runtimes use them
unchanged. A policy object may keep state between decisions (round-robin's cursor, aivd's smoothed scores), so
each run makes its own with `make_policy`. All randomness comes from the `rng` the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aivd.scheduling.state import NodeState, Task


class Policy(Protocol):
    name: str

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str | None:
        """The node to send `task` to, or None: hold it at the dispatcher and ask again later (only a policy that
        `waits_for_room` holds; the others always name a node)."""
        ...


class AivdConfig(BaseModel):
    """Parameters of the score S = a*U + b*Q + c*C + d*B + e*L (each term in [0, 1], higher = better).

    The paper's score has no `c`: with `c = 0` this is its exact form (the `aivd-paper` policy, PAPER_WEIGHTS).
    C is the speed-aware term (expected completion time, see AivdScore). The defaults are the best measured
    weights (docs/scheduling.md): mostly C, whose inputs (in-flight count, service rate, link) predict when a
    task would finish; U, B and L are telemetry a period plus a delay old, and smoothing a score that changes
    with every task sent only delays what the in-flight count says at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    a: float = Field(0.05, ge=0, description="weight of CPU idle U")
    b: float = Field(0.05, ge=0, description="weight of queue headroom Q")
    c: float = Field(0.85, ge=0, description="weight of expected completion C (0: the paper's score)")
    d: float = Field(0.025, ge=0, description="weight of relative bandwidth B")
    e: float = Field(0.025, ge=0, description="weight of relative latency L")
    eta: float = Field(0.0, ge=0, lt=1, description="weight of a node's previous smoothed score; 0 = no smoothing")
    gamma: float = Field(0.5, gt=0, lt=1, description="multiplicative penalty for overloaded or anomalous nodes")
    max_skips: int = Field(64, ge=1, description="a healthy node passed over this many decisions in a row is chosen")
    overload: Literal["queue", "time"] = Field(
        "time", description="a node is overloaded past queue_bound tasks in flight (queue, the paper's), or past the "
        "time queue_bound tasks take at the candidates' mean service rate (time: a fast node may hold more; counted in "
        "tasks, the penalty sent work from busy GPU modules to idle ARM boards at saturation)")
    hold: bool = Field(
        True, description="choose among every node, full ones too, and hold the task at the dispatcher while the chosen "
        "node is full, instead of choosing only among nodes with room: under a cap, once the fast nodes were full those "
        "were the slow ones, which then drained a burst alone (see waits_for_room)")
    bind_ahead_s: float | None = Field(
        4.0, gt=0, description="with hold, a node is also full once it has two tasks or more in flight and its work in "
        "flight (queue_len / service_rate) reaches its link's round trip for this payload plus this many seconds: the "
        "rest wait at the dispatcher and are bound late, on fresh queue counts, instead of queueing behind work "
        "estimated seconds earlier (at saturation the last nodes then drained alone); None: only the dispatcher's cap")


# The paper's score as it was tuned before C existed: Q dominates because the dispatcher knows it exactly.
PAPER_WEIGHTS = AivdConfig(a=0.05, b=0.85, c=0.0, d=0.05, e=0.05, eta=0.2, overload="queue", hold=False, bind_ahead_s=None)


class PolicyConfig(BaseModel):
    """Configuration for every policy in the registry; only the aivd scores have parameters today."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aivd: AivdConfig = AivdConfig()
    aivd_paper: AivdConfig = PAPER_WEIGHTS

    @classmethod
    def with_weights(cls, policy: str, weights: AivdConfig | None) -> PolicyConfig:
        """The default configuration, with `weights` for the aivd score `policy` names (ignored for the others)."""
        field = {"aivd": "aivd", "aivd-paper": "aivd_paper"}.get(policy)
        return cls(**{field: weights}) if weights is not None and field else cls()


def waits_for_room(policy: Policy) -> bool:
    """Whether `policy` is to be offered every node, those without room (at the dispatcher's cap) too, and may
    answer None: hold the task, ask again when a slot frees (or, on Ray, after its backoff). The others are offered
    only the nodes with room, and always place the task at once."""
    return isinstance(policy, AivdScore) and policy.config.hold


def eligible(states: Sequence[NodeState]) -> list[NodeState]:
    """Healthy nodes; all of them if none is healthy, so that a task always has somewhere to wait."""
    healthy = [s for s in states if s.healthy]
    return healthy or list(states)


def best_index(values: Sequence[float], rng: np.random.Generator) -> int:
    """Index of the largest value, ties broken at random so that equal nodes share the work."""
    top = max(values)
    ties = [i for i, v in enumerate(values) if v == top]
    return ties[0] if len(ties) == 1 else ties[int(rng.integers(len(ties)))]


class RoundRobin:
    name = "rr"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str:
        nodes = eligible(states)
        node = nodes[self._turn % len(nodes)]
        self._turn += 1
        return node.node_id


class StaticResourceAware:
    """The paper's SRA baseline: the node with the most idle CPU in its last telemetry."""

    name = "sra"

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str:
        nodes = eligible(states)
        return nodes[best_index([s.cpu_idle for s in nodes], rng)].node_id


class UniformRandom:
    name = "random"

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str:
        nodes = eligible(states)
        return nodes[int(rng.integers(len(nodes)))].node_id


class JoinShortestQueue:
    name = "jsq"

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str:
        nodes = eligible(states)
        return nodes[best_index([-s.queue_len for s in nodes], rng)].node_id


class PowerOfTwoChoices:
    """Ray Serve's default router: sample two nodes, send to the one with the shorter queue."""

    name = "p2c"

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str:
        nodes = eligible(states)
        if len(nodes) == 1:
            return nodes[0].node_id
        first, second = (nodes[int(i)] for i in rng.choice(len(nodes), size=2, replace=False))
        return (second if second.queue_len < first.queue_len else first).node_id


def expected_completion_s(task: Task, state: NodeState) -> float:
    """Seconds until `task` would finish on the node: transfer, then the queue ahead of it, then itself."""
    return state.latency_s + task.payload_bytes / state.bandwidth_bps + (state.queue_len + 1) / state.service_rate


class ExpectedCompletionTime:
    """Our policy: the node with the earliest expected completion, using the measured service rate."""

    name = "ect"

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str:
        nodes = eligible(states)
        return nodes[best_index([-expected_completion_s(task, s) for s in nodes], rng)].node_id


class AivdScore:
    """The paper's resource-aware score with smoothing, a penalty for bad nodes, a starvation floor and argmax,
    plus a speed-aware term C.

    Normalisation, every term in [0, 1] with higher = better:
      U = cpu_idle;
      Q = queue_bound / (queue_bound + queue_len)   (congestion inverted: an empty queue scores 1, one at the
          bound 0.5; it never reaches 0, so nodes past the bound are still told apart by their queues instead of
          all scoring 0 and the choice falling to U, B and L alone, which herds work onto the best link);
      C = the earliest expected completion among the candidates / this node's   (`expected_completion_s`: the
          link's transfer time for this payload, the work in flight at the node's measured service rate, then
          this task; the node that would finish the task first scores 1);
      B = bandwidth / the best bandwidth among the candidates;
      L = the lowest latency among the candidates / latency   (latency inverted: the fastest link scores 1).
    C, B and L are relative to the other nodes so that the score does not depend on the units or the network.
    With `c = 0` this is the paper's score; `aivd-paper` is that form with PAPER_WEIGHTS.

    With `hold` (the default) the candidates include the full nodes: those at the dispatcher's cap (`room=False`)
    and those with `bind_ahead_s` of work beyond their link's round trip. When the best node is full, `choose`
    answers None and the dispatcher holds the task. A slow node then takes a task only when it would finish it before
    the fast ones could, not whenever it is the only one with room, and work is bound to a node only shortly before
    the node can start it, on the queue counts of then.
    """

    def __init__(self, config: AivdConfig | None = None, name: str = "aivd") -> None:
        self.config = config or AivdConfig()
        self.name = name
        self._smoothed: dict[str, float] = {}
        self._skips: dict[str, int] = {}

    def raw_scores(self, task: Task, states: Sequence[NodeState]) -> list[float]:
        c = self.config
        best_bw = max(s.bandwidth_bps for s in states)
        # A latency floor of 1 microsecond keeps L finite for a node that reports zero latency.
        best_lat = max(min(s.latency_s for s in states), 1e-6)
        completion = [expected_completion_s(task, s) for s in states] if c.c else [1.0] * len(states)
        best_completion = min(completion)
        return [
            c.a * s.cpu_idle
            + c.b * s.queue_bound / (s.queue_bound + s.queue_len)
            + c.c * best_completion / done
            + c.d * s.bandwidth_bps / best_bw
            + c.e * best_lat / max(s.latency_s, 1e-6)
            for s, done in zip(states, completion)
        ]

    def has_room(self, task: Task, state: NodeState) -> bool:
        """Below the dispatcher's cap and, with `bind_ahead_s`, below that much work beyond the link's round trip."""
        ahead = self.config.bind_ahead_s
        if not state.room or ahead is None or state.queue_len < 2:
            return state.room
        round_trip = 2 * state.latency_s + task.payload_bytes / state.bandwidth_bps
        return state.queue_len / state.service_rate < round_trip + ahead

    def worth_the_wait(self, task: Task, nodes: list[NodeState], scores: list[float], full: int) -> int | None:
        """The best-scored node with room, if the tasks waiting at the dispatcher are enough to keep the nodes that
        would finish sooner busy while it works (so that it adds capacity instead of delaying this task); else None.

        Holding every task for the best node left slow nodes idle once the backlog was long (scenario 3 with 4 in
        flight per node: 0.61 of capacity): with W tasks waiting, a node that finishes this one t seconds after the
        full node does is worth using when the nodes faster than it cannot get through W tasks in those t seconds."""
        roomy = [i for i, state in enumerate(nodes) if self.has_room(task, state)]
        if not roomy:
            return None
        best = max(roomy, key=lambda i: scores[i])
        done = expected_completion_s(task, nodes[best])
        later = done - expected_completion_s(task, nodes[full])
        faster = sum(state.service_rate for state in nodes if expected_completion_s(task, state) < done)
        return best if task.waiting >= later * faster else None

    def penalised(self, state: NodeState, mean_rate: float) -> bool:
        """Overloaded (past the queue bound, in tasks or in time, see AivdConfig.overload) or anomalous."""
        if self.config.overload == "queue":
            overloaded = state.queue_len > state.queue_bound
        else:
            overloaded = state.queue_len / state.service_rate > state.queue_bound / mean_rate
        return overloaded or state.missed_heartbeats > 0 or state.errors > 0

    def choose(self, task: Task, states: Sequence[NodeState], rng: np.random.Generator) -> str | None:
        return self.choose_scored(task, states, rng)[0]

    def choose_scored(self, task: Task, states: Sequence[NodeState],
                      rng: np.random.Generator) -> tuple[str | None, dict[str, float]]:
        """`choose`'s node (None: hold the task) and the score each eligible node had for it (smoothed, penalised),
        for a runtime to show; one call, so that showing the scores neither moves the smoothing nor the skip counts a
        second time."""
        c = self.config
        nodes = eligible(states)
        mean_rate = sum(state.service_rate for state in nodes) / len(nodes)
        scores = []
        for state, raw in zip(nodes, self.raw_scores(task, nodes)):
            previous = self._smoothed.get(state.node_id, raw)
            smooth = c.eta * previous + (1.0 - c.eta) * raw
            self._smoothed[state.node_id] = smooth
            # The penalty applies after smoothing so that a node turning bad is avoided at once, not eta-slowly.
            scores.append(smooth * c.gamma if self.penalised(state, mean_rate) else smooth)
        scored = {state.node_id: score for state, score in zip(nodes, scores)}
        # A full node is not starved: it has work. Room is asked of the few nodes that need it, not of every node.
        starved = [i for i, s in enumerate(nodes)
                   if self._skips.get(s.node_id, 0) >= c.max_skips and (not c.hold or self.has_room(task, s))]
        best = max(starved, key=lambda i: self._skips[nodes[i].node_id]) if starved else best_index(scores, rng)
        if c.hold and not self.has_room(task, nodes[best]):
            # Full past bind_ahead_s, the node has seconds of work queued, and a node about to run dry would score best
            # itself: waiting idles nobody (falling back here cost scenario 3's saturation 0.954 -> 0.939). At a small
            # cap a full fast node may hold a fraction of a second of work, and waiting for it idled the slow nodes.
            fallback = None if nodes[best].room else self.worth_the_wait(task, nodes, scores, best)
            if fallback is None:
                # Held: nothing is placed, so no node is passed over (on Ray the router asks again at every backoff
                # while a task is held, and counting those would force slow nodes past the floor).
                return None, scored
            best = fallback
        for state in nodes:
            self._skips[state.node_id] = 0 if state is nodes[best] else self._skips.get(state.node_id, 0) + 1
        return nodes[best].node_id, scored


POLICIES: dict[str, Callable[[PolicyConfig], Policy]] = {
    "rr": lambda config: RoundRobin(),
    "sra": lambda config: StaticResourceAware(),
    "random": lambda config: UniformRandom(),
    "jsq": lambda config: JoinShortestQueue(),
    "p2c": lambda config: PowerOfTwoChoices(),
    "aivd": lambda config: AivdScore(config.aivd),
    "aivd-paper": lambda config: AivdScore(config.aivd_paper, name="aivd-paper"),
    "ect": lambda config: ExpectedCompletionTime(),
}


def make_policy(name: str, config: PolicyConfig | None = None) -> Policy:
    """A fresh policy by registry name; raises KeyError naming the known policies for an unknown one."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    return factory(config or PolicyConfig())
