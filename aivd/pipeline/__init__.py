"""Inspection pipeline: inputs -> edge detection -> records, annotated images and result files."""
