"""Inspection results in a relational database: one row per run, per image, per defect and per timed stage.

SQLAlchemy Core with portable types only, so the same code writes the default SQLite file and a shared
PostgreSQL server (`postgresql+psycopg://...`, with psycopg 3 from the `postgres` extra). Lists and the pydantic
measurements are stored as JSON text rather than native JSON columns for the same reason. The tables below are
the schema's newest revision; aivd.store.migrate brings a database to it (tests/test_store_migrations.py checks
that the two agree).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Self

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import SQLAlchemyError

from aivd.core.redaction import redact_url
from aivd.schema.records import DefectRecord, InspectionRecord
from aivd.store.errors import StoreError
from aivd.store.migrate import SchemaUpgrade, upgrade

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),  # null: the run stopped before finish_run
    Column("status", String(16)),  # running, finished or interrupted (null in databases older than the column)
    Column("command", Text, nullable=False),
    Column("config", Text, nullable=False),
    Column("images", Integer),
    Column("ok", Integer),
    Column("failed", Integer),
    Column("defects", Integer),
)

images = Table(
    "images", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False, index=True),
    Column("image_id", String(255), nullable=False),
    Column("image", Text, nullable=False),
    Column("template", Text),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("detector", String(255)),
    Column("analyzer", String(255)),
    Column("cloud_error", Text),
    Column("bytes_to_cloud", BigInteger, nullable=False),
    Column("bytes_from_cloud", BigInteger, nullable=False),
    Column("inspected_at", DateTime(timezone=True)),  # when the record was stored (null in databases older than 0006)
    # Whether the run's drift monitor was in its drift state when the image was inspected: null without a learner
    # (and in rows older than 0008), false while it saw no drift.
    Column("drifted", Boolean),
    # The review queue's priority (aivd.store.priority), set as the row is written; null for an image that failed.
    Column("priority", Float),
    Index("images_inspected_at", "inspected_at"),
)
# The review queue's order, highest priority first and ties to the older image, over all images and within a run:
# the queue walks one of them and stops after its page (aivd.review.store.ReviewStore.queue).
Index("images_queue", images.c.priority.desc(), images.c.id)
Index("images_run_queue", images.c.run_id, images.c.priority.desc(), images.c.id)

defects = Table(
    "defects", metadata,
    Column("id", Integer, primary_key=True),
    Column("image_row_id", Integer, ForeignKey("images.id"), nullable=False),
    Column("rejected", Boolean, nullable=False),  # an edge candidate the cloud judged not to be a defect
    Column("x1", Float, nullable=False),
    Column("y1", Float, nullable=False),
    Column("x2", Float, nullable=False),
    Column("y2", Float, nullable=False),
    Column("defect_type", String(64), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("source", String(255), nullable=False),
    Column("edge_type", String(64)),
    Column("edge_confidence", Float),
    Column("severity", String(16)),
    Column("likely_causes", Text, nullable=False),
    Column("description", Text),
    Column("recommended_action", Text),
    Column("measurements", Text),
    Column("offload", Text),  # JSON: whether the region went to the cloud and why (null in older databases)
    # Two covering indexes, so that the console's filters and the review queue read index entries, never rows, over
    # a million defects (docs/BENCHMARKS.md, "Console under load"). The first answers "does image N have a defect
    # matching ..." (SQLite's correlated EXISTS, PostgreSQL's merge semi-join) and groups per image for the queue;
    # it is also the index for joining on image_row_id. The second finds the defects of a class, severity and
    # confidence range first (PostgreSQL's hash semi-join for a selective filter) and lists the classes.
    Index("defects_image_filter", "image_row_id", "rejected", "defect_type", "severity", "confidence", "edge_type", "source"),
    Index("defects_class_filter", "defect_type", "severity", "confidence", "rejected", "image_row_id"),
)

# `aivd watch`'s journal (aivd.intake.watch): each file that landed in the watched folder, by path, size and
# modification time (a file rewritten later is a new entry), queued when it is taken in hand and done in the
# transaction that adds its record (image_row_id), so a record exists exactly when its entry is done.
intake_files = Table(
    "intake_files", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("image_id", String(255), nullable=False),
    Column("state", String(8), nullable=False),  # queued or done
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("image_row_id", Integer, ForeignKey("images.id")),  # the record, once done
    UniqueConstraint("run_id", "path", "size", "mtime_ns"),
    Index("intake_files_state", "run_id", "state"),
    Index("intake_files_image", "run_id", "image_id"),
)

# The cloud service's API keys (aivd.auth.keys): looked up by key_id, the secret kept only as its argon2 hash.
api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),
    Column("secret_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),  # viewer, operator or admin
    Column("label", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),  # null while the key is valid
)

# Console accounts (aivd.auth): a user signs in with a password kept only as its argon2 hash, and has one role of
# aivd.auth.keys.ROLES; a disabled user can no longer sign in.
users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled_at", DateTime(timezone=True)),
)

# Signed-in console sessions, kept server-side so that signing out or disabling a user ends them at once: the
# cookie carries a random token, the table only its SHA-256, with the session's CSRF token for its forms.
sessions = Table(
    "sessions", metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Human reviews of inspected images. A review never changes the machine's rows in `defects`: it is a labelling of
# the whole image of its own, and an image's newest review is its human label. `labels` is JSON, a list of
# {"bbox": [x1, y1, x2, y2], "defect_type": NAME, "defect_id": the machine's defect it keeps or corrects, or null
# for a box the reviewer added}; verdict is accepted (the machine's answer as it was), corrected, or good (no defect).
reviews = Table(
    "reviews", metadata,
    Column("id", Integer, primary_key=True),
    Column("image_row_id", Integer, ForeignKey("images.id"), nullable=False, index=True),
    Column("reviewer", String(255), nullable=False),  # a username, or whoever a program labelled for
    Column("reviewed_at", DateTime(timezone=True), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("labels", Text, nullable=False),
    Column("note", Text),
)

# Who did what to the system and when: sign-ins (failed ones too), label changes, promotions and rollbacks, keys
# and users made or revoked. `detail` is JSON and never holds a secret.
audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(255), nullable=False),
    Column("action", String(32), nullable=False, index=True),
    Column("target", Text),
    Column("detail", Text),
    Column("remote_addr", String(64)),
)

# The primary key starts with image_row_id, so it is also the index for joining on that foreign key.
timings = Table(
    "timings", metadata,
    Column("image_row_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("stage", String(64), primary_key=True),
    Column("ms", Float, nullable=False),
)

_IMAGE_FIELDS = ("image_id", "image", "template", "status", "error", "detector", "analyzer", "cloud_error", "bytes_to_cloud", "bytes_from_cloud")
_DEFECT_FIELDS = ("defect_type", "confidence", "source", "edge_type", "edge_confidence", "severity", "description", "recommended_action")
_SUMMARY_FIELDS = ("images", "ok", "failed", "defects")
RUN_STATUSES = ("running", "finished", "interrupted")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _inserted_id(result: CursorResult) -> int:
    """The id a one-row INSERT gave its row."""
    key = result.inserted_primary_key
    assert key is not None  # None only for statements other than a one-row INSERT
    return key[0]


@dataclass(frozen=True)
class IntakeEntry:
    """A file in `aivd watch`'s journal, queued to be inspected."""

    id: int
    path: str
    image_id: str


@dataclass(frozen=True)
class StoredRun:
    id: int
    command: str
    config: dict
    status: str | None
    finished_at: datetime | None
    images: int | None  # the images the run recorded when it was last finished or interrupted


def _sqlite_settings(dbapi_connection, _connection_record) -> None:
    """WAL with synchronous=NORMAL: a commit is a write to the log, no fsync (0.03 ms per record measured here,
    against 2.7 ms with synchronous=FULL), and it survives the process being killed; only a power cut or an OS
    crash can lose the last commits, each whole, and a resumed run redoes those images."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _defect_row(defect: DefectRecord, rejected: bool) -> dict:
    data = defect.model_dump(mode="json")
    x1, y1, x2, y2 = data["bbox"]
    return {
        "rejected": rejected, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
        **{name: data[name] for name in _DEFECT_FIELDS},
        "likely_causes": json.dumps(data["likely_causes"]),
        "measurements": json.dumps(data["measurements"]) if data["measurements"] is not None else None,
        "offload": json.dumps(data["offload"]) if data["offload"] is not None else None,
    }


def _defect_record(row) -> DefectRecord:
    return DefectRecord(
        bbox=(row.x1, row.y1, row.x2, row.y2),
        **{name: getattr(row, name) for name in _DEFECT_FIELDS},
        likely_causes=json.loads(row.likely_causes),
        measurements=json.loads(row.measurements) if row.measurements is not None else None,
        offload=json.loads(row.offload) if row.offload is not None else None,
    )


class ResultStore:
    """Appends inspection runs to the database at a SQLAlchemy URL, e.g. `sqlite:///out/aivd.sqlite`.

    Each `add` is one transaction: once it returns, the record is in the database whole, and a killed process
    never leaves part of one. Each call takes its own connection from the engine's pool, so threads may share a
    store (`aivd watch` journals files on one while records are added on another); records added from several
    threads are stored in the order their transactions commit.
    """

    def __init__(self, url: str):
        self._closed = False
        self.url = redact_url(url)  # for messages, which are printed and may be logged: no password
        with self.errors("open"):
            self._engine = create_engine(url)
            if self._engine.dialect.name == "sqlite":
                event.listen(self._engine, "connect", _sqlite_settings)
            # The first connection: an unwritable file or an unreachable server fails here.
            self.schema: SchemaUpgrade = upgrade(self._engine, self.url)

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Database failures, from a bad URL to a lost connection, as one StoreError saying what failed."""
        try:
            yield
        except ImportError as error:  # SQLAlchemy imports the driver a URL names only when the engine is made
            raise StoreError(f"cannot {action} the result database {self.url}: its driver is not installed ({error})") from error
        except SQLAlchemyError as error:
            reason = getattr(error, "orig", None) or error
            raise StoreError(f"cannot {action} the result database {self.url}: {reason}") from error

    @property
    def engine(self) -> Engine:
        """The database's engine, for modules that keep their own tables in it (aivd.auth.keys)."""
        return self._engine

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start_run(self, command: str, config: dict) -> int:
        """A new run's id; `config` is stored as JSON, with values JSON lacks (paths) as their text."""
        with self.errors("write"), self._engine.begin() as connection:
            result = connection.execute(runs.insert().values(
                started_at=_now(), status="running", command=command, config=json.dumps(config, default=str)))
            return _inserted_id(result)

    def run(self, run_id: int) -> StoredRun:
        """Run `run_id` as stored; StoreError when the database has no such run."""
        with self.errors("read"), self._engine.connect() as connection:
            row = connection.execute(select(runs).where(runs.c.id == run_id)).one_or_none()
        if row is None:
            raise StoreError(f"the result database {self.url} has no run {run_id}")
        return StoredRun(row.id, row.command, json.loads(row.config), row.status, row.finished_at, row.images)

    def reopen_run(self, run_id: int) -> None:
        """Mark a stopped run as running again, to go on adding records to it."""
        with self.errors("write"), self._engine.begin() as connection:
            connection.execute(update(runs).where(runs.c.id == run_id).values(status="running", finished_at=None))

    def add(self, run_id: int, record: InspectionRecord, intake_id: int | None = None, drifted: bool | None = None) -> int:
        """Write one record (its image, defects and timings) in one transaction and return its image row's id; with
        `intake_id`, the same transaction marks that journal entry done, and a record for an entry done already is
        refused whole. `drifted`: whether the run's drift monitor was in its drift state (None without a learner).
        The same transaction scores the image for the review queue."""
        from aivd.store.priority import score_images  # that module builds on this one's tables

        image_row = {"run_id": run_id, "inspected_at": _now(), "drifted": drifted, **{name: getattr(record, name) for name in _IMAGE_FIELDS}}
        with self.errors("write"), self._engine.begin() as connection:
            row_id = _inserted_id(connection.execute(images.insert(), image_row))
            if intake_id is not None:
                marked = connection.execute(
                    update(intake_files)
                    .where(intake_files.c.id == intake_id, intake_files.c.run_id == run_id, intake_files.c.state == "queued")
                    .values(state="done", image_row_id=row_id))
                if marked.rowcount != 1:  # raised inside the transaction: the record is rolled back with it
                    raise StoreError(f"journal entry {intake_id} of run {run_id} is not queued: its image was recorded already")
            defect_rows = [{"image_row_id": row_id, **_defect_row(d, rejected=False)} for d in record.defects]
            defect_rows += [{"image_row_id": row_id, **_defect_row(d, rejected=True)} for d in record.rejected]
            timing_rows = [{"image_row_id": row_id, "stage": stage, "ms": ms} for stage, ms in record.timings_ms.items()]
            if defect_rows:
                connection.execute(defects.insert(), defect_rows)
            if timing_rows:
                connection.execute(timings.insert(), timing_rows)
            score_images(connection, images.c.id == row_id)
        return row_id

    def queue_intake(self, run_id: int, path: str, size: int, mtime_ns: int, image_id: str) -> IntakeEntry | None:
        """Journal the file at `path` with this size and modification time as queued, under `image_id` (or, when
        the run has that id already, `image_id-N` with the entry's number N). None when the run has journalled
        this file already, queued or done."""
        key = (intake_files.c.run_id == run_id, intake_files.c.path == path, intake_files.c.size == size,
               intake_files.c.mtime_ns == mtime_ns)
        with self.errors("write"), self._engine.begin() as connection:
            if connection.execute(select(intake_files.c.id).where(*key)).first() is not None:
                return None
            entry_id = _inserted_id(connection.execute(intake_files.insert().values(
                run_id=run_id, path=path, size=size, mtime_ns=mtime_ns, image_id=image_id, state="queued", queued_at=_now(),
            )))
            # A run's image ids must be unique (a resumed run skips the ids it has done, and they name output files):
            # a rewritten file, or `a/x.jpg` beside `a-x.jpg`, takes the entry's number.
            unique, suffix = image_id, 0
            while connection.execute(select(intake_files.c.id).where(
                    intake_files.c.run_id == run_id, intake_files.c.image_id == unique, intake_files.c.id != entry_id)).first():
                suffix += 1
                unique = f"{image_id}-{entry_id}" + (f"-{suffix}" if suffix > 1 else "")
            if unique != image_id:
                connection.execute(update(intake_files).where(intake_files.c.id == entry_id).values(image_id=unique))
        return IntakeEntry(entry_id, path, unique)

    def queued_intake(self, run_id: int) -> list[IntakeEntry]:
        """The run's journal entries still queued (taken in hand by a process that stopped), oldest first."""
        query = (select(intake_files.c.id, intake_files.c.path, intake_files.c.image_id)
                 .where(intake_files.c.run_id == run_id, intake_files.c.state == "queued").order_by(intake_files.c.id))
        with self.errors("read"), self._engine.connect() as connection:
            return [IntakeEntry(row.id, row.path, row.image_id) for row in connection.execute(query)]

    def intake_counts(self, run_id: int) -> dict[str, int]:
        """The run's journal entries per state."""
        query = (select(intake_files.c.state, func.count().label("entries"))
                 .where(intake_files.c.run_id == run_id).group_by(intake_files.c.state))
        with self.errors("read"), self._engine.connect() as connection:
            return {row.state: row.entries for row in connection.execute(query)}  # not row.count: a Row is a tuple

    def finish_run(self, run_id: int, summary: dict, status: str = "finished") -> None:
        """Record the run's end, how it ended (finished or interrupted) and its totals (images, ok, failed, defects
        in `summary`)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        totals = {name: summary[name] for name in _SUMMARY_FIELDS if name in summary}
        with self.errors("write"), self._engine.begin() as connection:
            connection.execute(update(runs).where(runs.c.id == run_id).values(finished_at=_now(), status=status, **totals))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def defect_counts(self, run_id: int) -> dict[str, int]:
        """Reported defects (not the rejected candidates) of a run per class, most frequent first."""
        count = func.count().label("count")
        query = (
            select(defects.c.defect_type, count)
            .join(images, defects.c.image_row_id == images.c.id)
            .where(images.c.run_id == run_id, defects.c.rejected.is_(False))
            .group_by(defects.c.defect_type)
            .order_by(count.desc(), defects.c.defect_type)
        )
        with self.errors("read"), self._engine.connect() as connection:
            return {defect_type: number for defect_type, number in connection.execute(query)}

    def records(self, run_id: int) -> list[InspectionRecord]:
        """A run's records as they were added, in the order they were added."""
        in_run = images.c.run_id == run_id
        with self.errors("read"), self._engine.connect() as connection:
            image_rows = connection.execute(select(images).where(in_run).order_by(images.c.id)).all()
            defect_rows = connection.execute(
                select(defects).join(images, defects.c.image_row_id == images.c.id).where(in_run).order_by(defects.c.id)).all()
            timing_rows = connection.execute(
                select(timings).join(images, timings.c.image_row_id == images.c.id).where(in_run)).all()
        found: dict[int, list[DefectRecord]] = {row.id: [] for row in image_rows}
        rejected: dict[int, list[DefectRecord]] = {row.id: [] for row in image_rows}
        for row in defect_rows:
            (rejected if row.rejected else found)[row.image_row_id].append(_defect_record(row))
        stages: dict[int, dict[str, float]] = {row.id: {} for row in image_rows}
        for row in timing_rows:
            stages[row.image_row_id][row.stage] = row.ms
        return [
            InspectionRecord(
                **{name: getattr(row, name) for name in _IMAGE_FIELDS},
                defects=found[row.id], rejected=rejected[row.id], timings_ms=stages[row.id],
            )
            for row in image_rows
        ]


class StoreBacked:
    """Base of the classes that keep tables of their own in the result database at a SQLAlchemy URL (API keys,
    users, sessions, the audit log, reviews): each opens a ResultStore, which brings the schema up to date, and is a
    context manager that closes it."""

    def __init__(self, url: str) -> None:
        self._store = ResultStore(url)
        self.url = self._store.url

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._store.close()
