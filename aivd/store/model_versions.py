"""Versioned edge models in a folder: what the online update publishes and edge workers load.

Layout under `root`:

    versions/v0001/deeppcb_centernet.onnx, deeppcb_refiner.onnx, version.json   # one folder per version
    CURRENT                                                                      # the version edge workers serve
    history.jsonl                                                                # every promotion and rollback

A version is immutable once published. `promote` and `rollback` replace CURRENT atomically (write, then
rename), so a worker polling it (`aivd.edge.hot_swap.HotSwapDetector`) sees either the old or the new version,
never half a file. A folder on a shared file system serves a whole cluster.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path


class ModelStoreError(ValueError):
    """A version that does not exist or cannot be published; the message says which and why."""


class ModelStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / "version.json").is_file())

    def info(self, version: str) -> dict:
        path = self.versions_dir / version / "version.json"
        if not path.is_file():
            raise ModelStoreError(f"{self.root}: no version {version!r} (have {', '.join(self.versions()) or 'none'})")
        return json.loads(path.read_text())

    def detector_path(self, version: str) -> Path:
        return self.versions_dir / version / self.info(version)["detector"]

    def current(self) -> str | None:
        path = self.root / "CURRENT"
        return path.read_text().strip() if path.is_file() else None

    def publish(self, detector: Path, companions: list[Path] = (), parent: str | None = None, metrics: dict | None = None) -> str:
        """Copy a detector ONNX (and files it refers to, such as its refiner) into a new version; not served yet."""
        for path in (detector, *companions):
            if not Path(path).is_file():
                raise ModelStoreError(f"cannot publish {path}: no such file")
        existing = self.versions()
        version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
        folder = self.versions_dir / version
        staging = self.versions_dir / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for path in (detector, *companions):
            shutil.copy2(path, staging / Path(path).name)
        info = {"version": version, "detector": Path(detector).name, "parent": parent, "metrics": metrics or {},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (staging / "version.json").write_text(json.dumps(info, indent=2))
        staging.rename(folder)
        return version

    def promote(self, version: str, reason: str = "") -> None:
        self.info(version)  # raises for an unknown version
        self._set_current(version, "promote", reason)

    def rollback(self, reason: str = "") -> str:
        """Serve the current version's parent again; returns it."""
        current = self.current()
        parent = self.info(current)["parent"] if current else None
        if parent is None:
            raise ModelStoreError(f"{self.root}: version {current} has no parent to roll back to")
        self._set_current(parent, "rollback", reason)
        return parent

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def _set_current(self, version: str, action: str, reason: str) -> None:
        previous = self.current()
        temporary = self.root / f".CURRENT.{os.getpid()}"
        temporary.write_text(version + "\n")
        os.replace(temporary, self.root / "CURRENT")
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "action": action,
                 "version": version, "previous": previous, "reason": reason}
        with (self.root / "history.jsonl").open("a") as history:
            history.write(json.dumps(entry) + "\n")
