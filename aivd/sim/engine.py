"""Discrete-event simulation (simpy) of dispatcher -> edge nodes -> cloud, driven by any scheduling policy.

A task arrives at the dispatcher, which asks the policy for a node using what it knows: its own count of tasks
in flight per node (exact) and each node's last telemetry (a period plus a delivery delay old). The payload
crosses that node's link (transfers go one at a time, each at the link's bandwidth of the moment, then pay the propagation
latency), waits in the node's FIFO queue, is inspected, and the result is acknowledged to the dispatcher. The
crops then go up a shared uplink to the cloud, which analyses them in batches. A task's latency runs from its
arrival to the end of its cloud batch. Nothing is dropped: a crashed node keeps its queue and serves it after
recovery, so `lost` counts only tasks still unfinished when the run is cut off.

Randomness is split into independent streams (arrivals and task work, links, policy, cloud) from one seed, so
identical seeds give identical results and different policies see the same arrivals and the same work.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import simpy

from aivd.scheduling import NodeState, PolicyConfig, Task, make_policy, waits_for_room
from aivd.sim.links import LinkTrace
from aivd.sim.scenarios import NODE_CLASSES, Arrivals, LinkProfile, NodeClass, Scenario

# A run still unfinished this many expected run lengths after its start is cut off; its unfinished tasks are lost.
CUTOFF_FACTOR = 50

Upload = Literal["crops", "image"]


def capacity_per_s(scenario: Scenario, nodes: int) -> float:
    """The edge capacity bound: the sum of the nodes' nominal service rates, in tasks per second."""
    return sum(1.0 / node_class(scenario, i).service_mean_s for i in range(nodes))


def node_class(scenario: Scenario, index: int) -> NodeClass:
    cls = NODE_CLASSES[scenario.node_mix[index % len(scenario.node_mix)]]
    if scenario.service_scale == 1.0:
        return cls
    return cls.model_copy(update={"service_mean_s": cls.service_mean_s * scenario.service_scale})


def arrival_times(arrivals: Arrivals, rate: float, tasks: int, rng: np.random.Generator) -> np.ndarray:
    if arrivals.kind == "poisson":
        return np.cumsum(rng.exponential(1.0 / rate, tasks))
    # Markov-modulated Poisson: the calm rate is set so that the long-run mean is `rate`.
    share, factor = arrivals.burst_share, arrivals.burst_factor
    calm = rate / (1.0 - share + share * factor)
    mean_calm_s = arrivals.mean_burst_s * (1.0 - share) / share
    times: list[float] = []
    t, bursting = 0.0, False
    while len(times) < tasks:
        end = t + rng.exponential(arrivals.mean_burst_s if bursting else mean_calm_s)
        phase_rate = calm * factor if bursting else calm
        t += rng.exponential(1.0 / phase_rate)
        while t < end and len(times) < tasks:
            times.append(t)
            t += rng.exponential(1.0 / phase_rate)
        t, bursting = end, not bursting
    return np.asarray(times)


class Link(LinkTrace):
    """A dispatcher-to-node link: its trace plus a wire that carries one transfer at a time."""

    def __init__(self, env: simpy.Environment, profile: LinkProfile, rng: np.random.Generator) -> None:
        super().__init__(profile, rng)
        self.wire = simpy.Resource(env, capacity=1)


@dataclass
class Node:
    node_id: str
    cls: NodeClass
    link: Link
    server: simpy.Resource
    sigma: float  # lognormal spread of service times, from the class's coefficient of variation
    slow_factor: float = 1.0
    down_until: float = 0.0
    busy_s: float = 0.0
    busy_since: float | None = None
    mean_service_s: float = 0.0  # exponentially smoothed measured service time, as the node would report it
    in_flight: int = 0  # the dispatcher's count: sent and not yet acknowledged
    peak_in_flight: int = 0
    served: int = 0
    report: tuple = ()  # (sample time, cpu_idle, bandwidth, latency, service rate) as last delivered
    pending: list = field(default_factory=list)  # reports sampled but not yet delivered: (deliver_at, report)

    def busy_total(self, now: float) -> float:
        return self.busy_s + (now - self.busy_since if self.busy_since is not None else 0.0)


@dataclass(frozen=True)
class RunResult:
    policy: str
    tasks: int
    completed: int
    lost: int
    throughput_per_s: float
    capacity_per_s: float
    capacity_fraction: float
    reachable_per_s: float
    reachable_fraction: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    comm_latency_mean_ms: float
    utilisation: dict[str, float]
    memory_peak_mb: dict[str, float]
    assigned: dict[str, int]

    def summary(self) -> dict:
        """The per-policy JSON object of `aivd simulate`."""
        keys = ("throughput_per_s", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                "comm_latency_mean_ms", "capacity_fraction", "reachable_per_s", "reachable_fraction")
        out: dict = {k: round(float(getattr(self, k)), 3) for k in keys}
        out.update(lost=self.lost, completed=self.completed, assigned=self.assigned,
                   utilisation={k: round(v, 3) for k, v in self.utilisation.items()},
                   memory_peak_mb={k: round(v, 1) for k, v in self.memory_peak_mb.items()})
        return out


class Simulation:
    def __init__(self, scenario: Scenario, nodes: int, policy: str | None, tasks: int, seed: int,
                 policy_config: PolicyConfig | None = None, upload: Upload = "crops",
                 max_in_flight: int | None = None, arrivals: np.ndarray | None = None) -> None:
        if nodes < 1 or tasks < 1:
            raise ValueError("need at least one node and one task")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if arrivals is not None and (len(arrivals) != tasks or np.any(np.diff(arrivals) < 0) or np.any(arrivals < 0)):
            raise ValueError(f"arrivals must be {tasks} non-negative times in order")
        self.scenario, self.tasks, self.max_in_flight = scenario, tasks, max_in_flight
        # Tasks held by the dispatcher: while every node is at max_in_flight, or while the policy holds the first.
        self.waiting: deque[int] = deque()
        self.env = simpy.Environment()
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2 + nodes)]
        work_rng, self.policy_rng = streams[:2]
        self.capacity = capacity_per_s(scenario, nodes)
        # Drawn even when given, so that the work per task below is the same draw either way.
        drawn = arrival_times(scenario.arrivals, scenario.arrivals.load * self.capacity, tasks, work_rng)
        self.arrivals = drawn if arrivals is None else np.asarray(arrivals, dtype=float)
        # One standard-normal draw of work per task, shared by every policy (common random numbers).
        self.work = work_rng.standard_normal(tasks)
        self.expected_s = float(self.arrivals[-1])
        self.nodes = []
        for i in range(nodes):
            cls = node_class(scenario, i)
            link = Link(self.env, scenario.links[i % len(scenario.links)], streams[2 + i])
            node = Node(f"n{i}", cls, link, simpy.Resource(self.env, capacity=1),
                        sigma=math.sqrt(math.log1p(cls.service_cv**2)), mean_service_s=cls.service_mean_s)
            bandwidth, latency = link.at(0.0)
            node.report = (0.0, 1.0, bandwidth, latency, 1.0 / cls.service_mean_s)
            self.nodes.append(node)
        self.by_id = {n.node_id: n for n in self.nodes}
        self.policy = make_policy(policy, policy_config) if policy else None
        whole_images = upload == "image" or self.policy is None  # without an edge stage the cloud gets the image
        self.upload_bytes = scenario.payload_bytes if whole_images else scenario.cloud.crops_bytes
        self.cloud_item_s = scenario.cloud.image_item_s if whole_images else scenario.cloud.per_item_s
        self.cloud_queue = simpy.Store(self.env)
        self.uplink = simpy.Resource(self.env, capacity=1)
        self.latency = np.full(tasks, np.nan)
        self.comm = np.zeros(tasks)
        self.completed = 0
        self.all_done = self.env.event()
        self.last_done = 0.0

    # --- what the dispatcher sees ---------------------------------------------------------------------------
    def states(self, now: float) -> list[NodeState]:
        """Deliver the reports that have arrived by `now`, then describe every node as the dispatcher knows it."""
        s = self.scenario
        states = []
        for node in self.nodes:
            while node.pending and node.pending[0][0] <= now:
                node.report = node.pending.pop(0)[1]
            sampled, idle, bandwidth, latency, rate = node.report
            missed = max(0, int((now - s.telemetry_delay_s - sampled) / s.telemetry_period_s))
            room = self.max_in_flight is None or node.in_flight < self.max_in_flight
            states.append(NodeState(node.node_id, idle, node.in_flight, s.queue_bound, bandwidth, latency, rate,
                                    healthy=missed < s.unhealthy_after_missed, missed_heartbeats=missed, room=room))
        return states

    # --- processes ------------------------------------------------------------------------------------------
    def dispatcher(self):
        for i, at in enumerate(self.arrivals):
            yield self.env.timeout(at - self.env.now)
            if self.policy is None:  # cloud-only: no edge stage, the image goes straight up
                self.env.process(self.to_cloud(i, self.env.now, 0.0))
                continue
            self.waiting.append(i)
            self.dispatch_waiting()

    def dispatch_waiting(self) -> None:
        """Place waiting tasks in arrival order. Without `max_in_flight` every task is placed on arrival; with it,
        only on nodes below the cap (late binding, as Ray Serve's max_ongoing_requests does), and the rest wait
        here until an acknowledgement frees a slot. A policy that waits for room (`waits_for_room`) is offered the
        full nodes too; when it holds the task (None), the task stays first in line and is decided again at the next
        acknowledgement, arrival or telemetry report."""
        payload = self.scenario.payload_bytes
        assert self.policy is not None  # only tasks for an edge stage wait here
        offer_full = waits_for_room(self.policy)
        while self.waiting:
            states = self.states(self.env.now)
            if not any(s.room for s in states):
                return
            offered = states if offer_full else [s for s in states if s.room]
            i = self.waiting[0]
            chosen = self.policy.choose(Task(i, payload, len(self.waiting)), offered, self.policy_rng)
            if chosen is None:
                return  # held: the policy would rather wait for a full node than use one with room
            node = self.by_id[chosen]
            self.waiting.popleft()
            node.in_flight += 1
            node.peak_in_flight = max(node.peak_in_flight, node.in_flight)
            self.env.process(self.task(i, node))

    def task(self, i: int, node: Node):
        env, s = self.env, self.scenario
        arrived, dispatched = float(self.arrivals[i]), env.now
        with node.link.wire.request() as wire:
            yield wire
            yield env.timeout(node.link.transfer_s(env.now, s.payload_bytes))
        yield env.timeout(node.link.at(env.now)[1])
        comm = env.now - dispatched  # link queue, transfer and propagation
        with node.server.request() as slot:
            yield slot
            while env.now < node.down_until:  # crashed: the queue waits for the restart
                yield env.timeout(node.down_until - env.now)
            service = node.cls.service_mean_s * math.exp(node.sigma * self.work[i] - node.sigma**2 / 2) * node.slow_factor
            node.busy_since = env.now
            yield env.timeout(service)
            node.busy_s += service
            node.busy_since = None
            node.served += 1
            node.mean_service_s += 0.2 * (service - node.mean_service_s)
        # The acknowledgement travels back over the same link before the dispatcher decrements its count.
        ack_latency = node.link.at(env.now)[1]
        env.process(self.acknowledge(node, ack_latency))
        yield from self.to_cloud(i, arrived, comm)

    def to_cloud(self, i: int, arrived: float, comm: float):
        """Upload the task's crops (or whole image) on the shared uplink and wait for its cloud batch."""
        env, c = self.env, self.scenario.cloud
        sent = env.now
        with self.uplink.request() as wire:
            yield wire
            yield env.timeout(self.upload_bytes / c.uplink_bps)
        yield env.timeout(c.uplink_latency_s)
        self.comm[i] = comm + env.now - sent
        done = env.event()
        yield self.cloud_queue.put(done)
        yield done
        self.latency[i] = env.now - arrived
        self.completed += 1
        self.last_done = env.now
        if self.completed == self.tasks:
            self.all_done.succeed()

    def acknowledge(self, node: Node, latency: float):
        yield self.env.timeout(latency)
        node.in_flight -= 1
        if self.waiting:
            self.dispatch_waiting()

    def cloud(self):
        c, env = self.scenario.cloud, self.env
        while True:
            batch = [(yield self.cloud_queue.get())]
            deadline = env.now + c.batch_timeout_s
            while len(batch) < c.batch_max:
                get = self.cloud_queue.get()
                result = yield get | env.timeout(max(deadline - env.now, 0.0))
                if get not in result:
                    get.cancel()
                    break
                batch.append(get.value)
            yield env.timeout(c.batch_base_s + self.cloud_item_s * len(batch))
            for done in batch:
                done.succeed()

    def telemetry(self, node: Node):
        s, env = self.scenario, self.env
        last_busy = 0.0
        while True:
            yield env.timeout(s.telemetry_period_s)
            busy = node.busy_total(env.now)
            if env.now < node.down_until:  # a crashed node sends nothing; its heartbeats go missing
                last_busy = busy
                continue
            idle = min(max(1.0 - (busy - last_busy) / s.telemetry_period_s, 0.0), 1.0)
            last_busy = busy
            bandwidth, latency = node.link.at(env.now)
            node.pending.append((env.now + s.telemetry_delay_s, (env.now, idle, bandwidth, latency, 1.0 / node.mean_service_s)))
            if self.waiting:
                # A held task is decided again as time passes, not only on acknowledgements: the node it waits for
                # may have crashed and will acknowledge nothing until it is back (Ray's router retries on a backoff).
                self.dispatch_waiting()

    def event(self, node: Node, kind: str, start: float, duration: float, factor: float):
        yield self.env.timeout(start)
        if kind == "crash":
            node.down_until = start + duration
        else:
            node.slow_factor = factor
            yield self.env.timeout(duration)
            node.slow_factor = 1.0

    def start(self) -> None:
        """Register every process; `run` then advances the clock (tests may advance it part of the way)."""
        env = self.env
        env.process(self.dispatcher())
        env.process(self.cloud())
        for node in self.nodes:
            env.process(self.telemetry(node))
        for node, kind, start, end, factor in self.event_windows():
            env.process(self.event(node, kind, start, end - start, factor))

    def event_windows(self) -> list[tuple[Node, str, float, float, float]]:
        """The scenario's events in seconds: (node, kind, start, end, slow-down factor)."""
        return [(self.nodes[e.node % len(self.nodes)], e.kind, e.start_frac * self.expected_s,
                 (e.start_frac + e.duration_frac) * self.expected_s, e.factor) for e in self.scenario.events]

    def run(self) -> RunResult:
        env = self.env
        self.start()
        env.run(until=env.any_of([self.all_done, env.timeout(CUTOFF_FACTOR * self.expected_s + 60.0)]))
        return self.result()

    def reachable_per_s(self, start: float, end: float) -> float:
        """A tighter bound than the nominal capacity: the tasks per second the nodes would complete between `start`
        and `end` if each were fed without pause, through its own link (the run's bandwidth and latency draws)
        and its own slow-downs and crashes, at its mean service time. No policy can keep every node busier."""
        windows = self.event_windows()
        payload = self.scenario.payload_bytes
        completed = 0
        for node in self.nodes:
            mine = [(kind, t0, t1, factor) for n, kind, t0, t1, factor in windows if n is node]
            link_free = server_free = start
            while True:
                link_free += node.link.transfer_s(link_free, payload)
                begin = max(link_free + node.link.at(link_free)[1], server_free)
                for kind, t0, t1, _ in mine:
                    if kind == "crash" and t0 <= begin < t1:
                        begin = t1
                slow = math.prod(f for kind, t0, t1, f in mine if kind == "slow" and t0 <= begin < t1)
                server_free = begin + node.cls.service_mean_s * slow
                if server_free > end:
                    break
                completed += 1
        return completed / (end - start)

    def result(self) -> RunResult:
        span = max(self.last_done - float(self.arrivals[0]), 1e-9)
        done = self.latency[~np.isnan(self.latency)] * 1000.0
        pct = np.percentile(done, [50, 95, 99]) if done.size else [math.nan] * 3
        throughput = float(self.completed / span)
        reachable = self.reachable_per_s(float(self.arrivals[0]), float(self.arrivals[0]) + span)
        return RunResult(
            policy=self.policy.name if self.policy else "cloud-only", tasks=self.tasks, completed=self.completed, lost=self.tasks - self.completed,
            throughput_per_s=throughput, capacity_per_s=self.capacity, capacity_fraction=throughput / self.capacity,
            reachable_per_s=reachable, reachable_fraction=throughput / reachable,
            latency_mean_ms=float(done.mean()) if done.size else math.nan,
            latency_p50_ms=float(pct[0]), latency_p95_ms=float(pct[1]), latency_p99_ms=float(pct[2]),
            comm_latency_mean_ms=float(self.comm[~np.isnan(self.latency)].mean() * 1000.0) if done.size else math.nan,
            utilisation={n.node_id: n.busy_total(self.last_done) / span for n in self.nodes},
            memory_peak_mb={n.node_id: n.cls.model_memory_mb + n.peak_in_flight * self.scenario.payload_bytes / 1e6
                            for n in self.nodes},
            assigned={n.node_id: n.served for n in self.nodes},
        )


def simulate(scenario: Scenario, nodes: int, policy: str | None, tasks: int, seed: int,
             policy_config: PolicyConfig | None = None, upload: Upload = "crops",
             max_in_flight: int | None = None, arrivals: np.ndarray | None = None) -> RunResult:
    """Run one policy on one scenario; identical arguments give identical results.

    `policy=None` is the cloud-only pipeline (every image analysed in the cloud); `upload="image"` makes the edge
    forward whole images instead of crops, as a traditional edge-cloud pipeline does. `max_in_flight` caps the
    tasks in flight per node; the dispatcher holds the rest and places each when a slot frees (late binding).
    `arrivals` (seconds, in order, one per task) replaces the scenario's draw: a benchmark's own send times.
    """
    return Simulation(scenario, nodes, policy, tasks, seed, policy_config, upload, max_in_flight, arrivals).run()
