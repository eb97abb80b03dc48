"""The HTTP API of the cloud analysis service, as pydantic models: they are its documentation (see /docs).

A region travels as lossless PNG so the crop the cloud analyses is bit-exact with the one the edge cut; base64
costs a third more bytes than raw, which on 60-130 px crops of a few KiB is cheaper than a multipart format.
`decode_region` is the service's input check: every reason a payload cannot be analysed is a `ValueError`
whose message names the region.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aivd.core import Region
from aivd.core.regions import PIXELS_PER_MM_RANGE
from aivd.schema.analysis import DefectAnalysis

MAX_CROP_SIDE = 1024  # cut_regions makes crops of 2.2x the box; DeepPCB's are under 200 px
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COMPRESSION = 6  # zlib's default level: about 8% smaller than OpenCV's default 1 on DeepPCB crops
PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


class RegionPayload(BaseModel):
    """One candidate region as the edge sends it: a crop of the test image, the same window of the template,
    and the edge detector's box and class."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    region_id: str = Field(min_length=1, max_length=256, description="unique within the request, e.g. '<image_id>#<index>'")
    image_png: str = Field(description="the crop: base64 of an 8-bit grayscale PNG")
    template_png: str | None = Field(None, description="the same window of the aligned template, same encoding and size; null if none")
    box: tuple[float, float, float, float] = Field(description="the candidate box x1, y1, x2, y2 in crop pixels, inside the crop")
    origin: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] = Field(
        description="x, y of the crop's top-left corner in the full image")
    edge_class: str = Field(min_length=1, max_length=64, description="the class the edge detector gave the box")
    edge_confidence: float = Field(ge=0, le=1, description="the edge detector's score")
    pixels_per_mm: float | None = Field(None, gt=PIXELS_PER_MM_RANGE[0], lt=PIXELS_PER_MM_RANGE[1],
                                         description="the imaging scale, when known; enables sizes in mm")


class AnalyzeRequest(BaseModel):
    """A batch of regions, usually those of one image; the service analyses them in one backend call."""

    model_config = ConfigDict(extra="forbid")

    regions: list[RegionPayload] = Field(description="the regions to analyse; the answer keeps this order")


class TimingsMs(BaseModel):
    decode: float = Field(description="milliseconds spent decoding and checking the PNGs")
    analyze: float = Field(description="milliseconds spent in the analyzer")


class AnalyzeResponse(BaseModel):
    analyzer: str = Field(description="the name of the backend that answered")
    analyses: list[DefectAnalysis] = Field(description="one analysis per region, in request order")
    timings_ms: TimingsMs


class PublicLimits(BaseModel):
    """The limits a client must keep to in one request, as `GET /healthz` tells them."""

    max_body_bytes: int = Field(gt=0)
    max_regions: int = Field(gt=0)
    max_crop_side: int = Field(gt=0)
    max_pixels: int = Field(gt=0, description="crop and template pixels together")


class Health(BaseModel):
    status: str = Field(description="'ok' whenever the service answers")
    analyzer: str = Field(description="the backend's name")
    proposal_threshold: float | None = Field(description="the edge proposal threshold the analyzer was calibrated for, if any")
    limits: PublicLimits


class ErrorResponse(BaseModel):
    """Every error the service answers: one line saying what was wrong, naming the region when there is one."""

    detail: str


def encode_png(image: np.ndarray) -> str:
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} {image.shape} array as PNG")
    return base64.b64encode(buffer.tobytes()).decode("ascii")


def encode_region(region: Region) -> RegionPayload:
    return RegionPayload(
        region_id=region.region_id,
        image_png=encode_png(region.image),
        template_png=None if region.template is None else encode_png(region.template),
        box=region.box, origin=region.origin, edge_class=region.edge_class,
        edge_confidence=region.edge_confidence, pixels_per_mm=region.pixels_per_mm,
    )


PNG_HEAD_BASE64 = 44  # base64 characters that hold the first 33 bytes: signature, IHDR length and type, IHDR data


def png_size(text: str, what: str, max_side: int) -> tuple[int, int]:
    """The width and height a base64 PNG declares, from its first 44 characters alone, after checking that it is
    an 8-bit grayscale PNG within `max_side`: a few hundred bytes of PNG can declare a gigapixel image, so sizes
    are known, and budgets checked, before anything is decoded. OpenCV would also convert colour or 16-bit
    images silently instead of refusing them."""
    try:
        head = base64.b64decode(text[:PNG_HEAD_BASE64], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{what} is not a PNG image")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    bit_depth, color_type = head[24], head[25]
    if bit_depth != 8 or color_type != 0:
        kind = PNG_COLOR_TYPES.get(color_type, f"color type {color_type}")
        raise ValueError(f"{what} must be an 8-bit grayscale PNG, got {bit_depth}-bit {kind}")
    if not (0 < width <= max_side and 0 < height <= max_side):
        raise ValueError(f"{what} is {width}x{height} px; each side must be 1..{max_side} px")
    return width, height


def payload_pixels(payload: RegionPayload, max_side: int = MAX_CROP_SIDE) -> int:
    """Pixels the region's crop and template declare: the measure of the work it asks for."""
    name = f"region {payload.region_id}"
    width, height = png_size(payload.image_png, f"{name}: image_png", max_side)
    if payload.template_png is None:
        return width * height
    t_width, t_height = png_size(payload.template_png, f"{name}: template_png", max_side)
    return width * height + t_width * t_height


def decode_png(text: str, what: str, max_side: int) -> np.ndarray:
    """Decode base64 PNG text into a 2-D uint8 array; `what` names the field in error messages."""
    png_size(text, what, max_side)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{what} is a corrupt or truncated PNG")
    return image


def decode_region(payload: RegionPayload, max_side: int = MAX_CROP_SIDE) -> Region:
    """The `Region` a payload describes, or a `ValueError` naming the region and what is wrong with it."""
    name = f"region {payload.region_id}"
    image = decode_png(payload.image_png, f"{name}: image_png", max_side)
    template = None if payload.template_png is None else decode_png(payload.template_png, f"{name}: template_png", max_side)
    if template is not None and template.shape != image.shape:
        raise ValueError(
            f"{name}: template_png is {template.shape[1]}x{template.shape[0]} px but image_png is {image.shape[1]}x{image.shape[0]} px")
    x1, y1, x2, y2 = payload.box
    height, width = image.shape
    if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
        raise ValueError(f"{name}: box {list(payload.box)} is not inside the {width}x{height} px crop (need 0 <= x1 <= x2 <= width, 0 <= y1 <= y2 <= height)")
    return Region(
        region_id=payload.region_id, image=image, template=template, box=payload.box, origin=payload.origin,
        edge_class=payload.edge_class, edge_confidence=payload.edge_confidence, pixels_per_mm=payload.pixels_per_mm,
    )
