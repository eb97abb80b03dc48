"""`aivd data check`: what a data set holds, split by split, and everything wrong with it, before any training.

Loading a split already checks every annotation against its image's header; the check also decodes every image
and template in full, as training will, to find the truncated and undecodable ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aivd.data.dataset import DataProblem, DatasetError, DataSource, DataSplit, Sample
from aivd.data.images import ImageError, read_pair


def _spread(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {"min": None, "median": None, "max": None}
    return {"min": round(float(values.min()), 1), "median": round(float(np.median(values)), 1), "max": round(float(values.max()), 1)}


def summarise(split: DataSplit) -> dict:
    """Counts and box sizes (pixels) of a split's usable samples."""
    truths = [sample.truth for sample in split.samples]
    xyxy = np.concatenate([truth.xyxy for truth in truths]) if truths else np.zeros((0, 4), np.float32)
    class_ids = np.concatenate([truth.class_id for truth in truths]) if truths else np.zeros(0, np.int64)
    counts = np.bincount(class_ids, minlength=len(split.labels))
    return {
        "images": len(split.samples),
        "boxes": int(len(xyxy)),
        "boxes_per_class": {name: int(count) for name, count in zip(split.labels.names, counts)},
        "box_width_px": _spread(xyxy[:, 2] - xyxy[:, 0]),
        "box_height_px": _spread(xyxy[:, 3] - xyxy[:, 1]),
        "images_without_boxes": sum(1 for truth in truths if not len(truth)),
        "templates": sum(1 for sample in split.samples if sample.template_path is not None),
    }


def decodable(split: DataSplit, advance: Callable[[], None] | None = None) -> DataSplit:
    """The split less the samples whose image or template does not decode (or does not match in size), each a problem."""
    kept: list[Sample] = []
    problems = list(split.problems)
    for sample in split.samples:
        try:
            read_pair(sample.image_path, sample.template_path)
        except ImageError as error:
            problems.append(DataProblem(error.path, error.reason))
        else:
            kept.append(sample)
        if advance is not None:
            advance()
    return DataSplit(split.name, split.labels, kept, problems)


def check_data(source: DataSource, on_split: Callable[[DataSplit], Callable[[], None] | None] | None = None) -> dict:
    """The `aivd data check --json` object: format, root, classes, a summary per split and every problem.

    `on_split` is told each split as it is loaded, and may return a callback called after each image decoded
    (a progress bar). A split that cannot be read at all is one problem; the other splits are still checked.
    """
    splits, problems = {}, []
    for name in source.split_names():
        try:
            split = source.split(name)
        except DatasetError as error:
            problems.append(DataProblem(str(source.root), f"split {name} cannot be read: {error}"))
            continue
        split = decodable(split, on_split(split) if on_split else None)
        splits[name] = summarise(split)
        problems += split.problems
    return {
        "format": source.format, "root": str(source.root), "classes": list(source.labels.names), "splits": splits,
        "problems": [{"path": problem.path, "message": problem.message} for problem in problems],
    }
