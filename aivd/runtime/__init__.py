"""Distributed runtime on Ray Serve: edge detectors and cloud analyzers as replicas, the scheduling policies as
a custom request router. Only this package and `aivd.cli` import Ray."""
