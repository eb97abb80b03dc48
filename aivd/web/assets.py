"""What self-contained HTML pages embed: pictures as data URIs, so a report is one file that opens offline."""

from __future__ import annotations

import base64

import cv2
import numpy as np


def jpeg_data_uri(image: np.ndarray, max_side: int, quality: int = 85) -> str:
    """`image` (BGR or grey) as a JPEG data URI, shrunk to at most `max_side` pixels; "" if it cannot be encoded."""
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode() if ok else ""
