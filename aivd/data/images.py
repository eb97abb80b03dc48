"""Reading and validating inspection images.

Every failure is an `ImageError` whose message names the file and the reason, so a run can record it
and go on with the next image.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from aivd.core.errors import AivdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# OpenCV prints its own multi-line decoder errors to stderr; we report one clear line per file instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class ImageError(AivdError, ValueError):
    """An input image that cannot be inspected; str() is a one-line, user-facing reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class ImageLimits:
    """What the pipeline accepts. Images larger than the detector's input are detected in tiles
    (`aivd.edge.tiling`); `max_pixels` bounds the memory one image may take (one byte a pixel, grey)."""

    min_side: int = 32
    max_side: int = 16384
    # 150 Mpx (a 12000 x 12000 scan) stays under Pillow's own refusal of headers above about 179 Mpx
    # (2 x Image.MAX_IMAGE_PIXELS), which would otherwise answer for this limit with its own wording.
    max_pixels: int = 150_000_000
    # An image file larger than this is not read at all: a 16384 x 16384 grey TIFF without compression is 256 MiB.
    max_file_bytes: int = 512 * 1024 * 1024

    def size_problem(self, width: int, height: int) -> str | None:
        """Why a `width` x `height` image is refused, or None."""
        if min(width, height) < self.min_side or max(width, height) > self.max_side:
            return f"unsupported size {width}x{height} (each side must be {self.min_side}..{self.max_side} px)"
        if width * height > self.max_pixels:
            return f"unsupported size {width}x{height} ({width * height / 1e6:.0f} megapixels; at most {self.max_pixels / 1e6:.0f} allowed)"
        return None


def _looks_truncated(data: bytes) -> bool:
    # libjpeg decodes a truncated JPEG into a grey-filled image with only a warning, so check the
    # end-of-image marker ourselves. Some writers pad after it, hence the window.
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def _declared_size(data: bytes, path: str | Path, limits: ImageLimits) -> tuple[int, int] | None:
    """The (width, height) the file's header declares, read without decoding the pixels; None if Pillow does
    not know the format (OpenCV then decides, and the decoded size is checked)."""
    try:
        # Pillow warns from about 89 Mpx on; the limits here are ours, and a refusal is one line, not a warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                return header.size
    except Image.DecompressionBombError:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        assert pillow_limit is not None  # Pillow raises this only while its limit is set
        declared = 2 * pillow_limit / 1e6
        raise ImageError(
            path, f"unsupported size (the header declares over {declared:.0f} megapixels; at most {limits.max_pixels / 1e6:.0f} allowed)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        # A format or header Pillow cannot read: OpenCV's decoder gets the last word.
        return None


def decode_gray(data: bytes, path: str | Path, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode image bytes into a 2-D uint8 array, rejecting anything the detector cannot use. The size the
    header declares is checked before decoding, so a few kilobytes declaring a gigapixel are refused unread."""
    if len(data) == 0:
        raise ImageError(path, "empty file (0 bytes)")
    if _looks_truncated(data):
        raise ImageError(path, "truncated image file (no end-of-image marker)")
    declared = _declared_size(data, path, limits)
    if declared is not None and (problem := limits.size_problem(*declared)):
        raise ImageError(path, problem)
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
    if problem := limits.size_problem(width, height):
        raise ImageError(path, problem)
    return np.ascontiguousarray(image)


def _check_regular_file(path: Path, limits: ImageLimits) -> None:
    """Only a regular file of a bounded size is opened: a FIFO would block the run for good, and a link to a
    device such as /dev/zero would be read until memory runs out."""
    try:
        status = os.stat(path)  # follows links: what counts is what would be read
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror or error})") from None
    if stat.S_ISDIR(status.st_mode):
        raise ImageError(path, "is a directory, not an image file")
    if not stat.S_ISREG(status.st_mode):
        raise ImageError(path, "not a regular file (a FIFO, device or socket is never read)")
    if status.st_size > limits.max_file_bytes:
        raise ImageError(path, f"file of {status.st_size / 2**20:.0f} MiB (at most {limits.max_file_bytes / 2**20:.0f} MiB read)")


def read_gray(path: str | Path, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Read an image file as 2-D uint8 grey levels, or raise `ImageError` saying why not."""
    path = Path(path)
    _check_regular_file(path, limits)
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror or error})") from None
    return decode_gray(data, path, limits)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels, or raise `ImageError` saying why not.

    Loading a data set reads every image's size to check its boxes; decoding them all would take minutes.
    """
    _check_regular_file(Path(path), ImageLimits())
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageError(path, "not a readable image (JPEG, PNG, BMP or TIFF expected)") from None
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror or error})") from None


def read_pair(
    test_path: str | Path, template_path: str | Path | None, limits: ImageLimits = ImageLimits()
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a test image and its optional aligned template; their sizes must match."""
    return with_template(read_gray(test_path, limits), test_path, template_path, limits)


def with_template(
    test: np.ndarray, test_path: str | Path, template_path: str | Path | None, limits: ImageLimits = ImageLimits()
) -> tuple[np.ndarray, np.ndarray | None]:
    """A test image already read (from a file or a video frame) with its optional aligned template, read from its
    file; a template problem is the test image's error."""
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
