"""Versioned edge models in a folder: what the online update publishes and edge workers load.

Layout under `root`:

    versions/v0001/deeppcb_centernet.onnx, deeppcb_refiner.onnx, version.json   # one folder per version
    versions/.staging-*/                                                         # publishes in progress
    CURRENT                                                                      # the version edge workers serve
    history.jsonl                                                                # every promotion and rollback

A version is immutable once published, and complete once its version.json exists: that file is written last,
atomically, so a folder without it (a publish in progress, or one that was killed) is never listed nor served.
Several processes, on several hosts sharing the folder, may publish at once (see `publish`). `promote` and
`rollback` replace CURRENT atomically (write, then rename), so a worker polling it
(`aivd.edge.hot_swap.HotSwapDetector`) sees either the old or the new version, never half a file.

Every version name read from outside (an argument, CURRENT, a parent field) must be `vNNNN` of a complete
version, and a version's detector a plain file name in its folder: nothing the store serves lies outside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from aivd.core.errors import AivdError

VERSION_NAME = re.compile(r"v[0-9]{4,}")
STAGING_PREFIX = ".staging-"
# A staging folder untouched this long belongs to a publisher that died; a live one adds a file at least every
# few minutes (the time to copy one model).
STALE_STAGING_S = 24 * 3600


class ModelStoreError(AivdError, ValueError):
    """A version that does not exist, cannot be published or would reach outside the store; the message says
    which and why."""


class ModelStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[str]:
        """The complete versions, oldest first."""
        return sorted((path.name for path in self._version_folders() if (path / "version.json").is_file()), key=_number)

    def info(self, version: str) -> dict:
        """The version.json of `version`; refuses a name that is not a complete version of this store."""
        if not isinstance(version, str) or not VERSION_NAME.fullmatch(version):
            raise ModelStoreError(f"{self.root}: {version!r} is not a version name (v0001, v0002, ...)")
        path = self.versions_dir / version / "version.json"
        if not path.is_file():
            raise ModelStoreError(f"{self.root}: no version {version!r} (have {', '.join(self.versions()) or 'none'})")
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ModelStoreError(f"{path}: unreadable ({error})") from None
        if not isinstance(info, dict):
            raise ModelStoreError(f"{path}: not a JSON object")
        return info

    def detector_path(self, version: str) -> Path:
        """The detector file of `version`, which must be a file name inside the version's own folder."""
        folder = self.versions_dir / version
        name = self.info(version).get("detector")
        if not (isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and not {"\\", "\0"} & set(name)
                # A link inside the folder that points elsewhere is refused as well: publish copies files, never links.
                and (folder / name).resolve().parent == folder.resolve()):
            raise ModelStoreError(f"{folder / 'version.json'}: detector {name!r} is not a file name inside {folder}")
        return folder / name

    def current(self) -> str | None:
        path = self.root / "CURRENT"
        return path.read_text().strip() if path.is_file() else None

    def publish(self, detector: Path, companions: Sequence[Path] = (), parent: str | None = None, metrics: dict | None = None) -> str:
        """Copy a detector ONNX (and files it refers to, such as its refiner) into a new version; not served yet.

        Safe to run in several processes at once, also on several hosts sharing the store: the files are copied
        into a staging folder of this publisher's own (a unique name from mkdtemp), then a version number is
        claimed with `os.mkdir` of its folder, which exactly one publisher wins on any POSIX file system, NFS
        included; a loser tries the next number. A lock file with `flock` would also serialise the claim, but
        flock is not honoured by every shared file system (it is host-local on some NFS and FUSE mounts), and a
        claim by mkdir needs nothing released when a publisher dies. The files are moved in and version.json is
        written last, so a publish killed at any moment leaves at most an unlisted folder that later publishes
        skip; stale staging folders are removed by the next publish once old (`STALE_STAGING_S`).
        """
        sources = [Path(path) for path in (detector, *companions)]
        for path in sources:
            if not path.is_file():
                raise ModelStoreError(f"cannot publish {path}: no such file")
        if parent is not None:
            self.info(parent)  # a parent must be a complete version of this store
        self._remove_stale_staging()
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.versions_dir))
            try:
                for path in sources:
                    shutil.copy2(path, staging / path.name)
                folder = self._claim_version_folder()
                for path in staging.iterdir():
                    os.replace(path, folder / path.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            info = {"version": folder.name, "detector": sources[0].name, "parent": parent, "metrics": metrics or {},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            _write_atomically(folder / "version.json", json.dumps(info, indent=2))
        except OSError as error:  # a full disk, no permission: one line, not a traceback
            raise ModelStoreError(f"{self.root}: cannot publish {detector}: {error.strerror or error}") from None
        return folder.name

    def promote(self, version: str, reason: str = "") -> None:
        self.info(version)  # raises for a name that is not a complete version
        self._set_current(version, "promote", reason)

    def rollback(self, reason: str = "") -> str:
        """Serve the current version's parent again; returns it."""
        current = self.current()
        parent = self.info(current)["parent"] if current else None
        if parent is None:
            raise ModelStoreError(f"{self.root}: version {current} has no parent to roll back to")
        self.info(parent)  # the parent field is read from a file: it must name a complete version too
        self._set_current(parent, "rollback", reason)
        return parent

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def _version_folders(self) -> list[Path]:
        """Every folder named like a version, complete or not."""
        return [path for path in self.versions_dir.iterdir() if VERSION_NAME.fullmatch(path.name)]

    def _claim_version_folder(self) -> Path:
        """A new, empty version folder that this publisher alone created (see `publish`)."""
        number = max(map(_number, (path.name for path in self._version_folders())), default=0) + 1
        while True:
            folder = self.versions_dir / f"v{number:04d}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:  # another publisher claimed it first
                number += 1

    def _remove_stale_staging(self) -> None:
        deadline = time.time() - STALE_STAGING_S
        for path in self.versions_dir.glob(f"{STAGING_PREFIX}*"):
            try:
                if path.stat().st_mtime < deadline:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:  # another publisher removed it first
                pass

    def _set_current(self, version: str, action: str, reason: str) -> None:
        previous = self.current()
        _write_atomically(self.root / "CURRENT", version + "\n")
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "action": action,
                 "version": version, "previous": previous, "reason": reason}
        with (self.root / "history.jsonl").open("a") as history:
            history.write(json.dumps(entry) + "\n")


def _number(version: str) -> int:
    return int(version[1:])


def _write_atomically(path: Path, text: str) -> None:
    """Write a file of a unique name next to `path`, flush it to disk, and rename it over `path`: a reader sees
    the old or the new content, never part of it, also after a crash. (Not mkstemp: its files are private to
    their owner, and edge workers may read the store as another user.)"""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with temporary.open("x") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
