"""Evaluation: the official DeepPCB protocol, per-class metrics and diagnostic reports."""
