"""The operator console against a real uvicorn: its JSON API with httpx, its pages in headless Chromium (Playwright)
as an operator drives them, and its OpenAPI document fuzzed by schemathesis."""

import html
import io
import json
import re
import threading
import zipfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import SAMPLES, aivd, free_port, fuzz, serving
from sqlalchemy import select

from aivd.auth.keys import ApiKeys
from aivd.auth.users import Users
from aivd.auth.web import Access
from aivd.console import build_console_app
from aivd.data.deeppcb import parse_annotation
from aivd.model_store import ModelStore
from aivd.schema.records import DefectRecord, InspectionRecord, OffloadNote
from aivd.store import ResultStore
from aivd.store.database import audit_log, reviews

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
SEVERITIES = ("critical", "major", "minor")
PASSWORD = "seven seas of rhye"


def sample_record(path: Path, index: int) -> InspectionRecord:
    """A bundled DeepPCB test image with its annotated defects as the machine's answer (confidences and severities
    varied by position, so that filters have something to tell apart)."""
    truth = parse_annotation(path.with_name(path.name.replace("_test.jpg", ".txt")).read_text())
    found = [DefectRecord(bbox=tuple(float(v) for v in box), defect_type=truth.labels.name(label), confidence=0.3 + 0.1 * ((index + n) % 7),
                          source="cloud:builtin", edge_type=truth.labels.name(label), edge_confidence=0.5,
                          severity=SEVERITIES[(index + n) % 3], offload=OffloadNote(sent=n % 2 == 0, reason="hard"))
             for n, (box, label) in enumerate(zip(truth.xyxy.tolist(), truth.class_id.tolist()))]
    return InspectionRecord(image=str(path), image_id=path.stem, template=None, status="ok", error=None, detector="centernet:v0002",
                            analyzer="builtin", defects=found, timings_ms={"detect": 12.0 + index, "analyze": 30.0, "total": 45.0 + index})


SAMPLE_IMAGES = sorted(SAMPLES.glob("*_test.jpg"))


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """A database of two runs over the bundled samples (12 images), a model store of two versions (v0002 served), a
    key per role, the admin user ann, and the console serving them; yields (url, db_url, keys by role)."""
    root = tmp_path_factory.mktemp("console")
    db_url = f"sqlite:///{root / 'aivd.sqlite'}"
    with ResultStore(db_url) as store:
        for run in range(2):
            run_id = store.start_run(f"aivd inspect run{run}", {})
            for index, path in enumerate(SAMPLE_IMAGES):
                store.add(run_id, sample_record(path, index + run))
            store.finish_run(run_id, {"images": len(SAMPLE_IMAGES), "ok": len(SAMPLE_IMAGES), "failed": 0})
    detector = root / "detector.onnx"
    detector.write_bytes(b"not a model: the store only copies it")
    models = ModelStore(root / "models")
    first = models.publish(detector, metrics={"f1": 0.81})
    models.promote(models.publish(detector, parent=first, metrics={"f1": 0.84}), "test")
    with ApiKeys(db_url) as key_store:
        keys = {role: key_store.create(role) for role in ("viewer", "operator", "admin")}
    with Users(db_url) as users:
        users.create("ann", PASSWORD, "admin")
    with Access.from_db(db_url) as access, serving(build_console_app(db_url, access, model_store=root / "models")) as url:
        yield url, db_url, keys


def bearer(keys, role) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[role]}"}


def test_the_api_filters_pages_and_shows_images_with_their_files(console):
    url, _, keys = console
    with httpx.Client(base_url=url, headers=bearer(keys, "viewer")) as client:
        everything = client.get("/api/images", params={"limit": 5}).json()
        assert (everything["total"], len(everything["items"]), everything["next_after"]) == (12, 5, everything["items"][-1]["id"])
        second = client.get("/api/images", params={"limit": 5, "after": everything["next_after"]}).json()
        assert [item["id"] for item in second["items"]] == list(range(7, 2, -1))
        opens = client.get("/api/images", params={"defect_type": "open", "run_id": 1}).json()["items"]
        assert opens and all("open" in item["classes"] and item["run_id"] == 1 for item in opens)
        detail = client.get(f"/api/images/{opens[0]['id']}").json()
        assert (detail["width"], detail["height"]) == (640, 640)
        picture = client.get(f"/api/images/{detail['id']}/file")
        assert (picture.status_code, picture.headers["content-type"], picture.content[:3]) == (200, "image/jpeg", b"\xff\xd8\xff")
        crop = client.get(f"/api/defects/{detail['defects'][0]['id']}/crop")
        assert (crop.status_code, crop.headers["content-type"]) == (200, "image/jpeg")
        assert client.get("/api/images/999999").status_code == 404
        misspelt = client.get("/api/images", params={"class": "open"})  # not ignored: it would list every image
        assert (misspelt.status_code, misspelt.json()["detail"][0]["loc"]) == (422, ["query", "class"])
        unix_time = client.get("/api/images", params={"until": "1700000000"})  # pydantic alone would read it as 2023-11-14
        assert (unix_time.status_code, unix_time.json()["detail"][0]["loc"]) == (422, ["query", "until"])
        # The page's GET form: blank fields mean no filter, a datetime-local field is UTC.
        form = client.get("/images", params={"since": "2000-01-01T00:00", "until": "", "run_id": "", "defect_type": "open", "reviewed": ""})
        assert form.status_code == 200 and form.text.count('<a href="/images/') == len(client.get("/api/images", params={"defect_type": "open"}).json()["items"])
        future = client.get("/images", params={"since": "2999-01-01T00:00:00", "run_id": ""})
        assert "No image matches." in future.text
        live = client.get("/api/live").json()
        assert live["images"] == 12 and live["latency_ms"]["total"]["count"] == 12 and live["models"] == {"centernet:v0002": 12}
        models = client.get("/api/models").json()
        assert (models["current"], [v["version"] for v in models["versions"]]) == ("v0002", ["v0001", "v0002"])
        assert [run["recorded"] for run in client.get("/api/runs").json()["items"]] == [6, 6]


def test_the_api_needs_a_key_and_a_role_high_enough(console):
    url, _, keys = console
    assert httpx.get(f"{url}/api/images").status_code == 401
    assert httpx.get(f"{url}/api/images", headers={"Authorization": "Bearer aivd_00_nope"}).status_code == 401
    assert httpx.get(f"{url}/api/audit", headers=bearer(keys, "viewer")).status_code == 403
    review = {"image_row_id": 1, "verdict": "good", "labels": []}
    assert httpx.post(f"{url}/api/reviews", json=review, headers=bearer(keys, "viewer")).status_code == 403
    page = httpx.get(f"{url}/images?run_id=1")
    assert page.status_code in (302, 303, 307) and page.headers["location"].startswith("/login")
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_the_image_route_serves_only_image_files_the_database_names(console, tmp_path):
    url, db_url, keys = console
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    with ResultStore(db_url) as store:
        run_id = store.start_run("planted", {})
        store.add(run_id, InspectionRecord(image=str(secret), image_id="secret", template=None, status="ok", error=None))
        planted = max(item["id"] for item in httpx.get(f"{url}/api/images", params={"run_id": run_id}, headers=bearer(keys, "viewer")).json()["items"])
    answer = httpx.get(f"{url}/api/images/{planted}/file", headers=bearer(keys, "viewer"))
    assert (answer.status_code, "TOP SECRET" in answer.text) == (415, False)


def test_a_review_is_stored_beside_the_machines_answer_and_audited(console):
    url, db_url, keys = console
    with httpx.Client(base_url=url, headers=bearer(keys, "operator")) as client:
        image = client.get("/api/images/3").json()
        machine = image["defects"][0]
        labels = [{"bbox": [1, 2, 30, 40], "defect_type": "short", "defect_id": machine["id"]}]
        saved = client.post("/api/reviews", json={"image_row_id": 3, "verdict": "corrected", "labels": labels})
        assert saved.status_code == 200, saved.text
        refused = client.post("/api/reviews", json={"image_row_id": 3, "verdict": "corrected",
                                                    "labels": [{**labels[0], "defect_id": 999999}]})
        assert refused.status_code == 422
        bad_box = client.post("/api/reviews", json={"image_row_id": 3, "verdict": "corrected", "labels": [{**labels[0], "bbox": [5, 5, 1, 1]}]})
        assert bad_box.status_code == 422
        after = client.get("/api/images/3").json()
    assert after["defects"][0] == machine  # the machine's answer is untouched
    assert after["reviews"][0]["labels"] == labels and after["reviews"][0]["verdict"] == "corrected"
    with ResultStore(db_url) as store, store.engine.connect() as connection:
        audited = connection.execute(select(audit_log).where(audit_log.c.action == "review")).all()
    assert any(row.target == "image:3" and json.loads(row.detail)["review"] == saved.json()["id"] for row in audited)


NODES = [{"replica": "r7", "node_class": "jetson", "cpu_idle": 0.25, "queue_len": 2, "bandwidth_bps": 12.5e6,
           "latency_s": 0.004, "score": 0.8126, "age_s": 0.3},
          {"replica": "r8", "node_class": "pi", "cpu_idle": 1.0, "queue_len": 0, "bandwidth_bps": 2e6,
           "latency_s": 0.02, "score": None, "age_s": 1.26}]
NODE_CELLS = [["r7", "jetson", "25", "2", "12.5", "4.0", "0.813", "0.3"], ["r8", "pi", "100", "0", "2.0", "20.0", "", "1.3"]]


def fake_runtime(answer: dict):
    """An ingress's /v1/router as `aivd serve --config` answers it, asking for the key aivd_runtime_key; what it
    reports is `answer["router"]`, which the test may change."""
    from fastapi import FastAPI, Header, HTTPException

    runtime = FastAPI()

    @runtime.get("/v1/router")
    def router(authorization: str = Header("")):
        if authorization != "Bearer aivd_runtime_key":
            raise HTTPException(401)
        return answer["router"]

    return runtime


def test_the_live_view_shows_the_runtimes_router_read_with_its_key(tmp_path):
    """--runtime: the live view adds what an ingress's /v1/router reports, asked with the console's key for it."""
    answer = {"router": {"policy": "aivd", "decisions": 3, "nodes": NODES}}
    db_url = f"sqlite:///{tmp_path / 'aivd.sqlite'}"
    with serving(fake_runtime(answer)) as runtime_url, Access.from_db(db_url) as access:
        with serving(build_console_app(db_url, access, runtime_url=runtime_url, runtime_key="aivd_runtime_key")) as url:
            live = httpx.get(f"{url}/api/live").json()  # nothing configured, on 127.0.0.1: open
            page = httpx.get(f"{url}/").text
        with serving(build_console_app(db_url, access, runtime_url=runtime_url)) as url:
            refused = httpx.get(f"{url}/api/live").json()
        answer["router"] = {**answer["router"], "nodes": [{**NODES[0], "score": "high"}]}
        with serving(build_console_app(db_url, access, runtime_url=runtime_url, runtime_key="aivd_runtime_key")) as url:
            garbled = httpx.get(f"{url}/api/live").json()
    assert (live["runtime"], live["runtime_error"]) == ({"policy": "aivd", "decisions": 3, "nodes": NODES}, None)
    assert refused["runtime"] is None and "401" in refused["runtime_error"]
    assert garbled["runtime"] is None and "edge nodes are not as aivd's /v1/router reports them" in garbled["runtime_error"]
    # The live page: one table row per node, the rest of the report as JSON below it.
    table = page.split('<tbody data-live="nodes">')[1].split("</tbody>")[0]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in table.split("</tr>")[:-1]]
    assert cells == NODE_CELLS
    shown = page.split('<pre data-live="runtime">')[1].split("</pre>")[0]
    assert json.loads(html.unescape(shown)) == {"policy": "aivd", "decisions": 3}


def test_the_live_view_shows_each_live_runs_drift_state_from_its_metrics(tmp_path):
    from aivd.pipeline.live_update import UPDATE_ACTIONS, LiveMetrics

    run = LiveMetrics()
    run.observe(InspectionRecord(image="a.jpg", image_id="a", template=None, status="ok", error=None, detector="centernet@v0003"), None)
    run.drift.set(1)
    run.updated(UPDATE_ACTIONS[0])
    db_url = f"sqlite:///{tmp_path / 'aivd.sqlite'}"
    with run.serving(0) as port, Access.from_db(db_url) as access:
        gone = f"http://127.0.0.1:{free_port()}/"
        with serving(build_console_app(db_url, access, metrics_urls=[f"http://127.0.0.1:{port}/", gone])) as url:
            lines = httpx.get(f"{url}/api/live").json()["lines"]
    assert (lines[0]["drift"], lines[0]["model"], lines[0]["updates"][UPDATE_ACTIONS[0]], lines[0]["error"]) == (True, "centernet@v0003", 1, None)
    assert lines[1]["url"] == gone and lines[1]["error"] and lines[1]["drift"] is None


def test_serve_console_refuses_an_open_public_address_and_a_folder_that_is_no_model_store(tmp_path):
    db = f"sqlite:///{tmp_path / 'aivd.sqlite'}"
    refused = aivd("serve", "console", "--db", db, "--host", "0.0.0.0", rc=2)
    assert "refusing to serve 0.0.0.0" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    not_a_store = aivd("serve", "console", "--db", db, "--model-store", tmp_path, rc=2)
    assert "not a model store" in not_a_store.stderr


def test_admins_roll_back_and_promote_and_both_are_audited(console):
    url, db_url, keys = console
    assert httpx.post(f"{url}/models/rollback", headers=bearer(keys, "operator")).status_code == 403
    with httpx.Client(base_url=url, headers=bearer(keys, "admin")) as client:
        rolled = client.post("/models/rollback", data={"reason": "f1 fell"})
        assert (rolled.status_code, rolled.headers["location"]) == (303, "/models")
        assert client.get("/api/models").json()["current"] == "v0001"
        assert client.post("/models/rollback").status_code == 409  # v0001 has no parent
        assert client.post("/models/promote", data={"version": "v9999"}).status_code == 409
        assert client.post("/models/promote", data={"version": "v0002"}).status_code == 303
        state = client.get("/api/models").json()
    assert state["current"] == "v0002"
    assert [(h["action"], h["version"]) for h in state["history"][:2]] == [("promote", "v0002"), ("rollback", "v0001")]
    with ResultStore(db_url) as store, store.engine.connect() as connection:
        audited = connection.execute(select(audit_log.c.action, audit_log.c.target, audit_log.c.detail)
                                     .where(audit_log.c.action.in_(["promote", "rollback"])).order_by(audit_log.c.id)).all()
    assert [(row.action, row.target) for row in audited[-2:]] == [("rollback", "model:v0001"), ("promote", "model:v0002")]
    assert json.loads(audited[-2].detail) == {"previous": "v0002", "reason": "f1 fell"}


def test_export_zips_the_reviewed_images(console):
    url, _, keys = console
    httpx.post(f"{url}/api/reviews", json={"image_row_id": 4, "verdict": "accepted", "labels": []}, headers=bearer(keys, "operator"))
    answer = httpx.get(f"{url}/api/export", params={"format": "yolo"}, headers=bearer(keys, "operator"))
    assert (answer.status_code, answer.headers["content-type"]) == (200, "application/zip")
    names = zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    assert names and all(name.startswith("dataset/") for name in names)


# --- the operator in a browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield launched
        finally:
            launched.close()


def test_the_live_page_updates_the_node_table_as_the_runtime_reports(browser, tmp_path):
    answer = {"router": {"policy": "aivd", "decisions": 1, "nodes": []}}
    db_url = f"sqlite:///{tmp_path / 'aivd.sqlite'}"
    with serving(fake_runtime(answer)) as runtime_url, Access.from_db(db_url) as access, \
            serving(build_console_app(db_url, access, runtime_url=runtime_url, runtime_key="aivd_runtime_key")) as url:
        page = browser.new_page()
        page.goto(f"{url}/")
        assert page.inner_text("[data-live=nodes]").strip() == "none reported"
        answer["router"] = {"policy": "aivd", "decisions": 9, "nodes": NODES}
        page.wait_for_function("() => document.querySelectorAll('[data-live=nodes] tr').length === 2", timeout=5000)
        cells = [row.locator("td").all_inner_texts() for row in page.locator("[data-live=nodes] tr").all()]
        assert cells == NODE_CELLS
        assert json.loads(page.inner_text("[data-live=runtime]")) == {"policy": "aivd", "decisions": 9}
        page.close()


def feed(db_url: str, stop: threading.Event) -> None:
    """A run in progress: a record every 0.2 s until stopped."""
    with ResultStore(db_url) as store:
        run_id = store.start_run("aivd watch line-a", {})
        index = 0
        while not stop.wait(0.2):
            store.add(run_id, sample_record(SAMPLE_IMAGES[index % len(SAMPLE_IMAGES)], index))
            index += 1


def test_an_operator_signs_in_filters_reviews_exports_promotes_and_watches_the_line(console, browser, tmp_path):
    url, db_url, _ = console
    requested = []
    page = browser.new_page(accept_downloads=True)
    page.on("request", lambda request: requested.append(request.url))
    # Signed out, a page sends the browser to sign in, and back after.
    page.goto(f"{url}/images")
    page.wait_for_url("**/login?next=*")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", PASSWORD)
    page.click("form.aivd-login button[type=submit]")
    page.wait_for_url(f"{url}/images")
    assert "ann (admin)" in page.inner_text("header")

    # Filter the images: only run 2's images with a short circuit.
    page.fill("input[name=run_id]", "2")
    page.select_option("select[name=defect_type]", "short")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/images?*")
    rows = page.locator("#images tbody tr")
    assert rows.count() > 0
    for row in rows.all():
        assert row.locator("td").nth(1).inner_text() == "2" and "short" in row.locator("td").nth(5).inner_text()

    # Open one: its boxes in layers that switch off and on.
    rows.first.locator("td a").first.click()
    page.wait_for_selector("#boxes .layer-cloud rect")
    assert page.locator("#boxes .layer-edge").first.is_visible()
    page.uncheck("input[data-layer=edge]")
    assert not page.locator("#boxes .layer-edge").first.is_visible() and page.locator("#boxes .layer-cloud").first.is_visible()
    page.wait_for_function("() => [...document.querySelectorAll('img.crop')].every(crop => crop.complete && crop.naturalWidth > 0)")

    # Review six images: accept one (one key), mark one good, correct a class, redraw a box, delete a box and add a
    # missed one, accept another.
    with ResultStore(db_url) as store, store.engine.connect() as connection:
        before = connection.execute(select(reviews.c.id)).all()
    page.goto(f"{url}/review?run_id=2")  # run 2: the API tests above review images of run 1
    status = page.locator("#review-status")

    def shown_image() -> int:
        page.wait_for_function("() => /^(Saved image \\d+ as \\w+\\. )?Image \\d+/.test(document.querySelector('#review-status').textContent)")
        return int(status.inner_text().split("Image ")[-1].split(" ")[0])

    def save(keys: list[str]) -> int:
        image = shown_image()
        for key in keys:
            page.keyboard.press(key)
        page.wait_for_function(f"() => document.querySelector('#review-status').textContent.includes('Saved image {image} ')")
        return image

    accepted = save(["a"])
    good = save(["g"])
    page.wait_for_selector("#review-svg rect")
    classes = [item.split(" ", 1)[1] for item in page.locator("#review-classes span").all_inner_texts()]  # the number keys
    relabelled = save(["Tab", "2", "Enter"])
    page.wait_for_selector("#review-svg rect")
    redrawn = shown_image()
    page.keyboard.press("Tab")

    def drag(left, top, right, bottom):  # fractions of the picture
        svg = page.locator("#review-svg").bounding_box()
        page.mouse.move(svg["x"] + svg["width"] * left, svg["y"] + svg["height"] * top)
        page.mouse.down()
        page.mouse.move(svg["x"] + svg["width"] * right, svg["y"] + svg["height"] * bottom, steps=5)
        page.mouse.up()

    drag(0.10, 0.10, 0.30, 0.25)
    assert save(["Enter"]) == redrawn
    page.wait_for_selector("#review-svg rect")
    fixed = shown_image()
    machine_boxes = page.locator("#review-svg rect").count()
    page.keyboard.press("Tab")
    page.keyboard.press("Delete")  # a false alarm
    drag(0.50, 0.50, 0.60, 0.55)  # nothing selected: a defect the machine missed
    assert save(["Enter"]) == fixed
    last = save(["a"])
    with ResultStore(db_url) as store, store.engine.connect() as connection:
        saved = {row.image_row_id: row for row in connection.execute(select(reviews).where(reviews.c.id > max((r.id for r in before), default=0)))}
    assert set(saved) == {accepted, good, relabelled, redrawn, fixed, last}
    assert saved[accepted].verdict == "accepted" and saved[last].verdict == "accepted"
    assert (saved[good].verdict, json.loads(saved[good].labels)) == ("good", [])
    assert saved[relabelled].verdict == "corrected" and json.loads(saved[relabelled].labels)[0]["defect_type"] == classes[1]
    box = json.loads(saved[redrawn].labels)[0]["bbox"]
    assert saved[redrawn].verdict == "corrected" and box == pytest.approx([64, 64, 192, 160], abs=4)  # 10%..30%, 10%..25% of 640
    kept = json.loads(saved[fixed].labels)
    assert saved[fixed].verdict == "corrected" and len(kept) == machine_boxes
    assert kept[-1]["defect_id"] is None and kept[-1]["bbox"] == pytest.approx([320, 320, 384, 352], abs=4)

    # Export the reviewed images.
    with page.expect_download() as download:
        page.click("#export-yolo")
    exported = tmp_path / "export.zip"
    download.value.save_as(exported)
    assert zipfile.ZipFile(exported).namelist()

    # Promote the older model version, as an admin; the page shows it served, and the history says so.
    page.goto(f"{url}/models")
    assert page.inner_text("#current") == "v0002"
    forged = page.request.post(f"{url}/models/promote", form={"version": "v0002"})  # the session's cookie, no CSRF token
    assert forged.status == 403
    page.click("button[data-promote=v0001]")
    page.wait_for_url(f"{url}/models")
    assert page.inner_text("#current") == "v0001"
    assert "promote" in page.inner_text("#history tbody tr:first-child")
    page.goto(f"{url}/audit")
    assert [cell.strip() for cell in page.locator("#audit tbody tr:first-child td").all_inner_texts()[1:4]] == ["ann", "promote", "model:v0001"]

    # Watch a run in progress: the live view shows each new record within 2 s, without reloading the page.
    page.goto(f"{url}/")
    stop = threading.Event()
    writer = threading.Thread(target=feed, args=(db_url, stop))
    writer.start()
    try:
        for _ in range(3):
            shown = page.inner_text("[data-live=last_inspected_at]")
            page.wait_for_function(f"() => document.querySelector('[data-live=last_inspected_at]').textContent !== {json.dumps(shown)}",
                                   timeout=2000)
        assert int(page.inner_text("[data-live=images]")) > 0
    finally:
        stop.set()
        writer.join()
    assert all(request.startswith(url) for request in requested), [r for r in requested if not r.startswith(url)]
    page.close()


# Last in this module: the fuzzer stores reviews of any image, which the browser's review queue would then miss.
def test_the_console_api_answers_as_its_openapi_document_says(console):
    url, _, keys = console
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = fuzz(schema, bearer(keys, "admin"))
    assert "GET /api/images" in operations and "POST /api/reviews" in operations and "GET /api/export" in operations
