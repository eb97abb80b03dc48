"""Readers for images and box-annotated data sets, and a synthetic PCB generator."""
