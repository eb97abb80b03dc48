"""`aivd bench service-abuse`: can a hostile client starve a normal one of the cloud service?

Starts `aivd serve cloud` (the real server, its default limits) on 127.0.0.1 and drives it with locust:
1. `edge_alone`: an edge client sends a batch of 10 DeepPCB regions, five times a second;
2. `with_hostile_512`: the same while a hostile client sends, in a loop, one request of 512 flat 1024 x 1024
   crops (1.5 MiB of PNG that decodes to 512 Mpx: the request that once held the analyzer for 36 s);
3. `with_hostile_budget`: the same while the hostile client sends the most work one request may ask for (flat
   1024 x 1024 crops up to the service's pixel budget), which the service does analyse;
4. `healthz_with_idle`: `/healthz` while 1,100 idle connections are held open.
Each phase reports the normal client's latency percentiles (locust's, in ms) and the status codes answered.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from aivd.bench.servers import aivd_server, free_port
from aivd.core import cut_regions
from aivd.data.deeppcb import read_annotation
from aivd.data.images import read_pair
from aivd.schema.wire import AnalyzeRequest, encode_png, encode_region

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples" / "deeppcb"
HOSTILE_CROPS = 512
CROP_SIDE = 1024
IDLE_CONNECTIONS = 1100


def edge_body() -> bytes:
    """10 regions as the edge sends them: annotated defects of bundled DeepPCB pairs, with their templates."""
    regions = []
    for stem in ("00041200", "13000198", "20085291"):
        image, template = read_pair(SAMPLES / f"{stem}_test.jpg", SAMPLES / f"{stem}_temp.jpg")
        regions += cut_regions(image, template, read_annotation(SAMPLES / f"{stem}.txt"), stem, pixels_per_mm=48.0)
    return AnalyzeRequest(regions=[encode_region(region) for region in regions[:10]]).model_dump_json().encode()


def flat_body(count: int, prefix: str) -> bytes:
    flat = encode_png(np.full((CROP_SIDE, CROP_SIDE), 128, np.uint8))
    box = [CROP_SIDE * 0.4, CROP_SIDE * 0.4, CROP_SIDE * 0.6, CROP_SIDE * 0.6]  # a box inside: its surroundings are measured too
    regions = [{"region_id": f"{prefix}#{i}", "image_png": flat, "box": box, "origin": [0, 0],
                "edge_class": "open", "edge_confidence": 0.5} for i in range(count)]
    return AnalyzeRequest.model_validate({"regions": regions}).model_dump_json().encode()


def bench_service_abuse(seconds: float = 20.0, idle_connections: int = IDLE_CONNECTIONS) -> dict:
    # locust patches the standard library for gevent when imported: only here, in the benchmark's own process.
    import gevent
    from locust import HttpUser, constant, constant_pacing, events, task
    from locust.env import Environment

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with aivd_server(["serve", "cloud", "--port", str(port)], port):
        import httpx

        limits = httpx.get(f"{url}/healthz", timeout=30).json()["limits"]
        normal = edge_body()
        budget_crops = limits["max_pixels"] // (CROP_SIDE * CROP_SIDE)
        bodies = {"with_hostile_512": flat_body(HOSTILE_CROPS, "hostile"), "with_hostile_budget": flat_body(budget_crops, "budget")}
        headers = {"content-type": "application/json"}

        class Edge(HttpUser):
            host, fixed_count, wait_time = url, 1, constant_pacing(0.2)

            @task
            def batch(self):
                self.client.post("/v1/analyze", data=normal, headers=headers, name="edge", timeout=30)

        def hostile_user(body: bytes) -> type:
            class Hostile(HttpUser):
                host, fixed_count, wait_time = url, 1, constant(0)

                @task
                def flood(self):
                    with self.client.post("/v1/analyze", data=body, headers=headers, name="hostile", timeout=120,
                                          catch_response=True) as response:
                        response.success()  # refusals are what the service should answer: counted by status below

            return Hostile

        class Health(HttpUser):
            host, fixed_count, wait_time = url, 1, constant_pacing(0.05)

            @task
            def health(self):
                self.client.get("/healthz", name="healthz", timeout=30)

        def phase(users: list[type], watched: str) -> dict:
            statuses: dict[str, dict[str, int]] = {}

            def count(request_type, name, response, **_):
                code = str(getattr(response, "status_code", 0))
                statuses.setdefault(name, {}).setdefault(code, 0)
                statuses[name][code] += 1

            listener = events.request.add_listener(count)
            environment = Environment(user_classes=users, events=events)
            runner = environment.create_local_runner()
            runner.start(len(users), spawn_rate=len(users))
            gevent.spawn_later(seconds, runner.quit)
            runner.greenlet.join()
            events.request.remove_listener(listener)
            entry = environment.stats.get(watched, "GET" if watched == "healthz" else "POST")
            return {
                "requests": entry.num_requests, "failures": entry.num_failures,
                "p50_ms": entry.get_response_time_percentile(0.5), "p99_ms": entry.get_response_time_percentile(0.99),
                "max_ms": round(entry.max_response_time, 1), "statuses": statuses,
            }

        report: dict = {"seconds_per_phase": seconds, "limits": limits, "edge_alone": phase([Edge], "edge")}
        for name, body in bodies.items():
            report[name] = {"hostile_request_bytes": len(body), **phase([Edge, hostile_user(body)], "edge")}
        report["with_hostile_budget"]["hostile_crops"] = budget_crops
        idle = []
        for _ in range(idle_connections):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        report["healthz_with_idle"] = {"idle_connections": len(idle), **phase([Health], "healthz")}
        for connection in idle:
            connection.close()
        return report
