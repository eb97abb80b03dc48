"""What the trainers share: seeding, augmentation helpers and ONNX metadata (the held-out split is
`aivd.data.deeppcb.holdout_split`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import torch

_KERNEL = np.ones((3, 3), np.uint8)



def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def epochs_for_budget(budget_s: float, first_epoch_s: float, max_epochs: int) -> int:
    """How many epochs fit in `budget_s` seconds when the first took `first_epoch_s`: at least 1, at most `max_epochs`."""
    return int(min(max_epochs, max(1, budget_s // max(first_epoch_s, 1e-3))))


def write_metadata(path: Path, values: dict) -> None:
    """Set (or replace) string metadata entries of an ONNX file; non-strings are stored as JSON."""
    import onnx

    model = onnx.load(str(path))
    for key, value in values.items():
        existing = [entry for entry in model.metadata_props if entry.key == key]
        entry = existing[0] if existing else model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def change_thickness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grow or shrink every conductor by one pixel, as a different binarisation threshold does.

    DeepPCB's test split has board groups (12000, 12100, 12300, 90100) that trainval lacks, whose test and
    template images differ in conductor thickness by about a pixel; without this the detector reads every edge
    of such a pair as a defect. Copper is dark, so eroding the image grows copper.
    """
    return cv2.erode(image, _KERNEL) if rng.random() < 0.5 else cv2.dilate(image, _KERNEL)
