"""Turning what a user points at (files, folders, a DeepPCB split) into inspection tasks.

Problems found here (a missing path, an unreadable folder, a missing template) become failed tasks, not
exceptions, so they are reported and recorded like any other bad input and the run goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from aivd.data.deeppcb import load_split
from aivd.data.images import IMAGE_SUFFIXES


class TemplateMode(str, Enum):
    auto = "auto"  # use the aligned template beside the image when there is one
    require = "require"  # an image without a template is an error
    none = "none"  # ignore templates


TEST_SUFFIX, TEMPLATE_SUFFIX = "_test", "_temp"


@dataclass(frozen=True)
class InspectionTask:
    image_id: str
    image_path: Path
    template_path: Path | None = None
    error: str | None = None  # set when the task is known to fail before any reading


def _template_beside(image: Path) -> Path | None:
    """DeepPCB's convention: NAME_test.EXT is inspected against NAME_temp.EXT in the same folder."""
    if not image.stem.endswith(TEST_SUFFIX):
        return None
    stem = image.stem[: -len(TEST_SUFFIX)]
    for suffix in (image.suffix, *IMAGE_SUFFIXES):
        candidate = image.with_name(stem + TEMPLATE_SUFFIX + suffix)
        if candidate.is_file():
            return candidate
    return None


def _image_id(image: Path) -> str:
    return image.stem[: -len(TEST_SUFFIX)] if image.stem.endswith(TEST_SUFFIX) else image.stem


def _walk(folder: Path) -> tuple[list[Path], list[InspectionTask]]:
    images, failures = [], []

    def on_error(error: OSError) -> None:
        failures.append(InspectionTask(Path(error.filename).name, Path(error.filename), error=f"cannot list folder ({error.strerror})"))

    for directory, subdirs, files in os.walk(folder, onerror=on_error):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            # Templates are inputs to their test image, not images to inspect.
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(TEMPLATE_SUFFIX):
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
            found = None if template_mode is TemplateMode.none else (template or _template_beside(image))
            error = None
            if found is None and template_mode is TemplateMode.require:
                error = f"no aligned template found (expected {_image_id(image)}{TEMPLATE_SUFFIX}{image.suffix} beside it or --template)"
            tasks.append(InspectionTask(_image_id(image), image, found, error))
    return _with_unique_ids(tasks)


def tasks_from_deeppcb(root: Path, split: str) -> list[InspectionTask]:
    """One task per sample of an official DeepPCB split; DeepPCB always has templates, so a missing one is an error."""
    tasks = []
    for sample in load_split(root, split):
        error = None if sample.template_path.is_file() else f"template {sample.template_path} not found"
        tasks.append(InspectionTask(sample.image_id, sample.test_path, sample.template_path, error))
    return tasks
