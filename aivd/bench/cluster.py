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
import statistics
import time
from pathlib import Path

import httpx
import numpy as np

from aivd.config import ImagingConfig, PipelineConfig
from aivd.runtime.config import RAY_DEFAULT_ROUTER, ClusterConfig, EdgeNodeClass
from aivd.sim import SCENARIOS, capacity_per_s, simulate, with_load
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
                    max_ongoing: int, port: int, seed: int) -> ClusterConfig:
    scenario = SCENARIOS[scenario_id].model_copy(update={"service_scale": time_scale})
    edge = []
    for i in range(nodes):
        device = node_class(scenario, i)
        edge.append(EdgeNodeClass(name=f"n{i}-{scenario.node_mix[i % len(scenario.node_mix)]}", replicas=1,
                                  service_s=device.service_mean_s, service_cv=device.service_cv,
                                  link=scenario.links[i % len(scenario.links)]))
    return ClusterConfig(edge=edge, policy=policy, max_ongoing_requests=max_ongoing, port=port, seed=seed,
                         pipeline=BENCH_PIPELINE, routing_stats_period_s=scenario.telemetry_period_s)


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


def bench_cluster(nodes: int, scenario_id: int, policies: list[str], requests: int, seed: int, load: float | None,
                  time_scale: float, max_ongoing: int, port: int, sample: Path) -> dict:
    from aivd.runtime.cluster import deploy, shutdown

    image = sample.with_name(sample.name.replace("_temp", "_test")).read_bytes()
    template = sample.with_name(sample.name.replace("_test", "_temp")).read_bytes()
    base = measure_service_s(image, template)
    scenario = SCENARIOS[scenario_id].model_copy(update={"service_scale": time_scale})
    if load is not None:
        scenario = with_load(scenario, load)
    capacity = capacity_per_s(scenario, nodes)
    sends = arrival_times(scenario.arrivals, scenario.arrivals.load * capacity, requests, np.random.default_rng(seed))
    report: dict = {"scenario": scenario_id, "nodes": nodes, "requests": requests, "time_scale": time_scale,
                    "load": scenario.arrivals.load, "capacity_per_s": round(capacity, 3),
                    "measured_edge_service_ms": round(base * 1000, 2), "policies": {}, "simulator": {}}
    try:
        for policy in policies:
            config = emulated_config(scenario_id, nodes, time_scale, policy, max_ongoing, port, seed)
            url = deploy(config)
            with httpx.Client(timeout=120) as client:  # warm every replica's model before the clock starts
                files = {"image": ("warm_test.jpg", image), "template": ("warm_temp.jpg", template)}
                for _ in range(2 * nodes):
                    client.post(f"{url}/v1/inspect", files=files)
                before = client.get(f"{url}/v1/router").json()
            result = asyncio.run(drive(url, sends, image, template, timeout_s=600))
            with httpx.Client(timeout=30) as client:
                result["router"] = client.get(f"{url}/v1/router").json()
            result["router"]["decisions_before_run"] = before.get("decisions", 0)
            report["policies"][policy] = result
            predicted = simulate(scenario, nodes, SIMULATOR_NAME.get(policy, policy), requests, seed,
                                 max_in_flight=max_ongoing)
            report["simulator"][policy] = {k: round(getattr(predicted, k), 3) for k in
                                           ("throughput_per_s", "latency_mean_ms", "latency_p99_ms")}
    finally:
        shutdown()
    return report
