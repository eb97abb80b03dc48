"""Annotators: draw detections on images. Separate from models, as in supervision."""
