"""Core data types shared by every layer. Nothing here knows about files, HTTP or Ray."""

from aivd.core.detections import Detections
from aivd.core.labels import DEEPPCB_CLASSES, LabelMap
from aivd.core.regions import Region, cut_regions

__all__ = ["Detections", "LabelMap", "DEEPPCB_CLASSES", "Region", "cut_regions"]
