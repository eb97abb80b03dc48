"""Pairing an image with its aligned defect-free template by name, DeepPCB's convention, for any data set and for
`aivd inspect`: NAME_test.EXT is compared with NAME_temp.EXT (or another image suffix) in the same folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from aivd.data.images import IMAGE_SUFFIXES

TEST_SUFFIX, TEMPLATE_SUFFIX = "_test", "_temp"


class TemplateMode(str, Enum):
    auto = "auto"  # use the aligned template beside the image when there is one
    require = "require"  # an image without a template is an error
    none = "none"  # ignore templates


def template_beside(image: Path) -> Path | None:
    """NAME_temp.* beside NAME_test.EXT (the image's own suffix first), or None."""
    if not image.stem.endswith(TEST_SUFFIX):
        return None
    stem = image.stem[: -len(TEST_SUFFIX)]
    for suffix in (image.suffix, *IMAGE_SUFFIXES):
        candidate = image.with_name(stem + TEMPLATE_SUFFIX + suffix)
        if candidate.is_file():
            return candidate
    return None


def image_id_of(image: Path) -> str:
    """The image's name without its suffix and without `_test`: NAME for NAME_test.jpg, as results are named."""
    return image.stem[: -len(TEST_SUFFIX)] if image.stem.endswith(TEST_SUFFIX) else image.stem


def find_template(image: Path, templates: Path | None = None, split: str | None = None) -> Path | None:
    """The aligned template of `image`: the file of the same name in a templates folder (its SPLIT subfolder first)
    when the data set names one, else NAME_temp beside NAME_test; None when there is none."""
    if templates is not None:
        for folder in ([templates / split] if split else []) + [templates]:
            if (folder / image.name).is_file():
                return folder / image.name
    return template_beside(image)
