"""A result database as large as a factory line fills it, for the console's load benchmark (`aivd bench console`).

`seed_console_db` writes N inspected images with about ten candidate regions each, in the shape `ResultStore.add`
gives them: several runs on several lines, each served by a model version of its own; DeepPCB's classes;
edge-only and cloud-decided defects (then with a severity, causes, text and measurements); the offload note of
every region; rejected candidates; per-stage timings; a few failed images and cloud errors; human reviews of a
share of the images; and inspected_at spread over days up to `end`. Everything but `end` follows from `seed`.

It writes with SQLAlchemy Core executemany in large batches, one transaction per batch, not `ResultStore.add`
per image: 100,000 images and a million defects take a few minutes on SQLite instead of an hour. Rows carry
explicit ids so that a batch needs no RETURNING; PostgreSQL's id sequences are moved past them afterwards, so
that records added later by `ResultStore.add` get fresh ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, make_url

from aivd.core.labels import DEEPPCB_CLASSES
from aivd.store import ResultStore
from aivd.store.database import defects, images, reviews, runs, timings
from aivd.store.priority import score_images

if TYPE_CHECKING:
    from aivd.bench.console_locustfile import Scope  # imports locust, which patches the standard library for gevent

IMAGES_PER_RUN = 10_000
LINES = ("line-1", "line-2", "line-3")
CLOUD = "cloud:classifier"
CAUSES = {  # a short, fixed vocabulary per class, as the cloud analyzers answer it
    "open": ["over-etching", "scratch during handling"],
    "short": ["under-etching", "dust on the phototool"],
    "mousebite": ["over-etching", "drill wander"],
    "spur": ["under-etching", "resist residue"],
    "copper": ["resist defect", "incomplete stripping"],
    "pin-hole": ["plating void", "contaminated laminate"],
}
ACTIONS = {"critical": "Scrap or repair the board; check the etch line.", "major": "Hold the board for review.",
           "minor": "Record the defect and watch the trend."}
OFFLOAD_REASONS = ("hard", "easy", "audit", "below_proposal_threshold")
VERDICTS = ("accepted", "corrected", "good")
REVIEWERS = ("alice", "bob", "chen")


@dataclass(frozen=True)
class Seeded:
    """What a database holds after seeding: its totals, and the first and last image id `seed_console_db` wrote."""

    images: int
    defects: int
    first_image_id: int
    last_image_id: int


def database_counts(url: str) -> tuple[int, int]:
    """How many images and defects the database at `url` holds (its schema brought up to date first)."""
    with ResultStore(url) as store, store.errors("read"), store.engine.connect() as connection:
        return (connection.execute(select(func.count()).select_from(images)).scalar_one(),
                connection.execute(select(func.count()).select_from(defects)).scalar_one())


def _next_id(connection: Connection, table) -> int:
    return (connection.execute(select(func.max(table.c.id))).scalar() or 0) + 1


def _run_rows(first_run: int, count: int, first_image: int, n_images: int, start: datetime, span: timedelta) -> list[dict]:
    """Runs one after another over the time span, each on a line with a model version; the last one still running."""
    rows = []
    for r in range(count):
        lo, hi = first_image + r * n_images // count, first_image + (r + 1) * n_images // count
        line = LINES[r % len(LINES)]
        running = r == count - 1
        rows.append({
            "id": first_run + r, "started_at": start + span * (r / count), "status": "running" if running else "finished",
            "finished_at": None if running else start + span * ((r + 1) / count),
            "command": f"aivd watch /lines/{line}/incoming --db DB", "config": json.dumps({"pipeline": "yolo:pcb+cloud:classifier", "classes": list(DEEPPCB_CLASSES.names), "line": line}),
            "images": None if running else hi - lo, "ok": None, "failed": None, "defects": None,
        })
    return rows


def _image_rows(rng: np.random.Generator, ids: np.ndarray, run_of: np.ndarray, times: list[datetime]) -> tuple[list[dict], np.ndarray]:
    """A batch of image rows, and which of them failed."""
    n = len(ids)
    failed = rng.random(n) < 0.01
    cloud_error = ~failed & (rng.random(n) < 0.02)
    sent = rng.integers(2_000, 60_000, n)
    rows = []
    for i in range(n):
        run, line = int(run_of[i]), LINES[int(run_of[i]) % len(LINES)]
        day = times[i].strftime("%Y-%m-%d")
        rows.append({
            "id": int(ids[i]), "run_id": run, "image_id": f"{line}-{int(ids[i]):08d}",
            "image": f"/lines/{line}/{day}/{int(ids[i]):08d}_test.jpg", "template": f"/lines/{line}/templates/board-{int(ids[i]) % 7}.jpg",
            "status": "error" if failed[i] else "ok", "error": "cannot read the image: truncated JPEG" if failed[i] else None,
            "detector": f"yolo:pcb@{1 + run // 3:06d}", "analyzer": "classifier",
            "cloud_error": "cloud service timed out after 5.0 s" if cloud_error[i] else None,
            "bytes_to_cloud": 0 if failed[i] else int(sent[i]), "bytes_from_cloud": 0 if failed[i] else int(sent[i]) // 20,
            "inspected_at": times[i],
        })
    return rows, failed


def _defect_rows(rng: np.random.Generator, first_id: int, image_ids: np.ndarray, per_image: np.ndarray) -> list[dict]:
    """Candidate regions for images `image_ids`, `per_image` of each: boxes, classes, both tiers' answers, offload notes."""
    n = int(per_image.sum())
    owner = np.repeat(image_ids, per_image)
    x1, y1 = rng.uniform(0, 600, n), rng.uniform(0, 600, n)
    w, h = rng.uniform(4, 40, n), rng.uniform(4, 40, n)
    classes = rng.integers(0, len(DEEPPCB_CLASSES), n)
    edge_classes = np.where(rng.random(n) < 0.85, classes, rng.integers(0, len(DEEPPCB_CLASSES), n))
    edge_conf = rng.beta(5, 2, n)
    uncertainty = 1 - np.abs(2 * edge_conf - 1)
    below = edge_conf < 0.3  # kept at the edge under the proposal threshold
    to_cloud = ~below & ((uncertainty > 0.5) | (rng.random(n) < 0.05))
    rejected = below | (to_cloud & (rng.random(n) < 0.15))
    cloud_conf = rng.beta(8, 2, n)
    severity = rng.choice(("critical", "major", "minor"), n, p=(0.2, 0.5, 0.3))
    contrast = rng.normal(0, 60, n)
    rows = []
    for i in range(n):
        name = DEEPPCB_CLASSES.names[classes[i]]
        cloud = bool(to_cloud[i])
        reason = ("below_proposal_threshold" if below[i] else "hard" if uncertainty[i] > 0.5 else "audit" if cloud else "easy")
        measurements = {"width_px": round(float(w[i]), 1), "height_px": round(float(h[i]), 1),
                        "area_px": round(float(w[i] * h[i]), 1), "contrast": round(float(contrast[i]), 1)}
        rows.append({
            "id": first_id + i, "image_row_id": int(owner[i]), "rejected": bool(rejected[i]),
            "x1": float(x1[i]), "y1": float(y1[i]), "x2": float(x1[i] + w[i]), "y2": float(y1[i] + h[i]),
            "defect_type": name if cloud else DEEPPCB_CLASSES.names[edge_classes[i]],
            "confidence": float(cloud_conf[i] if cloud else edge_conf[i]),
            "source": CLOUD if cloud else "edge",
            "edge_type": DEEPPCB_CLASSES.names[edge_classes[i]] if cloud else None,
            "edge_confidence": float(edge_conf[i]) if cloud else None,
            "severity": str(severity[i]) if cloud else None,
            "likely_causes": json.dumps(CAUSES[name] if cloud else []),
            "description": f"{name.capitalize()} defect, {w[i]:.0f} x {h[i]:.0f} px." if cloud else None,
            "recommended_action": ACTIONS[str(severity[i])] if cloud else None,
            "measurements": json.dumps(measurements) if cloud else None,
            "offload": json.dumps({"sent": cloud, "reason": reason,
                                   "uncertainty": None if below[i] else round(float(uncertainty[i]), 4),
                                   "cutoff": None if below[i] else 0.5}),
        })
    return rows


def _timing_rows(rng: np.random.Generator, image_ids: np.ndarray) -> list[dict]:
    n = len(image_ids)
    read, detect, analyze = rng.lognormal(1.0, 0.3, n), rng.lognormal(3.0, 0.25, n), rng.lognormal(4.5, 0.5, n)
    rows = []
    for i in range(n):
        stages = {"read": read[i], "detect": detect[i], "analyze": analyze[i], "total": read[i] + detect[i] + analyze[i]}
        rows += [{"image_row_id": int(image_ids[i]), "stage": stage, "ms": round(float(ms), 3)} for stage, ms in stages.items()]
    return rows


def _review_rows(rng: np.random.Generator, first_id: int, image_ids: np.ndarray, times: np.ndarray, review_share: float) -> list[dict]:
    """Reviews of a share of the images, an hour or so after each was inspected. Labels name no machine defect
    (defect_id null): what the console shows of a review does not depend on them, and it keeps the seeding simple."""
    chosen = np.flatnonzero(rng.random(len(image_ids)) < review_share)
    verdicts = rng.choice(VERDICTS, len(chosen), p=(0.7, 0.2, 0.1))
    rows = []
    for k, i in enumerate(chosen):
        verdict = str(verdicts[k])
        labels = [] if verdict == "good" else [{"bbox": [10.0, 12.0, 30.0, 28.0], "defect_type": "open", "defect_id": None}]
        rows.append({"id": first_id + k, "image_row_id": int(image_ids[i]), "reviewer": REVIEWERS[k % len(REVIEWERS)],
                     "reviewed_at": times[i] + timedelta(minutes=float(rng.uniform(5, 120))), "verdict": verdict,
                     "labels": json.dumps(labels), "note": "machine missed a spur" if verdict == "corrected" else None})
    return rows


def seed_console_db(url: str, n_images: int, defects_per_image: float = 10.0, days: float = 7.0, review_share: float = 0.03,
                    seed: int = 0, end: datetime | None = None, batch: int = 5_000,
                    progress: Callable[[int, int], None] | None = None) -> Seeded:
    """Add `n_images` inspected images (about `defects_per_image` candidate regions each, a Poisson count) in
    runs of about 10,000 images, inspected evenly over the `days` before `end` (default: now), to the database at
    `url`, after whatever it holds. `progress` is called with the images written so far and `n_images` after each batch."""
    end = end or datetime.now(timezone.utc)
    span = timedelta(days=days)
    start = end - span
    rng = np.random.default_rng(seed)
    with ResultStore(url) as store, store.errors("write"):
        engine = store.engine
        with engine.begin() as connection:
            first_run, first_image = _next_id(connection, runs), _next_id(connection, images)
            next_defect, next_review = _next_id(connection, defects), _next_id(connection, reviews)
            run_count = max(1, round(n_images / IMAGES_PER_RUN))
            connection.execute(runs.insert(), _run_rows(first_run, run_count, first_image, n_images, start, span))
        # Inspection times rise with the id, as ResultStore.add stamps them, with some jitter between neighbours.
        offsets = np.sort(rng.uniform(0, span.total_seconds(), n_images))
        for lo in range(0, n_images, batch):
            hi = min(lo + batch, n_images)
            ids = np.arange(first_image + lo, first_image + hi)
            run_of = first_run + (np.arange(lo, hi) * run_count) // n_images
            times = [start + timedelta(seconds=float(s)) for s in offsets[lo:hi]]
            image_rows, failed = _image_rows(rng, ids, run_of, times)
            per_image = np.where(failed, 0, rng.poisson(defects_per_image, hi - lo))
            defect_rows = _defect_rows(rng, next_defect, ids, per_image)
            ok_ids = ids[~failed]
            review_rows = _review_rows(rng, next_review, ok_ids, np.array(times, dtype=object)[~failed], review_share)
            with engine.begin() as connection:
                connection.execute(images.insert(), image_rows)
                connection.execute(defects.insert(), defect_rows)
                connection.execute(timings.insert(), _timing_rows(rng, ok_ids))
                if review_rows:
                    connection.execute(reviews.insert(), review_rows)
                score_images(connection, images.c.id.between(int(ids[0]), int(ids[-1])))  # as ResultStore.add scores each
            next_defect += len(defect_rows)
            next_review += len(review_rows)
            if progress is not None:
                progress(hi, n_images)
        if engine.dialect.name == "postgresql":
            with engine.begin() as connection:
                # Explicit ids leave the SERIAL sequences behind; move them past the rows, or ResultStore.add fails.
                for table in (runs, images, defects, reviews):
                    connection.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), (SELECT max(id) FROM {table.name}))")
            # The tables as autovacuum leaves them after a bulk load (planner statistics, and the visibility map that
            # lets index-only scans skip the rows), which it may do only after the benchmark has begun. VACUUM cannot
            # run in a transaction. SQLite keeps neither and aivd never asks it to gather statistics: it gets nothing.
            with engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    total_images, total_defects = database_counts(url)
    return Seeded(total_images, total_defects, first_image, first_image + n_images - 1)


def load_scope(url: str, seed: int = 0) -> Scope:
    """What the benchmark's users pick from in the database at `url`: see aivd.bench.console_locustfile.Scope."""
    from aivd.bench.console_locustfile import Scope

    with ResultStore(url) as store, store.errors("read"), store.engine.connect() as connection:
        first, last, start, end = connection.execute(
            select(func.min(images.c.id), func.max(images.c.id), func.min(images.c.inspected_at), func.max(images.c.inspected_at))).one()
        run_ids = list(connection.execute(select(runs.c.id).order_by(runs.c.id)).scalars())
        classes = list(connection.execute(select(defects.c.defect_type).distinct().order_by(defects.c.defect_type)).scalars())
        # Sources are path prefixes: the folders two levels above images spread over the whole id range.
        sample = connection.execute(select(images.c.image).where(images.c.id.in_(np.linspace(first, last, 200).astype(int).tolist()))).scalars()
        sources = sorted({str(PurePosixPath(path).parent.parent).rstrip("/") + "/" for path in sample})
    return Scope(first, last, run_ids, classes, sources, start.isoformat(), end.isoformat(), seed)


def _endpoint(entry) -> dict:
    return {"p50_ms": entry.get_response_time_percentile(0.5), "p95_ms": entry.get_response_time_percentile(0.95),
            "requests": entry.num_requests, "failures": entry.num_failures}


def _warm_up(base_url: str, key: str, image_row_id: int) -> None:
    """One request to each kind of page before the users start, as a server that has been up a while has had:
    the key verified once (argon2, then cached), templates compiled, lazy imports done. Without it the first
    second's requests, all verifying the key at once, would measure the start instead of the console."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    for path in ("/", "/images", f"/images/{image_row_id}", "/runs", "/review", "/api/live"):
        httpx.get(base_url + path, headers=headers, timeout=60).raise_for_status()


def bench_console(url: str, n_images: int, users: int = 10, duration_s: float = 60.0, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Seed the database at `url` up to `n_images` images (none when it holds that many already), start
    `aivd serve console` on it, drive it with `users` locust users for `duration_s` seconds and report each
    endpoint's latency. The users sign in with an operator key made for the run and revoked after it; their
    reviews stay in the database (with their audit rows), as a reviewer's would."""
    from aivd.auth.keys import ApiKeys
    from aivd.bench.servers import aivd_server, free_port

    held, _ = database_counts(url)
    if held < n_images:
        seed_console_db(url, n_images - held, seed=seed, progress=progress)
    total_images, total_defects = database_counts(url)
    scope = load_scope(url, seed)
    with ApiKeys(url) as keys:
        key = keys.create("operator", label="aivd bench console")
    port = free_port()
    try:
        with aivd_server(["serve", "console", "--port", str(port)], port, env={"AIVD_DB": url}):
            _warm_up(f"http://127.0.0.1:{port}", key, scope.last_image)
            # locust patches the standard library for gevent when imported: only here, in the benchmark's own process.
            import gevent
            from locust.env import Environment

            from aivd.bench.console_locustfile import ConsoleUser, LiveScreen, Operator, Reviewer

            ConsoleUser.scope, ConsoleUser.key = scope, key
            environment = Environment(user_classes=[LiveScreen, Operator, Reviewer], host=f"http://127.0.0.1:{port}")
            runner = environment.create_local_runner()
            runner.start(users, spawn_rate=users)
            gevent.spawn_later(duration_s, runner.quit)
            runner.greenlet.join()
    finally:
        with ApiKeys(url) as keys:
            keys.revoke(key.split("_", 2)[1])
    stats = environment.stats
    return {
        "images": total_images, "defects": total_defects, "backend": make_url(url).get_backend_name(), "users": users, "duration_s": duration_s,
        "endpoints": {name: _endpoint(entry) for (name, _method), entry in sorted(stats.entries.items())},
        "p95_ms_overall": stats.total.get_response_time_percentile(0.95),
        "requests": stats.total.num_requests, "failures": stats.total.num_failures,
        "errors": {f"{error.method} {error.name}: {error.error}": error.occurrences for error in stats.errors.values()},
    }
