"""`aivd bench cluster`: real HTTP load on the Ray Serve runtime with emulated heterogeneous edge nodes, one
deployment per routing policy, beside what the simulator predicts for the same setup.

The emulated cluster copies a simulator scenario: its node classes (cycled gpu, ipc, arm, ipc), its link
profiles (cycled over the nodes) and its arrival process. One machine cannot run the paper's devices at their
speed, so every service time is stretched by `time_scale`: a replica's service lasts its measured inspection
time padded up to a draw of the class's service time x `time_scale` (same mean and spread as the simulator's),
and the simulator is run with the same scale. Arrivals are open-loop (sent on schedule whatever the answers), at `load` x the emulated capacity.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import httpx
import numpy as np

from aivd.config import ImagingConfig, PipelineConfig
from aivd.runtime.config import RAY_DEFAULT_ROUTER, ClusterConfig, EdgeNodeClass
from aivd.sim import SCENARIOS, Scenario, capacity_per_s, simulate, with_load
from aivd.sim.engine import arrival_times, node_class

# What `ray` (Ray Serve's own router) is in the simulator: power of two choices.
SIMULATOR_NAME = {RAY_DEFAULT_ROUTER: "p2c"}
# The default pipeline on DeepPCB's bundled samples, whose imaging scale is 48 px/mm.
BENCH_PIPELINE = PipelineConfig(imaging=ImagingConfig(pixels_per_mm=48.0))


def measure_service_s(image: bytes, template: bytes, repeats: int = 10) -> float:
    """Median in-process time of the edge's work on one image (detection and crops), single-threaded, as the edge
    replicas of `emulated_config` do it."""
    from aivd.data.images import decode_gray
    from aivd.pipeline.factory import build_pipeline

    pipeline = build_pipeline(BENCH_PIPELINE, threads=1)
    test, reference = decode_gray(image, "image"), decode_gray(template, "template")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        pipeline.propose(test, reference, "probe")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def emulated_config(scenario_id: int, nodes: int, time_scale: float, policy: str,
                    max_ongoing: int, port: int, seed: int, clock_start_unix: float | None = None) -> ClusterConfig:
    scenario = SCENARIOS[scenario_id].model_copy(update={"service_scale": time_scale})
    edge = []
    for i in range(nodes):
        device = node_class(scenario, i)
        edge.append(EdgeNodeClass(name=f"n{i}-{scenario.node_mix[i % len(scenario.node_mix)]}", replicas=1,
                                  service_s=device.service_mean_s, service_cv=device.service_cv,
                                  link=scenario.links[i % len(scenario.links)]))
    return ClusterConfig(edge=edge, policy=policy, max_ongoing_requests=max_ongoing, port=port, seed=seed,
                         pipeline=BENCH_PIPELINE, routing_stats_period_s=scenario.telemetry_period_s,
                         link_clock_start_unix=clock_start_unix)


async def drive(url: str, sends: np.ndarray, image: bytes, template: bytes, timeout_s: float) -> dict:
    """Send one request at each time in `sends` (seconds from now) and time every answer."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()

        async def one(at: float, index: int):
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            sent = time.perf_counter()
            files = {"image": (f"bench{index}_test.jpg", image), "template": (f"bench{index}_temp.jpg", template)}
            try:
                response = await client.post(f"{url}/v1/inspect", files=files)
            except httpx.HTTPError as error:
                return sent, None, f"{type(error).__name__}"
            done = time.perf_counter()
            ok = response.status_code == 200 and response.json().get("status") == "ok"
            return sent, done, None if ok else f"HTTP {response.status_code}: {response.text[:200]}"

        results = await asyncio.gather(*(one(float(at), i) for i, at in enumerate(sends)))
    finished = [(sent, done) for sent, done, error in results if done is not None and error is None]
    errors = [error for _, done, error in results if done is not None and error is not None]
    lost = sum(1 for _, done, _ in results if done is None)
    latencies = np.array([done - sent for sent, done in finished]) * 1000
    span = max(done for _, done in finished) - min(sent for sent, _, _ in results) if finished else float("nan")
    return {
        "throughput_per_s": round(len(finished) / span, 3) if finished else 0.0,
        "latency_mean_ms": round(float(latencies.mean()), 1) if finished else None,
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if finished else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if finished else None,
        "completed": len(finished), "lost": lost, "errors": len(errors), "error_examples": sorted(set(errors))[:3],
    }


def mean_ci95(values: list[float]) -> tuple[float, list[float] | None]:
    """The mean and its 95% Student-t interval over independent repeats; no interval from a single value."""
    from scipy.stats import t

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    half = float(t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean, [mean - half, mean + half]


# Seconds from a deployment's start to its load's: the first run's guess (it includes starting Ray), then LEAD_MARGIN x
# the last run's.
FIRST_LEAD_S = 90.0
LEAD_MARGIN = 1.3
SUMMARISED = ("throughput_per_s", "latency_mean_ms", "latency_p50_ms", "latency_p99_ms")
REFERENCE = "p2c"  # Ray Serve's default rule, run through our router so that only the rule differs
NOISE_FLOOR = f"{REFERENCE}-again"  # the reference run a second time in every repeat: what no policy changed


def with_ci95(values: dict[str, list[float]]) -> dict:
    """Each key's mean over its values, with the 95% interval beside it as `KEY_ci95` (None from a single value)."""
    out: dict = {}
    for key, series in values.items():
        mean, interval = mean_ci95(series)
        out[key], out[f"{key}_ci95"] = round(mean, 3), interval and [round(v, 3) for v in interval]
    return out


def summarise(runs: list[dict]) -> dict:
    """A policy's figures over its repeats: today's keys as means, each with `_ci95` beside it."""
    out = with_ci95({key: [run[key] for run in runs] for key in SUMMARISED})
    for key in ("lost", "errors", "completed"):
        out[key] = sum(run[key] for run in runs)
    return out


def ratios(runs: list[dict], reference: list[dict]) -> dict:
    """Per-repeat ratios against the reference's run of the same repeat (same seed, same arrivals, same link and
    service draws), then their mean and t-interval: pairing removes what the repeats' seeds change."""
    return with_ci95({key: [run[key] / ref[key] for run, ref in zip(runs, reference)] for key in SUMMARISED})


def run_order(labels: list[str], repeat: int) -> list[str]:
    """Repeat `repeat` runs the labels rotated by `repeat` places: every label takes every position in turn, so
    that a drift of the host (warming caches, another session's load) is spread over all of them."""
    shift = repeat % len(labels)
    return labels[shift:] + labels[:shift]


def bench_cluster(nodes: int, scenario_id: int, policies: list[str], requests: int, seed: int, load: float | None,
                  time_scale: float, max_ongoing: int, port: int, sample: Path, repeat: int = 1,
                  noise_floor: bool = True) -> dict:
    """Every policy `repeat` times, alternating; repeat r uses seed `seed + r` for every policy in it."""
    from aivd.runtime.cluster import deploy, shutdown

    # Ray starts its workers (every replica, the ingress and the HTTP proxy) at nice 15, below this process (the load
    # generator) and level with other work on a shared machine: the emulated devices' sleeps then woke late by as
    # much as that work took. Read by the raylet that `deploy` starts; a Ray this process already runs keeps its own.
    os.environ.setdefault("RAY_worker_niceness", "0")
    image = sample.with_name(sample.name.replace("_temp", "_test")).read_bytes()
    template = sample.with_name(sample.name.replace("_test", "_temp")).read_bytes()
    base = measure_service_s(image, template)
    scenario, sends, report = bench_plan(nodes, scenario_id, requests, seed, load, time_scale, repeat)
    labels = list(policies)
    if noise_floor and REFERENCE in policies and repeat > 1:
        labels.append(NOISE_FLOOR)
    report.update({"measured_edge_service_ms": round(base * 1000, 2), "policies": {}, "simulator": {}})
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    lead_s = FIRST_LEAD_S
    routers: dict[str, dict] = {}
    try:
        for r in range(repeat):
            for label in run_order(labels, r):
                policy = label.removesuffix("-again")
                # The links' traces start when the load does, in every run: a deployment's start-up time varies
                # with the host's load, and without this each run met the spikes at other points of its arrivals.
                deploying = time.time()
                start_at = deploying + lead_s
                config = emulated_config(scenario_id, nodes, time_scale, policy, max_ongoing, port, seed + r, start_at)
                url = deploy(config)
                with httpx.Client(timeout=120) as client:  # warm every replica's model before the clock starts
                    files = {"image": ("warm_test.jpg", image), "template": ("warm_temp.jpg", template)}
                    for _ in range(2 * nodes):
                        client.post(f"{url}/v1/inspect", files=files)
                    before = client.get(f"{url}/v1/router").json()
                ready_s = time.time() - deploying
                lead_s = LEAD_MARGIN * ready_s
                time.sleep(max(0.0, start_at - time.time()))
                late_s = time.time() - start_at  # > 0: the deployment was ready after its links' start
                result = asyncio.run(drive(url, sends[r], image, template, timeout_s=600))
                result["late_start_s"] = round(late_s, 3)
                with httpx.Client(timeout=30) as client:
                    router = client.get(f"{url}/v1/router").json()
                router["decisions_before_run"] = before.get("decisions", 0)
                routers[label] = router
                runs[label].append({"repeat": r, "seed": seed + r, **result, "router_p99_ms": router.get("p99_ms")})
    finally:
        shutdown()
    for label in labels:
        report["policies"][label] = {**summarise(runs[label]), "router": routers[label], "runs": runs[label]}
        if REFERENCE in runs and label != REFERENCE:
            report["policies"][label][f"ratio_to_{REFERENCE}"] = ratios(runs[label], runs[REFERENCE])
    if NOISE_FLOOR in runs:
        report["noise_floor"] = report["policies"].pop(NOISE_FLOOR)[f"ratio_to_{REFERENCE}"]
    report["simulator"] = predict(scenario, nodes, policies, requests, seed, repeat, max_ongoing, sends)
    return report


def bench_scenario(scenario_id: int, time_scale: float, load: float | None) -> Scenario:
    """The scenario as the emulated cluster runs it: its node classes (service times x `time_scale`), links and
    arrivals, but none of its crashes or slow-downs, which the emulated nodes do not have. The simulator's prediction
    runs this too (until 2026-12-05 it kept the events and drew arrivals of its own, not the bench's)."""
    scenario = SCENARIOS[scenario_id].model_copy(update={"service_scale": time_scale, "events": []})
    return scenario if load is None else with_load(scenario, load)


def bench_plan(nodes: int, scenario_id: int, requests: int, seed: int, load: float | None, time_scale: float,
               repeat: int) -> tuple[Scenario, list[np.ndarray], dict]:
    """What the runs of `bench_cluster` (and the simulator's prediction of them) are: the scenario as emulated, each
    repeat's send times (repeat r: seed + r), and the report's keys that describe them."""
    scenario = bench_scenario(scenario_id, time_scale, load)
    capacity = capacity_per_s(scenario, nodes)
    sends = [bench_arrivals(scenario, capacity, requests, seed + r) for r in range(repeat)]
    return scenario, sends, {"scenario": scenario_id, "nodes": nodes, "requests": requests, "repeat": repeat,
                             "time_scale": time_scale, "load": scenario.arrivals.load, "capacity_per_s": round(capacity, 3)}


def bench_arrivals(scenario: Scenario, capacity: float, requests: int, seed: int) -> np.ndarray:
    """The send times of one run (seconds from its start): the scenario's arrival process at its load."""
    return arrival_times(scenario.arrivals, scenario.arrivals.load * capacity, requests, np.random.default_rng(seed))


def predict(scenario: Scenario, nodes: int, policies: list[str], requests: int, seed: int, repeat: int,
            max_ongoing: int, sends: list[np.ndarray]) -> dict:
    """What the simulator predicts for the runs, each repeat with the send times the bench used (`sends[r]`) and its
    seed, at max_ongoing_requests as the cap: per policy the means over the repeats, the ratio to p2c as the bench
    pairs it, and every repeat's figures."""
    runs = {policy: [{k: round(float(getattr(result, k)), 3) for k in SUMMARISED}
                     for result in (simulate(scenario, nodes, SIMULATOR_NAME.get(policy, policy), requests, seed + r,
                                             max_in_flight=max_ongoing, arrivals=sends[r]) for r in range(repeat))]
            for policy in policies}
    out: dict = {}
    for policy, mine in runs.items():
        out[policy] = {k: round(float(np.mean([run[k] for run in mine])), 3) for k in SUMMARISED}
        if REFERENCE in runs and policy != REFERENCE:
            out[policy][f"ratio_to_{REFERENCE}"] = ratios(mine, runs[REFERENCE])
        out[policy]["runs"] = mine
    return out


def simulate_bench(nodes: int, scenario_id: int, policies: list[str], requests: int, seed: int, load: float | None,
                   time_scale: float, max_ongoing: int, repeat: int) -> dict:
    """The simulator's prediction for `bench_cluster` with the same arguments, without Ray: seconds, not hours, so
    that a policy can be judged over many seeds before the cluster runs it."""
    scenario, sends, report = bench_plan(nodes, scenario_id, requests, seed, load, time_scale, repeat)
    return {**report, "simulator": predict(scenario, nodes, policies, requests, seed, repeat, max_ongoing, sends)}


def bench_router(replica_counts: list[int], decisions: int, policy: str, seed: int) -> dict:
    """The routing decision's time at each replica count, as the router's metrics give it: `PolicyDecider` (the
    code `choose_replicas` runs, timed by the same DecisionTimes histogram `/v1/router` reads) on routing stats
    drawn as scenario 3's replicas report them (classes and links cycled, each link's bandwidth and latency from
    its trace) with new queue lengths at every decision. Ray's own part of a request (probing, sending) is not in it."""
    from aivd.runtime.router import PolicyDecider
    from aivd.runtime.telemetry import DecisionTimes

    rng = np.random.default_rng(seed)
    scenario = SCENARIOS[3]
    report: dict = {"policy": policy, "decisions": decisions, "seed": seed, "replicas": {}}
    for count in replica_counts:
        now = time.time()
        ids = [f"edge-{i:04d}" for i in range(count)]
        stats = {}
        for i, replica in enumerate(ids):
            link = scenario.links[i % len(scenario.links)]
            factor = float(np.exp(link.sigma * rng.standard_normal()))
            stats[replica] = {"time": now, "node_class": scenario.node_mix[i % len(scenario.node_mix)],
                              "cpu_idle": float(rng.random()), "queue_len": 0,
                              "service_s": node_class(scenario, i).service_mean_s * float(rng.lognormal(0, 0.2)),
                              "bandwidth_bps": link.bandwidth_bps * factor, "latency_s": link.latency_s / factor, "errors": 0}
        queues = rng.integers(0, scenario.queue_bound + 1, size=(decisions, count))
        times = DecisionTimes()
        decider = PolicyDecider(policy, None, scenario.queue_bound, scenario.telemetry_period_s, seed, times=times)
        for row in queues:
            decider.decide(stats, dict(zip(ids, row.tolist())), scenario.payload_bytes, now)
        summary = times.summary(policy)
        report["replicas"][str(count)] = {"median_ms": summary["median_ms"], "p99_ms": summary["p99_ms"]}
    return report
