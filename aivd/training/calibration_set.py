"""The pairs that thresholds are calibrated on: the held-out tenth of trainval, each pair twice.

A pair is used once as it is and once with its template's conductors a pixel thicker or thinner
(`change_thickness`, one seeded draw per pair).

Why the copies. The held-out pairs come from the board groups the models were trained on. There the edge
and the cloud are nearly perfect over a wide range of thresholds: the cloud's F-score is within one defect
from 0.05 to 0.5. The first best threshold was then the lowest one, and the cloud's `no-defect` verdict was
never used. DeepPCB's test split has board groups whose template and test images differ by about a pixel of
conductor thickness (see `change_thickness`). The perturbed copies put that nuisance into the calibration,
so thresholds are chosen where it matters. The test split itself is never used for a choice.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from aivd.core import Detections
from aivd.data.images import ImageError, read_pair
from aivd.training.common import change_thickness

THICKNESS_SEED = 0
PERTURBED_SUFFIX = "~thick"


def calibration_pairs(samples, seed: int = THICKNESS_SEED) -> Iterator[tuple[str, np.ndarray, np.ndarray, Detections]]:
    """(image id, test image, template, ground truth) for each sample and its perturbed copy (id + PERTURBED_SUFFIX).

    A pair that cannot be read raises: a calibration on an incomplete held-out set would be silently wrong.
    """
    rng = np.random.default_rng(seed)
    for sample in samples:
        image, template = read_pair(sample.image_path, sample.template_path)
        if template is None:
            raise ImageError(sample.image_path, "no template: the DeepPCB calibration perturbs each pair's template")
        truth = sample.ground_truth()
        yield sample.image_id, image, template, truth
        yield sample.image_id + PERTURBED_SUFFIX, image, change_thickness(template, rng), truth
