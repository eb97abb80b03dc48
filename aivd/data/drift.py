"""Imaging drift for experiments: the same boards seen through a camera that gets worse over time.

A `DriftPhase` says from which image of a stream on, which change applies and how strongly; `drifted` applies the
phase in force to a test image and its template alike (both come from the same camera). Deterministic: the noise
of image i depends only on the seed and i.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DriftKind = Literal["blur", "contrast_noise", "resample"]


class DriftPhase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(ge=0, description="index of the first image of the stream it applies to")
    kind: DriftKind
    strength: float = Field(gt=0, description="blur: Gaussian sigma in px; contrast_noise: noise sigma in grey "
                            "levels (contrast falls to 0.6); resample: the scale the image is reduced to, in (0, 1)")


def degrade(image: np.ndarray, kind: DriftKind, strength: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), strength)
    if kind == "contrast_noise":
        noisy = image.astype(np.float32) * 0.6 + 50.0 + rng.normal(0.0, strength, image.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    if not 0.0 < strength < 1.0:
        raise ValueError(f"resample strength must be in (0, 1), got {strength}")
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, round(width * strength)), max(1, round(height * strength))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def drifted(index: int, image: np.ndarray, template: np.ndarray | None, phases: list[DriftPhase], seed: int = 0):
    """The image pair as the stream's camera sees it at position `index` (unchanged before the first phase)."""
    active = [p for p in phases if p.start <= index]
    if not active:
        return image, template
    phase = max(active, key=lambda p: p.start)
    rng = np.random.default_rng([seed, index])
    return (degrade(image, phase.kind, phase.strength, rng),
            None if template is None else degrade(template, phase.kind, phase.strength, rng))
