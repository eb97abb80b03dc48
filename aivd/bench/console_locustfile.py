"""Locust users of the operator console (`aivd serve console`), for `aivd bench console`.

Three kinds of user, as a plant has them:
- `LiveScreen`: a screen on the line showing the live page, which polls /api/live every second (as console.js does);
- `Operator`: a person browsing: the live page, the image list with a few random filters (class, severity,
  confidence, run, source, time window, status, reviewed), deep pages of it (a random `after`), single images as
  page and JSON, the runs;
- `Reviewer`: a person working through the review queue as review.js does: the queue (50 at a time), then per
  image its JSON, a second or three of looking, and an accepting POST /api/reviews (a real write, with its audit row).
All send `Authorization: Bearer KEY`. What they pick from (image ids, runs, classes, sources, the time span) is
the database's `Scope`: `aivd bench console` sets `ConsoleUser.scope` itself; run standalone,
`locust -f aivd/bench/console_locustfile.py --host URL` reads it from $AIVD_BENCH_SCOPE (`Scope.to_json`) and the
key from $AIVD_BENCH_KEY. Each user draws from a random generator seeded by `Scope.seed` and its own number.
Requests are named by route (`name=`), so locust's statistics have one line per endpoint.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from locust import HttpUser, between, constant_pacing, task

SEVERITIES = ("critical", "major", "minor")
LIVE_POLL_S = 1.0  # the live page's refresh (aivd/console/static/console.js)
QUEUE_PAGE = 50  # what review.js asks the queue for


@dataclass(frozen=True)
class Scope:
    """What the users choose their requests from: the database's image id range, run ids, classes, image path
    prefixes and the span of inspection times (ISO 8601), and the seed of their choices."""

    first_image: int
    last_image: int
    runs: list[int]
    classes: list[str]
    sources: list[str]
    start: str
    end: str
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Scope:
        text = os.environ.get("AIVD_BENCH_SCOPE")
        if not text:
            raise RuntimeError("set AIVD_BENCH_SCOPE (and AIVD_BENCH_KEY), or run this through `aivd bench console`")
        return cls(**json.loads(text))


_user_numbers = itertools.count()


class ConsoleUser(HttpUser):
    abstract = True
    scope: Scope | None = None  # set by `aivd bench console`; None: from the environment
    key: str | None = None

    def on_start(self) -> None:
        self.scope = self.scope or Scope.from_env()
        key = self.key or os.environ.get("AIVD_BENCH_KEY")
        if not key:
            raise RuntimeError("set AIVD_BENCH_KEY to a console API key (aivd keys create --role operator)")
        self.client.headers["Authorization"] = f"Bearer {key}"
        self.rng = random.Random(self.scope.seed * 1_000_003 + next(_user_numbers))

    def get(self, path: str, name: str, **params):
        return self.client.get(path, params=params or None, name=name, timeout=60)


class LiveScreen(ConsoleUser):
    weight = 1
    wait_time = constant_pacing(LIVE_POLL_S)

    @task
    def live(self) -> None:
        self.get("/api/live", "/api/live")


class Operator(ConsoleUser):
    weight = 2
    wait_time = between(0.5, 2.0)

    def filters(self) -> dict:
        """A few filters at random, as a person sets them in the form; often none."""
        rng, scope = self.rng, self.scope
        assert scope is not None
        chosen: dict = {}
        if rng.random() < 0.3:
            chosen["defect_type"] = rng.choice(scope.classes)
        if rng.random() < 0.2:
            chosen["severity"] = rng.choice(SEVERITIES)
        if rng.random() < 0.2:
            chosen["min_confidence"] = round(rng.uniform(0.5, 0.95), 2)
        elif rng.random() < 0.1:
            chosen["max_confidence"] = round(rng.uniform(0.3, 0.6), 2)  # the uncertain ones
        if rng.random() < 0.2:
            chosen["run_id"] = rng.choice(scope.runs)
        if rng.random() < 0.2:
            chosen["source"] = rng.choice(scope.sources)
        if rng.random() < 0.2:  # one day of the span
            start, end = datetime.fromisoformat(scope.start), datetime.fromisoformat(scope.end)
            since = start + (end - start) * rng.random()
            chosen["since"], chosen["until"] = since.isoformat(), (since + timedelta(days=1)).isoformat()
        if rng.random() < 0.05:
            chosen["status"] = "error"
        if rng.random() < 0.1:
            chosen["reviewed"] = rng.choice(("true", "false"))
        return chosen

    def image_id(self) -> int:
        assert self.scope is not None
        return self.rng.randint(self.scope.first_image, self.scope.last_image)

    @task(2)
    def live_page(self) -> None:
        self.get("/", "/")

    @task(6)
    def images_page(self) -> None:
        self.get("/images", "/images", **self.filters())

    @task(3)
    def images_page_deep(self) -> None:
        self.get("/images", "/images?after", **self.filters(), after=self.image_id())

    @task(6)
    def images_api(self) -> None:
        params = self.filters()
        if self.rng.random() < 0.5:
            params["after"] = self.image_id()
        self.get("/api/images", "/api/images", **params)

    @task(4)
    def image_page(self) -> None:
        self.get(f"/images/{self.image_id()}", "/images/{id}")

    @task(4)
    def image_api(self) -> None:
        self.get(f"/api/images/{self.image_id()}", "/api/images/{id}")

    @task(1)
    def runs(self) -> None:
        self.get("/runs", "/runs")

    @task(1)
    def runs_api(self) -> None:
        self.get("/api/runs", "/api/runs")



class Reviewer(ConsoleUser):
    weight = 1
    wait_time = between(1.0, 3.0)  # looking at the image; accepting takes one key

    def on_start(self) -> None:
        super().on_start()
        self.get("/review", "/review")
        self.queue: list[int] = []
        self.runs_seen: set[int] = set()

    @task
    def review_next(self) -> None:
        if not self.queue:
            answer = self.get("/api/review/queue", "/api/review/queue", limit=QUEUE_PAGE)
            self.queue = [item["image_row_id"] for item in answer.json()] if answer.ok else []
            if not self.queue:
                return
        image_row_id = self.queue.pop(0)
        answer = self.get(f"/api/images/{image_row_id}", "/api/images/{id}")
        if not answer.ok:
            return
        run_id = answer.json()["run_id"]
        if run_id not in self.runs_seen:  # review.js asks once per run for the classes its keys choose from
            self.runs_seen.add(run_id)
            self.get("/api/classes", "/api/classes", run_id=run_id)
        self.client.post("/api/reviews", json={"image_row_id": image_row_id, "verdict": "accepted", "labels": []},
                         name="POST /api/reviews", timeout=60)
