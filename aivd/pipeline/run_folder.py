"""The output folder of `aivd inspect`: one run at a time may write it, it names the run it holds, and a new run
clears what an earlier one left there.

- `OUT/.lock` is locked with `flock` while a run writes OUT. The kernel releases the lock when the process ends,
  however it ends, so a killed run never leaves a stale lock behind; the file holds the holder's pid for the
  message a second run prints.
- `OUT/run.json` names the run whose records OUT holds (its id in the database, and the database unless it is
  OUT/aivd.sqlite), so that `aivd inspect --resume OUT` finds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from aivd.core.errors import AivdError
from aivd.core.redaction import MASK, redact_url

LOCK_FILE = ".lock"
MARKER_FILE = "run.json"
DEFAULT_DATABASE_FILE = "aivd.sqlite"
# What a run writes besides results.jsonl, run.json and the database; a new run removes an earlier run's.
RUN_OUTPUTS = ("annotated/*.jpg", "deeppcb/*.txt", "report.html", "summary.json")


class OutputBusy(AivdError, RuntimeError):
    """Another run holds the output folder."""


class ResumeError(AivdError, RuntimeError):
    """The output folder holds no run that can be resumed as asked."""


class OutputLock:
    """The exclusive right to write `out_dir`, held until `release` or the end of the process."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        # Opened for appending, so that a run refused the lock does not truncate the holder's pid.
        self._file = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise OutputBusy(f"{out_dir} is in use by another aivd inspect run (pid {holder})") from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        self._file.close()  # closing the only descriptor of the open file releases the lock


class RunMarker(BaseModel):
    run_id: int
    database: str | None = None  # the database's URL with its password hidden; None: OUT/aivd.sqlite


def default_database(out_dir: Path) -> str:
    return f"sqlite:///{out_dir / DEFAULT_DATABASE_FILE}"


def database_url(out_dir: Path, database: str) -> str:
    """The SQLAlchemy URL of `database` as the --db option gives it: "" is OUT/aivd.sqlite."""
    return database or default_database(out_dir)


def write_marker(out_dir: Path, run_id: int, database: str) -> None:
    """Name run `run_id` in `database` (a --db value) as the run OUT holds; atomic, so never half written."""
    marker = RunMarker(run_id=run_id, database=redact_url(database) if database else None)
    staged = out_dir / f"{MARKER_FILE}.tmp"
    staged.write_text(marker.model_dump_json() + "\n", encoding="utf-8")
    os.replace(staged, out_dir / MARKER_FILE)


def read_marker(out_dir: Path) -> RunMarker:
    path = out_dir / MARKER_FILE
    try:
        return RunMarker.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"{out_dir}: no aivd inspect run to resume (no {MARKER_FILE})") from None
    except (OSError, ValidationError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"not a run marker: {str(error).splitlines()[0]}"
        raise ResumeError(f"{path}: {reason}") from None


def resume_database(out_dir: Path, marker: RunMarker, given: str) -> str:
    """The URL of the database holding the marked run; `given` is the --db value of the resuming command ("" if
    none), needed again only when the run's URL had a password, which the marker does not keep."""
    recorded = marker.database or redact_url(default_database(out_dir))
    if not given:
        if MASK in recorded:
            raise ResumeError(f"{out_dir}: run {marker.run_id} is in the database {recorded}: give its URL again with --db")
        return marker.database or default_database(out_dir)
    if redact_url(given) != recorded:
        raise ResumeError(f"{out_dir}: run {marker.run_id} is in the database {recorded}, not in {redact_url(given)}")
    return given


def held_run(out_dir: Path, given: str):
    """The run OUT holds, as its database stored it (`given`: as for `resume_database`). Raises ResumeError or
    StoreError saying why it cannot be read."""
    from aivd.store import ResultStore

    marker = read_marker(out_dir)
    with ResultStore(resume_database(out_dir, marker, given)) as store:
        return store.run(marker.run_id)


def clear_run_outputs(out_dir: Path) -> None:
    """Remove the marker and the files an earlier run wrote to `out_dir`, which a new run replaces."""
    (out_dir / MARKER_FILE).unlink(missing_ok=True)
    for pattern in RUN_OUTPUTS:
        for path in out_dir.glob(pattern):
            path.unlink()
