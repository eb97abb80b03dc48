"""`aivd models`: the versioned edge-model store that online updates publish to and edge workers follow."""

from __future__ import annotations

import json
from pathlib import Path

import typer

models_app = typer.Typer(help="Versioned edge models: list, publish, promote, roll back (docs/collab.md).")

STORE = typer.Option(..., "--store", help="The model-store folder (what `model_store` in a cluster config names).")


def _store(path: Path, create: bool = False):
    from aivd.cli.ui import fail
    from aivd.model_store import ModelStore

    if not create and not (path / "versions").is_dir():
        raise fail(f"{path}: not a model store (no versions/ folder)")
    try:
        return ModelStore(path)
    except OSError as error:  # a file where the folder should be, no permission
        raise fail(f"{path}: cannot use as a model store ({error.strerror or error})") from None


@models_app.command("list")
def list_command(store: Path = STORE) -> None:
    """Every version with its parent and metrics, and which one is served; one JSON object."""
    from aivd.cli.ui import fail
    from aivd.model_store import ModelStoreError

    models = _store(store)
    try:
        versions = [models.info(v) for v in models.versions()]
    except ModelStoreError as error:  # a version.json edited by hand into something unreadable
        raise fail(str(error)) from None
    print(json.dumps({"current": models.current(), "versions": versions, "history": models.history()}))


@models_app.command("publish")
def publish_command(
    detector: Path = typer.Argument(..., help="A model pack folder (`aivd train pack`), or a built-in detector ONNX (its refiner, if its metadata names one, is taken along)."),
    store: Path = STORE,
    parent: str = typer.Option(None, help="The version it derives from. Default: none."),
    promote: bool = typer.Option(False, "--promote", help="Serve it at once."),
) -> None:
    """Add a pack's edge detector (with every file of the pack) or a detector as a new version (checked to load
    first); prints the version."""
    from aivd.cli.ui import fail
    from aivd.edge.detector import ModelError, TemplateDetector
    from aivd.model_store import ModelStoreError
    from aivd.packs import PackError, load_pack

    try:
        companions = []
        if detector.is_dir():
            pack = load_pack(detector)
            pack.load_detector()  # refuse a pack whose detectors do not load
            pack_detector = pack.template_detector or pack.image_detector
            assert pack_detector is not None  # load_pack refuses a pack without one
            detector = pack_detector
            companions = [path for path in sorted(pack.root.iterdir()) if path.is_file() and path != detector]
        loaded = TemplateDetector(detector, threads=1)
        if loaded.refiner_path and loaded.refiner_path not in companions:
            companions.append(loaded.refiner_path)
        models = _store(store, create=True)
        version = models.publish(detector, companions, parent=parent)
        if promote:
            models.promote(version, "aivd models publish --promote")
    except (ModelError, ModelStoreError, PackError) as error:
        raise fail(str(error)) from None
    print(version)


@models_app.command("promote")
def promote_command(version: str = typer.Argument(...), store: Path = STORE,
                    reason: str = typer.Option("", help="Recorded in the store's history.")) -> None:
    """Serve VERSION: edge workers following the store swap to it from their next image."""
    from aivd.cli.ui import fail
    from aivd.model_store import ModelStoreError

    try:
        _store(store).promote(version, reason or "aivd models promote")
    except ModelStoreError as error:
        raise fail(str(error)) from None
    print(version)


@models_app.command("rollback")
def rollback_command(store: Path = STORE, reason: str = typer.Option("", help="Recorded in the store's history.")) -> None:
    """Serve the current version's parent again; prints it."""
    from aivd.cli.ui import fail
    from aivd.model_store import ModelStoreError

    try:
        print(_store(store).rollback(reason or "aivd models rollback"))
    except ModelStoreError as error:
        raise fail(str(error)) from None
