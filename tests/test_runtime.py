"""The Ray Serve runtime: its config, the replica telemetry and emulation, and, on a real multi-node local Ray
cluster, inspections over HTTP that survive a node being killed mid-run."""

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, stop

from aivd.runtime.config import ClusterConfig, ConfigError, load_cluster_config
from aivd.runtime.emulation import EmulatedNode
from aivd.runtime.telemetry import NodeTable, node_state
from aivd.sim.links import LinkTrace
from aivd.sim.scenarios import SCENARIOS, LinkProfile

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "aivd" / "data" / "samples" / "deeppcb"


def test_example_config_is_valid_and_replicas_fill_classes_in_order():
    config = load_cluster_config(REPO / "docs" / "runtime" / "cluster.yaml")
    assert config.edge_replicas == 4
    assert [config.class_for_rank(r).name for r in range(5)] == [
        "gpu-module", "industrial-pc", "industrial-pc", "arm-board", "gpu-module"]


@pytest.mark.parametrize("text, reason", [
    ("edge: []", "edge: List should have at least 1 item"),
    ("edge: [{name: a, slowdown: 0.5}]", "edge.0.slowdown"),
    ("edge: [{name: a}]\npolicy: fastest", "unknown policy 'fastest'"),
    ("edge: [{name: a}, {name: a}]", "must be unique"),
    ("edge: [{name: a}]\nreplicas: 3", "replicas: Extra inputs are not permitted"),
    ("edge: [{name: a}]\nreviews_db: sqlite:///reviews.sqlite", "reviews_db: the updater learns from reviews only with pipeline.update.enabled"),
    ("- just a list", "expected a mapping"),
    ("edge: [", "not valid YAML"),
])
def test_bad_cluster_config_is_one_clear_error_naming_the_file(tmp_path, text, reason):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason) as raised:
        load_cluster_config(path)
    assert str(raised.value).startswith(str(path))


def test_app_builder_binds_the_three_deployments_from_a_config_file():
    pytest.importorskip("ray.serve")
    from aivd.runtime.app import app_builder

    app = app_builder({"config": str(REPO / "docs" / "runtime" / "cluster.yaml")})
    assert type(app).__name__ == "Application"
    with pytest.raises(ValueError, match="config=PATH"):
        app_builder({})
    with pytest.raises(ConfigError, match="cannot read"):
        app_builder({"config": "/nonexistent/cluster.yaml"})


def test_node_state_from_routing_stats():
    now = 1000.0
    stats = {"time": now - 0.2, "cpu_idle": 0.25, "queue_len": 9, "service_s": 0.5, "bandwidth_bps": 2e6,
             "latency_s": 0.03, "errors": 1}
    state = node_state("r1", stats, queue_len=3, queue_bound=4, period_s=0.5, now=now)
    # The router's own in-flight count wins over the replica's older report.
    assert (state.queue_len, state.service_rate, state.cpu_idle, state.errors) == (3, 2.0, 0.25, 1)
    assert state.healthy and state.missed_heartbeats == 0
    stale = node_state("r1", stats, None, 4, 0.5, now=now + 2.0)
    assert stale.queue_len == 9 and stale.missed_heartbeats == 3 and not stale.healthy
    fresh = node_state("r2", {}, None, 4, 0.5, now)  # a replica that has not reported yet looks ready for work
    assert fresh.healthy and fresh.queue_len == 0 and fresh.cpu_idle == 1.0
    # At its max_ongoing_requests a replica has no room; without a cap, always.
    assert state.room and not node_state("r1", stats, 3, 4, 0.5, now, cap=3).room and node_state("r1", stats, 2, 4, 0.5, now, cap=3).room


def test_node_table_keeps_each_replicas_last_state_and_forgets_the_long_unseen():
    table = NodeTable(forget_s=10.0)
    first = [node_state("r1", {"cpu_idle": 0.5}, 2, 4, 0.5, 0.0), node_state("r2", {}, 0, 4, 0.5, 0.0)]
    table.record(first, {"r1": "fast", "r2": "slow"}, {"r1": 0.7}, now=100.0)
    table.record([node_state("r1", {"cpu_idle": 0.25}, 3, 4, 0.5, 0.0)], {"r1": "fast"}, {"r1": 0.6}, now=105.0)
    assert table.rows(now=106.0) == [
        {"replica": "r1", "node_class": "fast", "cpu_idle": 0.25, "queue_len": 3, "bandwidth_bps": 1e12, "latency_s": 0.0,
         "score": 0.6, "age_s": 1.0},
        {"replica": "r2", "node_class": "slow", "cpu_idle": 1.0, "queue_len": 0, "bandwidth_bps": 1e12, "latency_s": 0.0,
         "score": None, "age_s": 6.0},  # a policy without scores, or a replica it did not score
    ]
    assert [row["replica"] for row in table.rows(now=112.0)] == ["r1"]  # r2 unseen for 12 s > 10 s: gone
    assert table.rows(now=116.0) == []


def test_emulated_link_charges_the_real_payload_at_the_trace_bandwidth():
    profile = LinkProfile(kind="stable", bandwidth_bps=1_000_000, latency_s=0.02)
    node = EmulatedNode(link=profile, seed=0)

    async def two_transfers():
        return await asyncio.gather(node.receive(50_000), node.receive(50_000))

    started = time.monotonic()
    first, second = asyncio.run(two_transfers())
    # 50 kB at 1 MB/s = 50 ms each, one at a time on the wire, then 20 ms latency each.
    assert 0.065 <= min(first, second) < 0.11
    assert 0.115 <= max(first, second) < 0.2
    assert time.monotonic() - started < 0.25


def test_slowdown_stretches_the_measured_service_time():
    node = EmulatedNode(slowdown=3.0)
    result, service = asyncio.run(node.serve(time.sleep, 0.05))
    assert result is None and 0.14 <= service < 0.25 and node.busy_s == service


def test_device_service_time_pads_a_faster_machine_but_never_shortens_a_slower_one():
    device = EmulatedNode(service_s=0.1, service_cv=0.2, seed=3)
    services = [asyncio.run(device.serve(time.sleep, 0.0))[1] for _ in range(12)]
    assert 0.07 < float(np.mean(services)) < 0.14 and np.std(services) > 0.005  # lognormal draws around 0.1 s
    _, slow = asyncio.run(EmulatedNode(service_s=0.01, seed=3).serve(time.sleep, 0.08))
    assert slow >= 0.08  # the machine was slower than the device: its own time stands


def test_emulated_link_follows_the_simulators_trace():
    profile = SCENARIOS[3].links[1]
    emulated = EmulatedNode(link=profile, seed=7).trace
    simulated = LinkTrace(profile, np.random.default_rng(7))
    assert [emulated.at(t) for t in (0.0, 3.5, 40.0)] == [simulated.at(t) for t in (0.0, 3.5, 40.0)]


def test_replicas_given_one_clock_start_meet_the_same_link_epoch():
    profile = SCENARIOS[3].links[1]
    started = time.time() - 3.5  # as if the load had started 3.5 s ago
    early, late = EmulatedNode(link=profile, seed=7, clock_start_unix=started), EmulatedNode(link=profile, seed=7)
    time.sleep(0.05)
    late_too = EmulatedNode(link=profile, seed=7, clock_start_unix=started)
    reference = LinkTrace(profile, np.random.default_rng(7))
    assert early.link_now() == late_too.link_now() == reference.at(3.5)
    assert late.link_now() == reference.at(0.0)  # without one, each replica's trace starts with the replica


def test_router_penalises_a_replica_reporting_errors_and_its_floor_still_feeds_it():
    pytest.importorskip("ray.serve")
    from types import SimpleNamespace

    from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID

    from aivd.runtime import telemetry
    from aivd.runtime.router import PolicyRequestRouter

    deployment = DeploymentID(name="edge", app_name="aivd")
    router = PolicyRequestRouter(deployment_id=deployment, handle_source=DeploymentHandleSource.UNKNOWN,
                                 use_replica_queue_len_cache=True)
    router.initialize_state(policy="aivd", weights={"max_skips": 3, "eta": 0.0}, queue_bound=4, stats_period_s=0.5)
    now = time.time()

    # Ray's RunningReplica needs a live actor behind it; the router reads only these three attributes.
    def replica(name: str, **stats):
        return SimpleNamespace(replica_id=ReplicaID(unique_id=name, deployment_id=deployment), max_ongoing_requests=4,
                               routing_stats={"time": now, "node_class": "fast", "cpu_idle": 1.0, "service_s": 0.1, **stats})

    healthy, erroring = replica("healthy"), replica("erroring", errors=2)

    def choose():
        ranks = asyncio.run(router.choose_replicas([healthy, erroring]))
        return [[r.replica_id.unique_id for r in rank] for rank in ranks]

    # Equal in every metric but the errors: the penalty sends work to the healthy one. aivd holds a request for the
    # replica it chose (no second rank: Ray waits for that one to have room rather than fall back to another).
    assert [choose() for _ in range(3)] == [[["healthy"]]] * 3
    # Passed over max_skips = 3 times in a row: the floor gives the erroring replica the next request.
    assert choose() == [["erroring"]]
    assert choose() == [["healthy"]]
    # What it routed on is the ingress's node table, the penalty in the scores.
    seen = {row["replica"]: row for row in telemetry.NODES.rows() if row["replica"] in ("healthy", "erroring")}
    assert {name: row["node_class"] for name, row in seen.items()} == {"healthy": "fast", "erroring": "fast"}
    assert seen["healthy"]["score"] == pytest.approx(2 * seen["erroring"]["score"])  # gamma = 0.5
    # At its max_ongoing_requests (4, in the router's queue-length cache) the healthy replica still finishes a request
    # before an idle one 20 times slower: aivd holds the request, no rank at all, and tells Ray to back off before
    # asking again (without that, Ray would ask again at once, in a loop that never yields to its event loop).
    router.initialize_state(policy="aivd", weights={"eta": 0.0}, queue_bound=4, stats_period_s=0.5)
    router.replica_queue_len_cache.update(healthy.replica_id, 4)
    request = SimpleNamespace(args=[b"x" * 1000], kwargs={}, routing_context=SimpleNamespace(should_backoff=False))
    assert asyncio.run(router.choose_replicas([healthy, replica("slow", service_s=2.0)], request)) == []
    assert request.routing_context.should_backoff
    # A policy that does not wait for room gets the others as Ray's fallback, for when its choice is full.
    router.initialize_state(policy="jsq", queue_bound=4, stats_period_s=0.5)
    router.replica_queue_len_cache.update(healthy.replica_id, 0)
    assert sorted(choose()) == [["erroring"], ["healthy"]]


def bound_deployments(app) -> dict:
    """name -> Deployment of a bound application, following the handles each deployment is bound with."""
    found, todo = {}, [app]
    while todo:
        deployment = todo.pop()._bound_deployment
        found[deployment.name] = deployment
        todo += [arg for arg in deployment.init_args if type(arg).__name__ == "Application"]
    return found


def test_a_transformers_cloud_tier_gets_the_gpu_it_asks_for_and_every_deployment_its_health_checks():
    pytest.importorskip("ray.serve")
    from aivd.runtime.app import build_app

    config = ClusterConfig.model_validate({
        "edge": [{"name": "a"}], "health_check_period_s": 2, "health_check_timeout_s": 5,
        "cloud_resources": {"GPU": 1, "CPU": 2, "aivd_cloud": 1}, "edge_resources": {"aivd_edge": 0.5},
        "pipeline": {"cloud": {"backend": "transformers", "llm": {"model": "Qwen/Qwen2-VL-2B-Instruct"}}},
    })
    deployments = bound_deployments(build_app(config))
    assert set(deployments) == {"ingress", "edge", "cloud"}
    # Ray refuses CPU and GPU among custom resources: they become the replica's counts.
    assert deployments["cloud"].ray_actor_options == {"num_cpus": 2, "num_gpus": 1, "resources": {"aivd_cloud": 1}}
    assert deployments["edge"].ray_actor_options == {"num_cpus": 0, "num_gpus": 0, "resources": {"aivd_edge": 0.5}}
    for deployment in deployments.values():
        options = deployment._deployment_config
        assert (options.health_check_period_s, options.health_check_timeout_s) == (2, 5)
    edge_only = ClusterConfig.model_validate({"edge": [{"name": "a"}], "pipeline": {"cloud": {"backend": "none"}}})
    assert set(bound_deployments(build_app(edge_only))) == {"ingress", "edge"}


def test_router_decision_quantiles_come_from_the_histograms_buckets():
    from aivd.runtime.telemetry import DecisionTimes

    times = DecisionTimes()
    assert times.summary("ect") == {"policy": "ect", "decisions": 0}
    seconds = np.random.default_rng(0).lognormal(np.log(50e-6), 0.6, 5000)
    for value in seconds:
        times.observe(float(value), "ect")
    summary = times.summary("ect")
    assert summary["decisions"] == 5000
    for key, percent in (("median_ms", 50), ("p99_ms", 99)):
        exact = np.percentile(seconds, percent) * 1000
        assert abs(summary[key] - exact) / exact < 0.19, (key, summary[key], exact)  # within one bucket's width


def test_edge_metrics_count_what_the_records_say_as_the_run_summary_does():
    from aivd.runtime.telemetry import EdgeMetrics
    from aivd.schema.records import DefectRecord, InspectionRecord, OffloadNote

    def region(sent: bool) -> DefectRecord:
        return DefectRecord(bbox=(0, 0, 4, 4), defect_type="short", confidence=0.9, source="edge",
                            offload=OffloadNote(sent=sent, reason="hard" if sent else "easy"))

    metrics = EdgeMetrics("fast")
    metrics.inspected(InspectionRecord(image="a.jpg", image_id="a", template=None, status="ok", error=None,
                                       defects=[region(True), region(False)], rejected=[region(False)],
                                       cloud_error="cloud deployment failed"))
    metrics.inspected(InspectionRecord(image="b.jpg", image_id="b", template=None, status="ok", error=None, defects=[region(True)]))
    metrics.inspected(InspectionRecord(image="c.jpg", image_id="c", template=None, status="error", error="truncated"))
    totals = metrics.totals
    assert (totals.images, totals.failed, totals.candidates, totals.sent, totals.cloud_failed) == (3, 1, 4, 2, 1)
    assert totals.offload_ratio == 0.5


class Probed:
    """What `HandleHealth` uses of a DeploymentHandle: `describe.remote()`, awaited; answers while `up`."""

    def __init__(self, up: bool) -> None:
        self.up, self.describe, self.probes = up, self, 0

    def remote(self):
        self.probes += 1

        async def answer():
            if not self.up:
                raise RuntimeError("no replica answers")
            return {}
        return answer()


def test_a_handle_is_dead_only_when_its_calls_fail_and_a_fresh_one_gets_through():
    pytest.importorskip("ray.serve")
    from ray.exceptions import RayActorError, RayTaskError

    from aivd.runtime.health import HandleHealth

    own, fresh = Probed(up=True), Probed(up=True)
    health = HandleHealth(own, lambda: fresh, "cloud", timeout_s=1)
    asyncio.run(health.check())
    assert own.probes == 0  # nothing failed: nothing is probed
    health.called(RayTaskError("analyze", "traceback", ValueError("bad region")))
    asyncio.run(health.check())
    assert own.probes == 0  # the deployment's own code failed, through a working handle
    health.called(RayActorError())
    asyncio.run(health.check())
    assert own.probes == 1 and not health.suspect  # the handle answers again: healthy
    health.called(RayActorError())
    own.up = False
    with pytest.raises(RuntimeError, match="the handle on the cloud deployment fails while a fresh handle reaches it"):
        asyncio.run(health.check())
    fresh.up = False
    asyncio.run(health.check())  # the deployment itself is down: a new replica would not help, so this one is healthy


def test_a_hot_swapping_edge_is_unhealthy_once_the_version_it_serves_is_gone_unless_it_can_follow_a_new_one(tmp_path):
    import shutil

    from aivd.edge.detector import BUILTIN_MODEL
    from aivd.edge.hot_swap import HotSwapDetector, hot_swapping
    from aivd.edge.tiling import TiledDetector
    from aivd.model_store import ModelStore, ModelStoreError

    store = ModelStore(tmp_path / "models")
    refiner = BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"
    first = store.publish(BUILTIN_MODEL, [refiner])
    store.promote(first)
    detector = HotSwapDetector(store, poll_s=3600, threads=1)
    assert hot_swapping(TiledDetector(detector, 640)) is detector and hot_swapping(detector.detector) is None
    detector.check()
    second = store.publish(BUILTIN_MODEL, [refiner], parent=first)
    store.promote(second)
    shutil.rmtree(store.versions_dir / first)
    detector.check()  # idle, it follows the store's new version at the check
    assert detector.version == second
    shutil.rmtree(store.versions_dir / second)
    with pytest.raises(ModelStoreError, match=f"no version '{second}'"):
        detector.check()


def test_analyzer_errors_cross_processes_with_their_costs():
    import pickle

    from aivd.cloud.analyzer import AnalyzerError

    again = pickle.loads(pickle.dumps(AnalyzerError("openai:m: 1 of 2 regions failed", 1200, 340)))
    assert (str(again), again.bytes_sent, again.bytes_received) == ("openai:m: 1 of 2 regions failed", 1200, 340)


# --- a real local Ray cluster ---------------------------------------------------------------------------------------

def inspect(url: str, stem: str):
    import httpx

    files = {"image": (f"{stem}_test.jpg", (SAMPLES / f"{stem}_test.jpg").read_bytes()),
             "template": (f"{stem}_temp.jpg", (SAMPLES / f"{stem}_temp.jpg").read_bytes())}
    return httpx.post(f"{url}/v1/inspect", files=files, timeout=120)


@pytest.fixture(scope="module")
def serve_port() -> int:
    """One port for the module: Ray Serve's HTTP proxy keeps the port it started on for the Ray instance's life."""
    return free_port()


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray.serve")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"aivd_head": 1}, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, resources={"aivd_edge": 1}) for _ in range(3)]
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, workers
    from aivd.runtime.cluster import shutdown

    shutdown()
    cluster.shutdown()


@pytest.mark.integration
def test_cluster_inspects_over_http_survives_a_killed_node_and_swaps_models(ray_cluster, serve_port, tmp_path):
    import httpx

    from aivd.edge.detector import BUILTIN_MODEL
    from aivd.model_store import ModelStore
    from aivd.runtime.app import MAX_BATCH_IMAGES, MAX_REQUEST_BYTES
    from aivd.runtime.cluster import deploy

    cluster, workers = ray_cluster
    store = ModelStore(tmp_path / "models")
    refiner = BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"
    store.promote(store.publish(BUILTIN_MODEL, [refiner]))
    config = ClusterConfig.model_validate({
        "pipeline": {"edge": {"model": str(store.root), "model_poll_s": 0.2}, "imaging": {"pixels_per_mm": 48}},
        "edge": [{"name": "fast", "replicas": 1}, {"name": "slow", "replicas": 2, "slowdown": 2}],
        "policy": "ect", "port": serve_port, "max_ongoing_requests": 2,
        "edge_resources": {"aivd_edge": 1}, "cloud_resources": {"aivd_head": 0.01},
        "ingress_resources": {"aivd_head": 0.01}, "routing_stats_period_s": 0.5,
    })
    url = deploy(config)
    assert httpx.get(f"{url}/healthz").json()["edge_replicas"] == 3

    # One image end to end: edge boxes, cloud records, the serving node named.
    first = inspect(url, "00041200")
    assert first.status_code == 200, first.text
    record = first.json()
    assert record["status"] == "ok" and record["defects"]
    assert all(d["source"] == "cloud:builtin" and d["description"] for d in record["defects"])
    assert record["edge_node"].split("/")[0] in {"fast", "slow"} and record["template"] == "00041200_temp.jpg"

    # A bad upload is an error record with the reason, as in results.jsonl, not a crash.
    broken = httpx.post(f"{url}/v1/inspect", files={"image": ("broken.jpg", b"\xff\xd8 not really")}, timeout=60)
    assert broken.status_code == 200
    assert broken.json()["image"] == "broken.jpg" and broken.json()["status"] == "error" and "truncated" in broken.json()["error"]

    # The batch form: one record per image, in order; mismatched template counts are refused.
    pair = [(SAMPLES / f"20085291_{kind}.jpg").read_bytes() for kind in ("test", "temp")]
    files = [("images", ("a_test.jpg", pair[0])), ("images", ("b_test.jpg", pair[0])),
             ("templates", ("a_temp.jpg", pair[1])), ("templates", ("b_temp.jpg", pair[1]))]
    batch = httpx.post(f"{url}/v1/inspect/batch", files=files, timeout=120)
    assert batch.status_code == 200 and [r["image"] for r in batch.json()] == ["a_test.jpg", "b_test.jpg"]
    assert all(r["status"] == "ok" for r in batch.json())
    refused = httpx.post(f"{url}/v1/inspect/batch", files=files[:3], timeout=60)
    assert refused.status_code == 422 and "2 images but 1 templates" in refused.json()["detail"]

    # Limits hold before the uploads are read: the count of images, and the bytes while they stream in.
    many = [("images", (f"{i}.jpg", b"x")) for i in range(MAX_BATCH_IMAGES + 1)]
    too_many = httpx.post(f"{url}/v1/inspect/batch", files=many, timeout=60)
    assert too_many.status_code == 422 and too_many.json()["detail"] == f"{MAX_BATCH_IMAGES + 1} images in one request; the limit is {MAX_BATCH_IMAGES}"

    def endless():  # no Content-Length: only counting the streamed bytes can stop it
        yield b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.jpg\"\r\n\r\n"
        while True:
            yield b"\0" * (1 << 20)

    huge = httpx.post(f"{url}/v1/inspect/batch", content=endless(), timeout=60,
                      headers={"content-type": "multipart/form-data; boundary=b"})
    assert huge.status_code == 413 and f"over the limit of {MAX_REQUEST_BYTES} bytes" in huge.json()["detail"]

    # Kill one edge node while 48 requests are in flight or queued; every one must still complete.
    stems = ["00041200", "13000198", "20085291"] * 16
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(inspect, url, stem) for stem in stems]
        while sum(f.done() for f in futures) < 8:
            time.sleep(0.05)
        cluster.remove_node(workers[0], allow_graceful=False)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * len(stems)
    assert all(r.json()["status"] == "ok" for r in responses), [r.json()["error"] for r in responses]
    served_before = {r.json()["edge_node"] for r in responses}

    # A node joins again: the controller starts the missing replica there and the router gives it work.
    cluster.add_node(num_cpus=1, resources={"aivd_edge": 1})
    deadline = time.monotonic() + 120
    new_nodes: set[str] = set()
    while not new_nodes and time.monotonic() < deadline:
        with ThreadPoolExecutor(4) as pool:
            batch = list(pool.map(lambda stem: inspect(url, stem), stems[:8]))
        assert all(r.status_code == 200 and r.json()["status"] == "ok" for r in batch)
        new_nodes = {r.json()["edge_node"] for r in batch} - served_before
    assert new_nodes, "the replica on the recovered node never received a request"

    router = httpx.get(f"{url}/v1/router").json()
    assert router["policy"] == "ect" and router["decisions"] >= len(stems) and router["median_ms"] < 5
    # Its edge nodes, the killed one until forgotten (the new one's class unknown until its first report): ect gives no score.
    assert len(router["nodes"]) >= 3 and {n["node_class"] for n in router["nodes"]} <= {"fast", "slow", None}
    assert {n["score"] for n in router["nodes"]} == {None}

    # The same figures reach Prometheus through Ray Serve's metrics: every live node exports its replicas' metrics.
    # The killed node's replica took its counts with it, so only the ingress's router decisions must reach them all.
    exported = exported_metrics({"ray_aivd_edge_images_total": 1, "ray_aivd_router_decision_seconds_count": len(stems)})
    assert exported["ray_aivd_edge_images_total"] >= 1 and exported["ray_aivd_router_decision_seconds_count"] >= len(stems)

    # A new model version is promoted in the store: every replica serves it from its next image on.
    assert {r.json()["detector"] for r in responses} == {"builtin:deeppcb_centernet@v0001"}
    second = store.publish(BUILTIN_MODEL, [refiner], parent="v0001")
    store.promote(second)
    time.sleep(0.5)
    with ThreadPoolExecutor(4) as pool:
        after = list(pool.map(lambda stem: inspect(url, stem), stems[:12]))
    assert {r.json()["detector"] for r in after} == {f"builtin:deeppcb_centernet@{second}"}


def exported_metrics(minimums: dict[str, float], timeout_s: float = 60) -> dict[str, float]:
    """Each metric's sum over the series every live Ray node exports (Prometheus text), once each has reached its
    minimum: Ray's agents export what the workers reported at their last interval, so counts arrive late."""
    import httpx
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    deadline, totals = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        totals = dict.fromkeys(minimums, 0.0)
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            try:
                text = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in totals:
                        totals[sample.name] += sample.value
        if all(totals[name] >= minimum for name, minimum in minimums.items()):
            return totals
        time.sleep(1)
    pytest.fail(f"not all of {minimums} exported within {timeout_s} s: {totals}")


def wait_for_status(deployment: str, wanted: str, timeout_s: float = 120) -> None:
    from ray import serve

    from aivd.runtime.cluster import APP_NAME

    deadline, status = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        status = serve.status().applications[APP_NAME].deployments[deployment]
        if status.status == wanted:
            return
        time.sleep(0.5)
    pytest.fail(f"the {deployment} deployment stayed {status.status}, not {wanted}: {status.message}")


@pytest.mark.integration
def test_cluster_runs_the_openai_backend_on_a_llama_cpp_server_and_reports_a_lost_server_and_a_lost_model(
        ray_cluster, serve_port, llama_server, tmp_path):
    import shutil

    import httpx
    import yaml

    from aivd.edge.detector import BUILTIN_MODEL
    from aivd.model_store import ModelStore
    from aivd.runtime.cluster import deploy

    store = ModelStore(tmp_path / "models")
    version = store.publish(BUILTIN_MODEL, [BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"])
    store.promote(version)
    llm = tmp_path / "llm.yaml"  # the random model needs room to finish the JSON its grammar holds it to
    llm.write_text(yaml.safe_dump(llama_server.config(structured_output="json_object", max_tokens=1024, max_retries=0,
                                                      concurrency=2, timeout_s=60).model_dump()))
    config = ClusterConfig.model_validate({
        "pipeline": {"edge": {"model": str(store.root)}, "cloud": {"backend": "openai", "llm": {"config": str(llm)}},
                     "imaging": {"pixels_per_mm": 48}},
        "edge": [{"name": "fast", "replicas": 1}], "port": serve_port, "health_check_period_s": 1, "health_check_timeout_s": 10,
        "cloud": {"timeout_s": 10}, "edge_resources": {"aivd_edge": 1}, "cloud_resources": {"aivd_head": 0.01},
        "ingress_resources": {"aivd_head": 0.01},
    })
    url = deploy(config)

    # The regions go to the llama.cpp server over HTTP, from the cloud deployment, and its answers come back. The
    # random model's answers break the schema's bounds, so the image may keep the edge's results: either way, it
    # says so, and its bytes to the cloud are the LLM requests' bodies.
    record = inspect(url, "00041200").json()
    assert record["status"] == "ok" and record["analyzer"] == "openai:tiny" and record["bytes_to_cloud"] > 0
    assert record["cloud_error"] is None or record["cloud_error"].startswith("openai:tiny")
    assert all(d["source"] in ("edge", "cloud:openai:tiny") for d in record["defects"])
    assert {"cloud", "edge", "ingress"} <= set(status_of_all())

    # The server goes away: the cloud deployment reports it; the edge is not to blame and keeps answering alone.
    stop(llama_server.process)
    wait_for_status("cloud", "UNHEALTHY")  # Serve's message is its own; the replica's log has ours ("not answering")
    alone = inspect(url, "20085291").json()
    assert alone["status"] == "ok" and alone["cloud_error"] and {d["source"] for d in alone["defects"]} <= {"edge"}
    assert status_of_all()["edge"] == "HEALTHY"

    # The version the edge serves is deleted from its store: the edge replica reports it.
    shutil.rmtree(store.versions_dir / version)
    wait_for_status("edge", "UNHEALTHY")
    assert httpx.get(f"{url}/healthz").status_code == 200  # the ingress itself is fine


def status_of_all() -> dict[str, str]:
    from ray import serve

    from aivd.runtime.cluster import APP_NAME

    return {name: status.status for name, status in serve.status().applications[APP_NAME].deployments.items()}


@pytest.mark.integration
def test_cluster_api_answers_as_its_openapi_document_says(ray_cluster, serve_port):
    import schemathesis
    from conftest import fuzz

    from aivd.runtime.cluster import deploy

    config = ClusterConfig.model_validate({
        "edge": [{"name": "fast", "replicas": 1}], "port": serve_port, "edge_resources": {"aivd_edge": 1},
        "cloud_resources": {"aivd_head": 0.01}, "ingress_resources": {"aivd_head": 0.01},
    })
    url = deploy(config)
    operations = fuzz(schemathesis.openapi.from_url(f"{url}/openapi.json"))
    assert operations == ["POST /v1/inspect", "POST /v1/inspect/batch", "GET /healthz", "GET /v1/router"]


@pytest.mark.integration
def test_cluster_ingress_needs_a_key_from_its_database_except_for_healthz(ray_cluster, serve_port, tmp_path):
    import httpx

    from aivd.auth.keys import ApiKeys
    from aivd.runtime.cluster import deploy

    url = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    with ApiKeys(url) as keys:
        viewer, operator = keys.create("viewer"), keys.create("operator")
    config = ClusterConfig.model_validate({  # the default policy, aivd, whose scores /v1/router shows
        "edge": [{"name": "fast", "replicas": 2}], "port": serve_port, "edge_resources": {"aivd_edge": 1},
        "cloud_resources": {"aivd_head": 0.01}, "ingress_resources": {"aivd_head": 0.01}, "keys_db": url,
    })
    base = deploy(config)
    broken = {"image": ("broken.jpg", b"\xff\xd8 not really")}

    def call(method, path, key=None, **kwargs):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, base + path, headers=headers, timeout=60, **kwargs)

    assert call("GET", "/healthz").status_code == 200
    document = call("GET", "/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"401", "403"} <= set(document["paths"]["/v1/inspect"]["post"]["responses"])
    assert "security" not in document["paths"]["/healthz"]["get"]
    for key in (None, "aivd_123456789abc_wrong"):
        for method, path in (("POST", "/v1/inspect"), ("POST", "/v1/inspect/batch"), ("GET", "/v1/router")):
            answer = call(method, path, key, files=broken if method == "POST" else None)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", (path, answer.text)
    assert call("GET", "/v1/router", viewer).status_code == 200
    refused = call("POST", "/v1/inspect", viewer, files=broken)
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"] and viewer not in refused.text
    inspected = [call("POST", "/v1/inspect", operator, files=broken) for _ in range(6)]
    assert all(r.status_code == 200 and r.json()["status"] == "error" for r in inspected)  # through to the edge, which refused the bytes

    # The router lists each edge replica it routed on, with the aivd score it gave it.
    nodes = [n for n in call("GET", "/v1/router", viewer).json()["nodes"] if n["age_s"] < 30]
    served = {r.json()["edge_node"] for r in inspected}
    assert len(nodes) == 2 and served <= {f"{n['node_class']}/{n['replica']}" for n in nodes}, (nodes, served)
    assert all(isinstance(n["score"], float) and math.isfinite(n["score"]) for n in nodes)


def test_a_public_cluster_host_without_keys_is_refused_before_ray_starts(tmp_path):
    from aivd.auth.web import AccessError
    from aivd.runtime.cluster import deploy

    public = {"edge": [{"name": "fast"}], "host": "0.0.0.0"}
    with pytest.raises(AccessError, match="no --db.*--insecure"):
        deploy(ClusterConfig.model_validate(public))
    empty = ClusterConfig.model_validate({**public, "keys_db": f"sqlite:///{tmp_path / 'empty.sqlite'}"})
    with pytest.raises(AccessError, match="has no active key"):
        deploy(empty)


@pytest.mark.integration
def test_the_cluster_updater_learns_from_the_edge_replicas_and_they_serve_what_it_promotes(ray_cluster, serve_port, tmp_path):
    pytest.importorskip("torch")
    from ray import serve

    from aivd.edge.detector import BUILTIN_MODEL
    from aivd.model_store import ModelStore
    from aivd.runtime.cluster import APP_NAME, deploy

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"]))
    config = ClusterConfig.model_validate({
        "edge": [{"name": "fast", "replicas": 2}], "port": serve_port, "edge_resources": {"aivd_edge": 1},
        "cloud_resources": {"aivd_head": 0.01}, "ingress_resources": {"aivd_head": 0.01}, "updater_resources": {"aivd_head": 0.01},
        "pipeline": {"edge": {"model": str(BUILTIN_MODEL), "model_poll_s": 0.2}, "update": {
            "enabled": True, "model_store": str(store.root), "trigger": {"every": 4},
            "learner": {"detector_steps": 0, "refiner_epochs": 1, "threads": 1}}},
    })
    url = deploy(config)
    updater = serve.get_deployment_handle("updater", APP_NAME)
    stems = sorted(path.name.removesuffix("_test.jpg") for path in SAMPLES.glob("*_test.jpg"))
    sent, report = 0, {"updates": []}
    deadline = time.monotonic() + 240
    # Until an update was trained and gated (the first ones are skipped: no validation image yet).
    while not {u["action"] for u in report["updates"]} & {"promote", "reject"} and time.monotonic() < deadline:
        for stem in stems:
            assert inspect(url, stem).json()["status"] == "ok"
        sent += len(stems)
        time.sleep(1.0)
        report = updater.report.remote().result()
    assert report["arrived"] == sent and report["observed"] + report["dropped"] <= sent
    gated = [u for u in report["updates"] if u["action"] in ("promote", "reject")]
    assert gated and store.info(gated[0]["version"])["parent"] == "v0001"  # published to the cluster's store
    if gated[0]["action"] == "promote":
        time.sleep(1.0)  # replicas poll the store every 0.2 s
        served = {inspect(url, stem).json()["detector"].rpartition("@")[2] for stem in stems}
        assert served and "v0001" not in served  # (a later update may have been promoted meanwhile)


@pytest.mark.integration
def test_the_cluster_updater_learns_from_the_reviews_stored_in_its_reviews_db(ray_cluster, serve_port, tmp_path):
    """A review stored in the database (as the console stores one) reaches the updater's learner, before and after it
    started, as the edge replicas' images arrive."""
    pytest.importorskip("torch")
    from ray import serve

    from aivd.edge.detector import BUILTIN_MODEL
    from aivd.model_store import ModelStore
    from aivd.review import ReviewStore
    from aivd.runtime.cluster import APP_NAME, deploy
    from aivd.schema.records import DefectRecord, InspectionRecord
    from aivd.store import ResultStore

    store = ModelStore(tmp_path / "models")
    store.promote(store.publish(BUILTIN_MODEL, [BUILTIN_MODEL.parent / "deeppcb_refiner.onnx"]))
    stems = sorted(path.name.removesuffix("_test.jpg") for path in SAMPLES.glob("*_test.jpg"))
    url = f"sqlite:///{tmp_path / 'console.sqlite'}"
    with ResultStore(url) as results:  # two inspected boards, as `aivd inspect --db` records them
        run_id = results.start_run("aivd inspect", {"classes": ["open", "short", "mousebite", "spur", "copper", "pin-hole"]})
        rows = [results.add(run_id, InspectionRecord(
            image=str(SAMPLES / f"{stem}_test.jpg"), image_id=stem, template=str(SAMPLES / f"{stem}_temp.jpg"), status="ok", error=None,
            defects=[DefectRecord(bbox=(10, 10, 40, 40), defect_type="open", confidence=0.5, source="edge")])) for stem in stems[:2]]
    with ReviewStore(url) as reviews:
        reviews.add(rows[0], "ana", "corrected", [{"bbox": [12, 12, 40, 38], "defect_type": "short"}])
    config = ClusterConfig.model_validate({
        "edge": [{"name": "fast", "replicas": 1}], "port": serve_port, "edge_resources": {"aivd_edge": 1},
        "cloud_resources": {"aivd_head": 0.01}, "ingress_resources": {"aivd_head": 0.01}, "updater_resources": {"aivd_head": 0.01},
        "reviews_db": url,
        "pipeline": {"edge": {"model": str(BUILTIN_MODEL)}, "update": {  # a trigger that never fires: no training here
            "enabled": True, "model_store": str(store.root), "trigger": {"min_images": 1000000},
            "learner": {"detector_steps": 0, "refiner_epochs": 1, "threads": 1}}},
    })
    base = deploy(config)
    updater = serve.get_deployment_handle("updater", APP_NAME)

    def reviewed_after_an_image() -> int:
        deadline = time.monotonic() + 120
        before = updater.report.remote().result()["observed"]
        while time.monotonic() < deadline:
            assert inspect(base, stems[2]).json()["status"] == "ok"
            report = updater.report.remote().result()
            if report["observed"] > before:
                return report["reviewed"]
            time.sleep(0.5)
        raise AssertionError(f"the updater observed no image in 120 s: {report}")

    assert reviewed_after_an_image() == 1
    with ReviewStore(url) as reviews:  # stored while the cluster runs
        reviews.add(rows[1], "ben", "good")
    assert reviewed_after_an_image() == 2
    assert updater.report.remote().result()["updates"] == []


@pytest.mark.integration
def test_bench_cluster_prints_one_json_object_with_every_request_answered(tmp_path):
    import json
    import subprocess
    import sys

    pytest.importorskip("ray.serve")
    run = subprocess.run(
        [sys.executable, "-m", "aivd.cli.main", "bench", "cluster", "--nodes", "2", "--scenario", "1", "--policies", "ect,rr",
         "--requests", "12", "--json", "--port", str(free_port())],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)  # stdout holds the JSON object alone
    assert set(report["policies"]) == set(report["simulator"]) == {"ect", "rr"}
    for policy in ("ect", "rr"):
        measured = report["policies"][policy]
        assert (measured["completed"], measured["lost"], measured["errors"]) == (12, 0, 0)
        assert measured["throughput_per_s"] > 0 and measured["latency_p99_ms"] >= measured["latency_p50_ms"]
    assert report["policies"]["ect"]["router"]["decisions"] >= 12
    assert [len(report["policies"][p]["runs"]) for p in ("ect", "rr")] == [1, 1]  # --repeat 1: one run, no interval
    assert report["policies"]["rr"]["latency_mean_ms_ci95"] is None and "noise_floor" not in report
