"""Benchmarks behind `aivd bench ...`; each returns a JSON-ready dict. Figures live in docs/BENCHMARKS.md."""
