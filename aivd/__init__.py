"""aivd: edge-cloud visual inspection for industrial defects."""

__version__ = "0.2.0"
