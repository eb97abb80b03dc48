"""Turning what a user points at (files, folders, a DeepPCB split) into inspection tasks.

Problems found here (a missing path, an unreadable folder, a missing template) become failed tasks, not
exceptions, so they are reported and recorded like any other bad input and the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from aivd.data.deeppcb import DeepPCBSource
from aivd.data.images import IMAGE_SUFFIXES
from aivd.data.templates import TEMPLATE_SUFFIX, TemplateMode, image_id_of, template_beside


@dataclass(frozen=True)
class InspectionTask:
    image_id: str
    image_path: Path | str  # what the record names: a file, or a frame of a video or stream (aivd.intake.video)
    template_path: Path | None = None
    error: str | None = None  # set when the task is known to fail before any reading
    # A frame already in memory (a video's or a stream's), as grey levels: inspected without an image file.
    frame: Callable[[], np.ndarray] | None = None
    # `aivd watch`: the journal entry (aivd.intake.watch) that this task's record marks done, in its transaction.
    intake_id: int | None = None


def is_image_to_inspect(path: Path) -> bool:
    """An image file found in a folder is inspected unless it is a template: those are inputs to their test image."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(TEMPLATE_SUFFIX)


def _walk(folder: Path) -> tuple[list[Path], list[InspectionTask]]:
    images, failures = [], []

    def on_error(error: OSError) -> None:
        failures.append(InspectionTask(Path(error.filename).name, Path(error.filename), error=f"cannot list folder ({error.strerror})"))

    for directory, subdirs, files in os.walk(folder, onerror=on_error):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            if is_image_to_inspect(path):
                images.append(path)
    return images, failures


def _with_unique_ids(tasks: list[InspectionTask]) -> list[InspectionTask]:
    """Image ids name output files (annotated/ID.jpg), so `a/x.jpg` and `b/x.jpg` must not both be `x`:
    a repeated id gets `-2`, `-3`, ... in input order, which is stable."""
    taken: set[str] = set()
    unique = []
    for task in tasks:
        image_id, count = task.image_id, 1
        while image_id in taken:
            count += 1
            image_id = f"{task.image_id}-{count}"
        taken.add(image_id)
        unique.append(task if image_id == task.image_id else replace(task, image_id=image_id))
    return unique


def tasks_from_paths(paths: list[Path], template_mode: TemplateMode = TemplateMode.auto, template: Path | None = None) -> list[InspectionTask]:
    """Tasks for files and folders (searched recursively for image files), in a stable order.

    `template` is one aligned template for every image (a single board design); otherwise templates are found
    beside images by the `_test`/`_temp` naming convention.
    """
    tasks: list[InspectionTask] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            images, failures = _walk(path)
            tasks.extend(failures)
        elif path.exists() or path.is_symlink():
            images = [path]
        else:
            tasks.append(InspectionTask(path.name, path, error="no such file or folder"))
            continue
        for image in images:
            tasks.append(InspectionTask(image_id_of(image), image, *template_for(image, template_mode, template)))
    return _with_unique_ids(tasks)


def template_for(image: Path, template_mode: TemplateMode, template: Path | None) -> tuple[Path | None, str | None]:
    """The aligned template of `image` (`template` for all images, else one found beside it by the naming
    convention), and the error of an image that `TemplateMode.require`s one and has none."""
    found = None if template_mode is TemplateMode.none else (template or template_beside(image))
    if found is None and template_mode is TemplateMode.require:
        return None, f"no aligned template found (expected {image_id_of(image)}{TEMPLATE_SUFFIX}{image.suffix} beside it or --template)"
    return found, None


def tasks_from_deeppcb(root: Path, split: str) -> list[InspectionTask]:
    """One task per sample of an official DeepPCB split, in list order, then one failed task per sample the split
    could not use (DeepPCB always has templates, so a missing one is such a problem)."""
    loaded = DeepPCBSource(root).split(split)
    tasks = [InspectionTask(sample.image_id, sample.image_path, sample.template_path) for sample in loaded.samples]
    return tasks + [InspectionTask(image_id_of(Path(p.path)), Path(p.path), error=p.message) for p in loaded.problems]
