"""Micro-batching at the edge and across images at the cloud: the results, and their order, are batch 1's."""

import json

import cv2
import numpy as np
import pytest
from conftest import SAMPLES

from aivd.cloud.analyzer import AnalyzerError
from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.config import ConfigError, build_config
from aivd.data.images import read_pair
from aivd.edge.detector import TemplateDetector, detect_batch
from aivd.packs import builtin_pack
from aivd.pipeline.engine import Batching, EdgeCloudPipeline
from aivd.pipeline.factory import build_pipeline
from aivd.pipeline.inputs import tasks_from_paths
from aivd.pipeline.inspect import InspectOptions, inspect_tasks


def samples() -> list[tuple[np.ndarray, np.ndarray | None, str]]:
    """The bundled pairs, plus what a batch must not mix up: one without its template, one of another size, and
    one large enough to be tiled (the builtin pack tiles images over 960 px)."""
    pairs = [(*read_pair(path, path.with_name(path.name.replace("_test", "_temp"))), path.stem[:-5])
             for path in sorted(SAMPLES.glob("*_test.jpg"))]
    image, template, _ = pairs[0]
    pairs.insert(2, (image, None, "no-template"))
    pairs.insert(4, (image[:500, 40:440].copy(), template[:500, 40:440].copy(), "smaller"))
    pairs.append((np.tile(image, (1, 2))[:, :1100].copy(), np.tile(template, (1, 2))[:, :1100].copy(), "tiled"))
    return pairs


def assert_same(batched, alone) -> None:
    """Equal up to float noise: a batched convolution may sum in another order."""
    assert len(batched) == len(alone)
    for got, expected in zip(batched, alone):
        assert got.class_id.tolist() == expected.class_id.tolist()
        np.testing.assert_allclose(got.xyxy, expected.xyxy, atol=1e-2)
        np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-4)


@pytest.mark.parametrize("detector", [TemplateDetector(), builtin_pack().load_detector()], ids=["model", "pack-tiled"])
def test_a_batch_is_detected_as_its_images_one_by_one(detector):
    pairs = samples()
    images, templates = [image for image, _, _ in pairs], [template for _, template, _ in pairs]
    alone = [detector.detect(image, template) for image, template in zip(images, templates)]
    assert sum(map(len, alone)) > 20  # the comparison covers many boxes, and refined ones
    assert_same(detect_batch(detector, images, templates), alone)
    assert_same(detect_batch(detector, images, templates, 0.05), [detector.detect(i, t, 0.05) for i, t in zip(images, templates)])
    assert detect_batch(detector, [], []) == []


class Recording:
    """The built-in analyzer, counting the regions of each call; fails the calls that hold a region of `failing`."""

    name = "recording"

    def __init__(self, failing: str | None = None):
        self.inner, self.calls, self.failing = BuiltinAnalyzer(threads=1), [], failing

    def analyze(self, regions):
        self.calls.append(len(regions))
        if any(region.region_id.startswith(f"{self.failing}#") for region in regions):
            raise AnalyzerError(f"cannot analyse {self.failing}")
        return self.inner.analyze(regions)

    def close(self):
        pass


def records(result) -> list:
    return [(r.bbox, r.defect_type, r.confidence, r.source, r.offload) for r in result.defects + result.rejected]


def test_the_cloud_analyses_the_regions_of_several_images_in_one_call_with_the_answers_of_one_at_a_time():
    pairs = samples()[:6]
    alone = EdgeCloudPipeline(TemplateDetector(), Recording(), pixels_per_mm=48)
    expected = [alone.run(*pair) for pair in pairs]
    batched = EdgeCloudPipeline(TemplateDetector(), Recording(), pixels_per_mm=48)
    results = batched.complete_batch(batched.propose_batch(pairs))
    assert batched.analyzer.calls == [sum(alone.analyzer.calls)]  # one call for the regions of all six
    assert [records(r) for r in results] == [records(r) for r in expected]
    assert all(r.cloud_error is None and set(r.timings_ms) == {"detect", "crop", "analyze"} for r in results)

    # A joint call that fails is retried image by image: only the failing image loses the cloud's answers.
    failing = EdgeCloudPipeline(TemplateDetector(), Recording(failing=pairs[1][2]), pixels_per_mm=48)
    results = failing.complete_batch(failing.propose_batch(pairs))
    assert [r.cloud_error is not None for r in results] == [False, True, False, False, False, False]
    assert [records(r) for i, r in enumerate(results) if i != 1] == [records(r) for i, r in enumerate(expected) if i != 1]


class Remote(Recording):
    """A backend behind a server: each image's request (its bytes, its failure) stays its own."""

    def check(self, timeout_s):
        pass


def test_a_remote_cloud_is_called_per_image():
    pairs = samples()[:3]
    pipeline = EdgeCloudPipeline(TemplateDetector(), Remote(), pixels_per_mm=48)
    pipeline.complete_batch(pipeline.propose_batch(pairs))
    assert len(pipeline.analyzer.calls) == 3


class CountingBatches:
    """A detector recording the size of each batch it is given; fails any batch holding an image `bad` pixels wide."""

    def __init__(self, bad: int | None = None):
        self.inner, self.sizes, self.bad = TemplateDetector(), [], bad

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def detect(self, image, template=None, min_confidence=None):
        return self.detect_batch([image], [template], min_confidence)[0]

    def detect_batch(self, images, templates, min_confidence=None):
        self.sizes.append(len(images))
        if any(image.shape[1] == self.bad for image in images):
            raise RuntimeError("bad image")
        return self.inner.detect_batch(images, templates, min_confidence)


def lines(out) -> list[dict]:
    found = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for record in found:
        record.pop("timings_ms")
    return found


@pytest.fixture
def boards(tmp_path):
    """The bundled pairs as files, and one of another size whose detection fails."""
    folder = tmp_path / "boards"
    folder.mkdir()
    for index, (image, template, image_id) in enumerate(samples()[:7]):
        if template is not None:
            cv2.imwrite(str(folder / f"{index}-{image_id}_test.png"), image)
            cv2.imwrite(str(folder / f"{index}-{image_id}_temp.png"), template)
    return folder


def test_inspect_runs_micro_batches_and_writes_the_records_of_one_at_a_time(boards, tmp_path):
    tasks = tasks_from_paths([boards])
    options = InspectOptions(annotate=False, report=False, database=None)
    inspect_tasks(tasks, EdgeCloudPipeline(TemplateDetector(), BuiltinAnalyzer(threads=1), pixels_per_mm=48), tmp_path / "one", options)
    detector = CountingBatches(bad=400)  # the 400-px wide board fails in its batch and then alone
    batching = Batching(edge=4, edge_wait_ms=1000, cloud=8)  # a long wait: batches fill whatever the machine's load
    pipeline = EdgeCloudPipeline(detector, BuiltinAnalyzer(threads=1), pixels_per_mm=48, batching=batching)
    summary = inspect_tasks(tasks, pipeline, tmp_path / "batched", options)
    assert max(detector.sizes) == 4 and summary.failed == 1
    one, batched = lines(tmp_path / "one"), lines(tmp_path / "batched")
    failed = [i for i, record in enumerate(batched) if record["status"] == "error"]
    assert len(failed) == 1 and "detector failed: RuntimeError: bad image" in batched[failed[0]]["error"]
    assert [r for i, r in enumerate(batched) if i not in failed] == [r for i, r in enumerate(one) if i not in failed]


def test_batch_settings_are_config_keys_that_reach_the_pipeline():
    config = build_config(overrides={"edge": {"batch": 4, "batch_wait_ms": 2.5}, "cloud": {"batch": 8}})
    assert build_pipeline(config, threads=1).batching == Batching(edge=4, edge_wait_ms=2.5, cloud=8)
    assert build_pipeline(build_config(), threads=1).batching == Batching()  # one image at a time, no wait
    with pytest.raises(ConfigError, match="edge.batch: Input should be greater than or equal to 1"):
        build_config(overrides={"edge": {"batch": 0}})
