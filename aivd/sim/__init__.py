"""Discrete-event simulation of the edge-cloud pipeline for comparing scheduling policies."""

from aivd.sim.engine import RunResult, capacity_per_s, simulate
from aivd.sim.scenarios import NODE_CLASSES, SCENARIOS, Scenario, with_load

__all__ = ["NODE_CLASSES", "SCENARIOS", "RunResult", "Scenario", "capacity_per_s", "simulate", "with_load"]
