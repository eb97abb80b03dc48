"""Reading and validating inspection images.

Every failure is an `ImageError` whose message names the file and the reason, so a run can record it
and go on with the next image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# OpenCV prints its own multi-line decoder errors to stderr; we report one clear line per file instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class ImageError(ValueError):
    """An input image that cannot be inspected; str() is a one-line, user-facing reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class ImageLimits:
    """What the detector accepts. Defaults fit line-scan PCB tiles; larger boards should be tiled first."""

    min_side: int = 32
    max_side: int = 8192


def _looks_truncated(data: bytes) -> bool:
    # libjpeg decodes a truncated JPEG into a grey-filled image with only a warning, so check the
    # end-of-image marker ourselves. Some writers pad after it, hence the window.
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def decode_gray(data: bytes, path: str | Path, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode image bytes into a 2-D uint8 array, rejecting anything the detector cannot use."""
    if len(data) == 0:
        raise ImageError(path, "empty file (0 bytes)")
    if _looks_truncated(data):
        raise ImageError(path, "truncated image file (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(path, "not a decodable image (JPEG, PNG, BMP or TIFF expected)")
    if image.dtype != np.uint8:
        raise ImageError(path, f"unsupported bit depth {image.dtype} (8-bit images expected)")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise ImageError(path, f"unsupported channel count {channels} (1, 3 or 4 expected)")
    height, width = image.shape
    if min(height, width) < limits.min_side or max(height, width) > limits.max_side:
        raise ImageError(
            path, f"unsupported size {width}x{height} (each side must be {limits.min_side}..{limits.max_side} px)"
        )
    return np.ascontiguousarray(image)


def read_gray(path: str | Path, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Read an image file as 2-D uint8 grey levels, or raise `ImageError` saying why not."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror or error})") from None
    return decode_gray(data, path, limits)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels, or raise `ImageError` saying why not.

    Loading a data set reads every image's size to check its boxes; decoding them all would take minutes.
    """
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise ImageError(path, "image file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageError(path, "not a readable image (JPEG, PNG, BMP or TIFF expected)") from None
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror or error})") from None


def read_pair(
    test_path: str | Path, template_path: str | Path | None, limits: ImageLimits = ImageLimits()
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a test image and its optional aligned template; their sizes must match."""
    test = read_gray(test_path, limits)
    if template_path is None:
        return test, None
    try:
        template = read_gray(template_path, limits)
    except ImageError as error:
        raise ImageError(test_path, f"template {error.path}: {error.reason}") from None
    check_pair(test, template, test_path, template_path)
    return test, template


def check_pair(test: np.ndarray, template: np.ndarray, test_path: str | Path, template_path: str | Path) -> None:
    """An aligned template must have the image's size."""
    if template.shape != test.shape:
        raise ImageError(
            test_path,
            f"template {template_path} is {template.shape[1]}x{template.shape[0]} "
            f"but the image is {test.shape[1]}x{test.shape[0]} (an aligned template of the same size is required)",
        )
