"""The cloud service over real HTTP: uvicorn on 127.0.0.1 in a thread, `HttpAnalyzer` as the edge's client."""

import base64
import dataclasses
import socket
import subprocess
import sys
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
from conftest import SAMPLES, serving
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from aivd.cli.main import app as aivd_app
from aivd.cloud.analyzer import AnalyzerError
from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.cloud.http_client import HttpAnalyzer
from aivd.cloud.service import ServiceLimits, create_app
from aivd.core import cut_regions
from aivd.data.deeppcb import read_annotation
from aivd.data.images import read_pair
from aivd.schema.analysis import DefectAnalysis
from aivd.schema.wire import AnalyzeRequest, decode_region, encode_region
from aivd.serving.server import ServerSettings

LIMITS = ServiceLimits(max_body_bytes=256 * 1024, max_regions=40, max_crop_side=256)


class Failing:
    """A backend whose first `times` batches raise `error`: a model restarting (AnalyzerError) or a bug (anything else)."""

    def __init__(self, inner, error: Exception, times: int):
        self.inner, self.name, self.error, self.times, self.calls = inner, inner.name, error, times, 0

    def analyze(self, regions):
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return self.inner.analyze(regions)

    def close(self):
        pass


@pytest.fixture(scope="module")
def builtin():
    analyzer = BuiltinAnalyzer()
    yield analyzer
    analyzer.close()


@pytest.fixture(scope="module")
def regions():
    """Every annotated defect of two bundled DeepPCB pairs, plus one region without a template."""
    cut = []
    for image_id in ("00041200", "13000198"):
        image, template = read_pair(SAMPLES / f"{image_id}_test.jpg", SAMPLES / f"{image_id}_temp.jpg")
        cut += cut_regions(image, template, read_annotation(SAMPLES / f"{image_id}.txt"), image_id, pixels_per_mm=48.0)
    return cut + [dataclasses.replace(cut[0], region_id="no-template#0", template=None, pixels_per_mm=None)]


@pytest.fixture(scope="module")
def service(builtin):
    with serving(create_app(builtin, LIMITS)) as url:
        yield url


def png_text(array) -> str:
    return base64.b64encode(cv2.imencode(".png", array)[1].tobytes()).decode()


def post(url, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/analyze", json=body, timeout=10, **kwargs)


def test_wire_round_trip_is_bit_exact(regions):
    for region in regions:
        decoded = decode_region(encode_region(region))
        assert np.array_equal(decoded.image, region.image) and decoded.image.dtype == np.uint8
        assert (decoded.template is None) == (region.template is None)
        if region.template is not None:
            assert np.array_equal(decoded.template, region.template)
        assert (decoded.box, decoded.origin, decoded.region_id) == (region.box, region.origin, region.region_id)
        assert (decoded.edge_class, decoded.edge_confidence, decoded.pixels_per_mm) == (
            region.edge_class, region.edge_confidence, region.pixels_per_mm)


@pytest.mark.integration
def test_remote_analyses_equal_in_process_ones(service, builtin, regions):
    remote = HttpAnalyzer(service)
    try:
        assert remote.name == "remote:builtin"
        assert remote.analyze(regions) == builtin.analyze(regions)
        empty = remote.analyze([])
        assert empty == [] and empty.bytes_sent == 0
    finally:
        remote.close()


@pytest.mark.integration
def test_healthz_and_docs(service, builtin):
    limits = {"max_body_bytes": LIMITS.max_body_bytes, "max_regions": 40, "max_crop_side": 256, "max_pixels": LIMITS.max_pixels}
    health = {"status": "ok", "analyzer": "builtin", "proposal_threshold": builtin.proposal_threshold, "limits": limits}
    assert httpx.get(f"{service}/healthz").json() == health
    remote = HttpAnalyzer(service)
    try:  # the edge learns the threshold the remote classifier was calibrated for, and the limits it must keep to
        assert remote.name == "remote:builtin" and remote.proposal_threshold == builtin.proposal_threshold
        assert remote.limits.model_dump() == limits
    finally:
        remote.close()
    schema = httpx.get(f"{service}/openapi.json").json()
    assert schema["info"]["title"] == "aivd cloud analysis" and "/v1/analyze" in schema["paths"]
    assert httpx.get(f"{service}/docs").status_code == 200


@pytest.mark.integration
def test_metrics_and_byte_counts_agree(builtin, regions):
    with serving(create_app(builtin, LIMITS)) as url:
        remote = HttpAnalyzer(url)
        batches = (regions[:3], regions[3:])
        sent = []
        for batch in batches:
            analyses = remote.analyze(batch)
            request_size = len(AnalyzeRequest(regions=[encode_region(r) for r in batch]).model_dump_json().encode())
            assert analyses.bytes_sent == request_size  # the answer carries what it cost
            sent.append(analyses.bytes_sent)
            assert analyses.bytes_received > 0
        received = remote.bytes_received
        remote.close()
        assert remote.bytes_sent == sum(sent)
        text = httpx.get(f"{url}/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }
    analyze = (("endpoint", "/v1/analyze"),)
    assert samples[("aivd_cloud_requests_total", (*analyze, ("status", "200")))] == 2
    assert samples[("aivd_cloud_requests_total", (("endpoint", "/healthz"), ("status", "200")))] == 1
    assert samples[("aivd_cloud_regions_analyzed_total", ())] == len(regions)
    assert samples[("aivd_cloud_request_bytes_total", analyze)] == sum(sent)
    assert samples[("aivd_cloud_response_bytes_total", analyze)] == received
    assert samples[("aivd_cloud_analyze_seconds_count", ())] == 2


@pytest.mark.integration
def test_oversized_body_is_refused_before_parsing(service, regions):
    big = {"regions": [encode_region(regions[0]).model_dump(mode="json")] * 100}  # about 1 MiB against a 256 KiB limit
    response = post(service, big)
    assert response.status_code == 413
    assert response.json()["detail"].startswith("request body of ") and f"limit of {256 * 1024} bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold on the bytes actually streamed
        yield b'{"regions": ['
        for _ in range(64):
            yield b'"' + b"A" * 8192 + b'",'

    streamed = httpx.post(f"{service}/v1/analyze", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["detail"]

    # The client knows the limit from /healthz and splits a batch too big for one request into several.
    remote = HttpAnalyzer(service)
    many = [dataclasses.replace(regions[0], region_id=f"big#{i}") for i in range(LIMITS.max_regions)]
    analyses = remote.analyze(many)
    assert len(analyses) == len(many) and analyses.bytes_sent > LIMITS.max_body_bytes
    remote.close()


@pytest.mark.integration
def test_too_many_regions(service, regions):
    payload = encode_region(regions[2]).model_dump(mode="json")
    response = post(service, {"regions": [{**payload, "region_id": f"r{i}"} for i in range(LIMITS.max_regions + 1)]})
    assert response.status_code == 422
    assert response.json() == {"detail": f"{LIMITS.max_regions + 1} regions in one request; the limit is {LIMITS.max_regions}"}


def _bad_inputs(payload: dict) -> dict:
    image = base64.b64decode(payload["image_png"])
    return {
        "corrupt PNG": ({"image_png": base64.b64encode(image[:-40]).decode()}, "image_png is a corrupt or truncated PNG"),
        "not base64": ({"image_png": "not*base64"}, "image_png is not valid base64"),
        "JPEG": ({"image_png": base64.b64encode(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()).decode()},
                 "image_png is not a PNG image"),
        "colour": ({"image_png": png_text(np.zeros((8, 8, 3), np.uint8))}, "must be an 8-bit grayscale PNG, got 8-bit RGB"),
        "16-bit": ({"image_png": png_text(np.zeros((8, 8), np.uint16))}, "must be an 8-bit grayscale PNG, got 16-bit grayscale"),
        "too large": ({"image_png": png_text(np.zeros((4, 300), np.uint8))}, "image_png is 300x4 px; each side must be 1..256 px"),
        "template size": ({"template_png": png_text(np.zeros((9, 9), np.uint8))}, "template_png is 9x9 px but image_png is"),
        "box outside": ({"box": [0, 0, 500, 10]}, "box [0.0, 0.0, 500.0, 10.0] is not inside the"),
        "confidence": ({"edge_confidence": 1.5}, "edge_confidence: Input should be less than or equal to 1"),
        "scale": ({"pixels_per_mm": 0}, "pixels_per_mm: Input should be greater than 0.001"),
        # issue 15 item 8: these gave 500s (a division by zero or an overflow in the measurements)
        "tiny scale": ({"pixels_per_mm": 1e-200}, "pixels_per_mm: Input should be greater than 0.001"),
        "subnormal scale": ({"pixels_per_mm": 5e-324}, "pixels_per_mm: Input should be greater than 0.001"),
        "huge scale": ({"pixels_per_mm": 1e308}, "pixels_per_mm: Input should be less than 100000"),
        "unknown field": ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    }


@pytest.mark.integration
def test_bad_regions_get_422_naming_the_region(service, regions):
    payload = encode_region(regions[1]).model_dump(mode="json")
    for case, (change, reason) in _bad_inputs(payload).items():
        response = post(service, {"regions": [payload, {**payload, **change, "region_id": "board-7#3"}]})
        assert response.status_code == 422, case
        detail = response.json()["detail"]
        assert detail.startswith("region board-7#3: ") and reason in detail, (case, detail)
    duplicate = post(service, {"regions": [payload, payload]})
    assert duplicate.status_code == 422 and "appears more than once" in duplicate.json()["detail"]
    not_json = httpx.post(f"{service}/v1/analyze", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["detail"].startswith("the body is not valid JSON: ")
    # The server is still there and answers good requests after all that.
    assert post(service, {"regions": [payload]}).status_code == 200


@pytest.mark.integration
def test_client_raises_the_servers_reason_without_retrying(service, regions):
    outside = dataclasses.replace(regions[0], region_id="board-1#9", box=(0.0, 0.0, 999.0, 5.0))
    remote = HttpAnalyzer(service, backoff_s=5)
    with pytest.raises(AnalyzerError, match=r"HTTP 422\): region board-1#9: box .* is not inside"):
        remote.analyze([regions[0], outside])
    remote.close()


@pytest.mark.integration
def test_503_from_the_backend_is_retried(builtin, regions):
    restarting = Failing(builtin, AnalyzerError("model is restarting"), times=1)
    with serving(create_app(restarting, LIMITS)) as url:
        remote = HttpAnalyzer(url, backoff_s=0.01)
        analyses = remote.analyze(regions[:2])
        assert analyses == builtin.analyze(regions[:2])
        remote.close()
    assert restarting.calls == 2
    assert analyses.bytes_sent == remote.bytes_sent > 0  # both attempts' bodies count, and they were one call


@pytest.mark.integration
def test_a_backend_bug_is_a_json_500_and_the_server_survives(builtin, regions):
    broken = Failing(builtin, ZeroDivisionError("division by zero"), times=10)
    with serving(create_app(broken, LIMITS)) as url:
        remote = HttpAnalyzer(url, retries=1, backoff_s=0.01)
        with pytest.raises(AnalyzerError, match="failed 2 times .* HTTP 500: analyzer builtin crashed: ZeroDivisionError: division by zero"):
            remote.analyze(regions[:1])
        remote.close()
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert 'aivd_cloud_requests_total{endpoint="/v1/analyze",status="500"} 2.0' in httpx.get(f"{url}/metrics").text


def test_unreachable_service_fails_within_bounded_time(regions):
    with socket.socket() as unused:  # bound but not listening: connections are refused, and no one else gets the port
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
        started = time.monotonic()
        remote = HttpAnalyzer(url, timeout_s=1.0, retries=2, backoff_s=0.05)
        assert remote.name == "remote:unknown"  # the edge still starts without its cloud
        with pytest.raises(AnalyzerError, match=r"failed 3 times .* cannot connect"):
            remote.analyze(regions[:1])
        elapsed = time.monotonic() - started
        remote.close()
    assert 0.15 <= elapsed < 3  # the two backoffs (0.05 s, 0.1 s) ran, and nothing waited for a timeout
    assert remote.bytes_sent == 0


def test_the_health_probe_says_whether_the_service_answers_now(service):
    """What the Ray cloud deployment's check_health asks of an http backend."""
    remote = HttpAnalyzer(service)
    remote.check(timeout_s=5)
    remote.close()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        down = HttpAnalyzer(f"http://127.0.0.1:{unused.getsockname()[1]}", retries=0)
        with pytest.raises(AnalyzerError, match=r"http://127.0.0.1:\d+: not answering: ConnectError"):
            down.check(timeout_s=1)
        down.close()


def test_client_refuses_a_bad_url():
    with pytest.raises(ValueError, match="must be http"):
        HttpAnalyzer("ftp://example.org")


def test_serve_refuses_a_broken_model(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_text("nope")
    result = CliRunner().invoke(aivd_app, ["serve", "cloud", "--model", str(broken)])
    assert result.exit_code == 2 and str(broken) in result.output


@pytest.mark.integration
def test_serve_cloud_command_serves():
    process = subprocess.Popen([sys.executable, "-m", "aivd.cli.main", "serve", "cloud", "--port", "0"], stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, process.kill)  # a server that never says it started must not hang the suite
    watchdog.start()
    try:
        lines, url = [], None
        for line in process.stderr:  # uvicorn says where it listens once it does
            lines.append(line)
            if "Uvicorn running on " in line:
                url = line.split("Uvicorn running on ")[1].split()[0]
                break
        assert url, "aivd serve cloud did not start:\n" + "".join(lines)
        assert httpx.get(f"{url}/healthz").json()["analyzer"] == "builtin"
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(10)


@pytest.mark.integration
def test_inspection_through_the_service_matches_in_process_and_counts_traffic(service, builtin, tmp_path):
    from aivd.edge.detector import load_detector
    from aivd.pipeline.engine import EdgeCloudPipeline
    from aivd.pipeline.inputs import TemplateMode, tasks_from_paths
    from aivd.pipeline.inspect import InspectOptions, inspect_tasks

    tasks = tasks_from_paths([SAMPLES], TemplateMode.require)
    options = InspectOptions(annotate=False, database=None, report=False)
    local, remote_records = [], []
    inspect_tasks(tasks, EdgeCloudPipeline(load_detector(), builtin, pixels_per_mm=48), tmp_path / "local", options, local.append)
    remote = HttpAnalyzer(service)
    try:
        summary = inspect_tasks(tasks, EdgeCloudPipeline(load_detector(), remote, pixels_per_mm=48), tmp_path / "remote", options,
                                remote_records.append)
    finally:
        remote.close()
    assert [d.model_dump(exclude={"source"}) for r in remote_records for d in r.defects] == [
        d.model_dump(exclude={"source"}) for r in local for d in r.defects]
    assert {d.source for r in remote_records for d in r.defects} == {"cloud:remote:builtin"}
    assert all(r.bytes_to_cloud > 0 and r.bytes_from_cloud > 0 and r.cloud_error is None for r in remote_records)
    assert summary.bytes_to_cloud == remote.bytes_sent and summary.bytes_from_cloud == remote.bytes_received


class Slow:
    """A backend taking `seconds` per region, recording each batch's region ids: to see who was served when."""

    def __init__(self, seconds: float):
        self.name, self.seconds, self.batches = "slow", seconds, []

    def analyze(self, regions):
        time.sleep(self.seconds * len(regions))
        self.batches.append([region.region_id for region in regions])
        # Valid analyses without a model, naming their region, so that timing tests measure only the scheduling.
        return [DefectAnalysis(is_defect=False, defect_type="open", confidence=0.5, severity=None,
                               description=region.region_id, recommended_action="none") for region in regions]

    def close(self):
        pass


def named(regions, prefix, count):
    return {"regions": [{**encode_region(regions[i % len(regions)]).model_dump(mode="json"), "region_id": f"{prefix}#{i}"}
                        for i in range(count)]}


@pytest.mark.integration
def test_a_big_request_cannot_hold_up_another_clients_small_one(regions):
    backend = Slow(0.05)
    limits = ServiceLimits(max_crop_side=256, slice_regions=4)
    with serving(create_app(backend, limits)) as url:
        hostile = threading.Thread(target=post, args=(url, named(regions, "big", 40)), kwargs={}, daemon=True)
        hostile.start()  # 10 slices of 0.2 s
        time.sleep(0.3)
        started = time.monotonic()
        response = post(url, named(regions, "small", 2))
        waited = time.monotonic() - started
        hostile.join(10)
    assert response.status_code == 200 and [a["description"] for a in response.json()["analyses"]] == ["small#0", "small#1"]
    assert waited < 0.6, f"the small request waited {waited:.2f} s behind the big one"
    order = [batch[0].split("#")[0] for batch in backend.batches]
    assert order.index("small") < len(order) - 3  # served between the big request's slices, not after them


@pytest.mark.integration
def test_work_stops_when_the_client_goes_away_and_a_late_request_gets_503(regions):
    backend = Slow(0.05)
    with serving(create_app(backend, ServiceLimits(max_crop_side=256, slice_regions=4))) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/analyze", json=named(regions, "gone", 40), timeout=0.3)
        time.sleep(1.0)  # the whole request would take 2 s
        assert 1 <= len(backend.batches) <= 3, backend.batches
        text = httpx.get(f"{url}/metrics").text
    assert 'aivd_cloud_requests_total{endpoint="/v1/analyze",status="499"} 1.0' in text
    with serving(create_app(Slow(0.05), ServiceLimits(max_crop_side=256, slice_regions=4, request_timeout_s=0.5))) as url:
        response = post(url, named(regions, "late", 40))
    assert response.status_code == 503 and response.json() == {"detail": "not answered within 0.5 s: the analyzer is busy; retry later"}


@pytest.mark.integration
def test_the_work_budget_is_checked_from_the_png_headers_before_decoding(regions):
    backend = Slow(0.0)
    limits = ServiceLimits(max_crop_side=256, max_pixels=100_000)
    with serving(create_app(backend, limits)) as url:
        flat = np.zeros((250, 250), np.uint8)  # 62,500 px that compress to a few hundred bytes
        body = named(regions, "flat", 2)
        for region in body["regions"]:
            region.update(image_png=png_text(flat), template_png=None, box=[0, 0, 10, 10])
        response = post(url, body)
        remote = HttpAnalyzer(url)  # the client splits the same regions into requests within the budget
        answered = remote.analyze([dataclasses.replace(regions[0], region_id=f"f#{i}", image=flat, template=None,
                                                       box=(0, 0, 10, 10)) for i in range(2)])
        remote.close()
    assert response.status_code == 422
    assert response.json()["detail"] == ("the regions hold 125000 pixels (crops and templates); the limit per request is 100000: "
                                         "send fewer or smaller regions per request")
    assert len(answered) == 2 and len(backend.batches) == 2


@pytest.mark.integration
def test_a_stalled_request_is_cut_off_and_health_answers_beside_idle_connections(builtin):
    with serving(create_app(builtin), ServerSettings(request_read_timeout_s=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(200)]
        slowloris = socket.create_connection((host, int(port)))
        slowloris.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        started = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1
        slowloris.settimeout(5)
        assert slowloris.recv(100) == b""  # closed by the server after 0.5 s
        assert time.monotonic() - started < 3
        for connection in [slowloris, *idle]:
            connection.close()


@pytest.mark.integration
def test_bench_service_abuse_runs_every_phase_against_the_real_server():
    result = subprocess.run([sys.executable, "-m", "aivd.cli.main", "bench", "service-abuse", "--seconds", "1",
                             "--idle-connections", "50"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    report = json.loads(result.stdout)
    assert set(report["with_hostile_512"]["statuses"]["hostile"]) == {"422"}  # over the pixel budget, refused unread
    for phase in ("edge_alone", "with_hostile_512", "with_hostile_budget"):
        assert set(report[phase]["statuses"]["edge"]) == {"200"} and report[phase]["requests"] > 0
    assert report["healthz_with_idle"]["idle_connections"] == 50
    assert set(report["healthz_with_idle"]["statuses"]["healthz"]) == {"200"}
