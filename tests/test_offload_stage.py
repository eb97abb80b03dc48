"""The engine's offloading stage on the bundled DeepPCB samples, with the real models: which regions go to the
cloud, why, what the records and OUT/summary.json say, and what happens when the cloud is unreachable."""

import json
import socket

import numpy as np
import pytest

from aivd.cloud.http_client import HttpAnalyzer
from aivd.config import build_config
from aivd.data.images import read_pair
from aivd.pipeline.demo import SAMPLES
from aivd.pipeline.engine import EdgeCloudPipeline
from aivd.pipeline.factory import build_pipeline
from aivd.pipeline.inputs import TemplateMode, tasks_from_paths
from aivd.pipeline.inspect import InspectOptions, inspect_tasks

TASKS = tasks_from_paths([SAMPLES], TemplateMode.require)


def pipeline_with(proposal_threshold=None, **offload) -> EdgeCloudPipeline:
    config = build_config(overrides={"offload": offload, "cloud": {"proposal_threshold": proposal_threshold}})
    return build_pipeline(config, pixels_per_mm=48.0)


def results(pipeline: EdgeCloudPipeline):
    return [pipeline.run(*read_pair(task.image_path, task.template_path), task.image_id) for task in TASKS]


def regions(result):
    return [*result.defects, *result.rejected]


@pytest.fixture(scope="module")
def edge_only():
    return results(build_pipeline(build_config(overrides={"cloud": {"backend": "none"}}), pixels_per_mm=48.0))


def test_budget_zero_keeps_every_region_at_the_edge_and_finds_what_the_edge_alone_finds(edge_only):
    pipeline = pipeline_with(proposal_threshold=0.02, budget=0.0)  # proposing below the edge's own threshold (0.1)
    kept = results(pipeline)
    for alone, result in zip(edge_only, kept):
        assert np.array_equal(alone.detections.xyxy, result.detections.xyxy)
        assert all(r.offload.sent is False and r.offload.reason == "edge_only" and r.source == "edge" for r in regions(result))
        # Candidates below the edge's threshold are kept for audit as rejected, each saying it stayed at the edge.
        assert all(0.02 <= r.confidence < pipeline.edge_threshold for r in result.rejected)
    assert sum(len(r.rejected) for r in kept) > 0
    assert all(not r.rejected and all(d.offload.reason == "edge_only" for d in r.defects) for r in edge_only)


def test_budget_one_sends_every_region_and_the_cloud_decides_each():
    for result in results(pipeline_with(budget=1.0)):
        assert regions(result) and all(r.offload.sent and r.offload.reason == "send_all" for r in regions(result))
        assert all(r.source == "cloud:builtin" for r in regions(result))
        assert len(result.edge_agrees) == len(regions(result))


def test_a_budget_sends_the_regions_above_the_moving_cutoff_and_says_so():
    pipeline = pipeline_with(budget=0.3, window=40, warmup=5)
    out = results(pipeline)
    notes = [r.offload for result in out for r in regions(result)]
    assert {n.reason for n in notes} <= {"hard", "easy"} and any(n.sent for n in notes) and not all(n.sent for n in notes)
    assert all(n.sent == (n.uncertainty > n.cutoff) for n in notes)
    cutoffs = sorted({n.cutoff for n in notes})
    assert len(cutoffs) > 1  # the cutoff moved with what was seen
    for result in out:  # a sent region is the cloud's decision, a kept one the edge's
        assert all(r.source == ("cloud:builtin" if r.offload.sent else "edge") for r in regions(result))


def test_inspect_writes_the_summary_with_the_offloading_totals(tmp_path):
    summary = inspect_tasks(TASKS, pipeline_with(budget=0.3, window=40, warmup=5), tmp_path, InspectOptions(annotate=False, report=False))
    written = json.loads((tmp_path / "summary.json").read_text())
    for key in ("images", "errors", "candidates", "sent", "offload_ratio", "bytes_to_cloud", "bytes_from_cloud", "model_versions"):
        assert key in written
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    notes = [r["offload"] for record in records for r in record["defects"] + record["rejected"]]
    assert (written["images"], written["errors"], written["candidates"]) == (6, 0, len(notes))
    assert written["sent"] == sum(n["sent"] for n in notes) == summary.sent
    assert written["offload_ratio"] == round(written["sent"] / written["candidates"], 4)
    assert written["model_versions"] == {"pack:deeppcb": 6}
    assert written["bytes_to_cloud"] == 0  # in this process nothing crosses a network


def test_an_unreachable_cloud_leaves_every_region_to_the_edge_with_the_error_recorded(edge_only):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    edge = pipeline_with().detector
    unreachable = EdgeCloudPipeline(edge, HttpAnalyzer(f"http://127.0.0.1:{port}", retries=0), proposal_threshold=0.1)
    for alone, result in zip(edge_only, results(unreachable)):
        assert result.cloud_error and "cannot connect" in result.cloud_error
        assert np.array_equal(alone.detections.xyxy, result.detections.xyxy)  # the edge's own decisions
        assert all(r.offload.sent and r.source == "edge" for r in regions(result))  # sent, but decided by the edge
        assert result.edge_agrees is None
