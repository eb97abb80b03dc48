"""aivd: edge-cloud visual inspection for industrial defects."""

__version__ = "0.1.0"
