"""Edge runtimes and `aivd export`: OpenVINO against ONNX Runtime, packs that record their runtime, int8 exports
whose parity with their source is measured (`aivd eval parity`), and `aivd bench edge`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import aivd
from typer.testing import CliRunner

from aivd.cli.main import app
from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.deploy.export import DEFAULT_TOLERANCE, ExportError, _openvino, export_pack
from aivd.edge.detector import BUILTIN_MODEL
from aivd.edge.runtimes import open_session
from aivd.eval.parity import box_agreement, losses, metric_deltas
from aivd.packs import PackError, load_pack
from aivd.packs.pack import PackManifest, write_manifest

REFINER = BUILTIN_MODEL.with_name("deeppcb_refiner.onnx")


def _metadata(path: Path) -> dict[str, str]:
    return open_session(path, 1).metadata


def test_openvino_answers_as_onnx_runtime_and_keeps_the_metadata(tmp_path):
    converted = tmp_path / "refiner.xml"
    _openvino(REFINER, converted, _metadata(REFINER), None)
    onnx, openvino = open_session(REFINER, 1), open_session(converted, 1)
    assert (onnx.runtime, openvino.runtime) == ("onnxruntime", "openvino")
    assert openvino.metadata == onnx.metadata and openvino.output_names == onnx.output_names
    name, shape = onnx.inputs[0]
    crops = np.random.default_rng(0).random((5, *shape[1:]), np.float32)
    np.testing.assert_allclose(openvino.run(None, {name: crops})[0], onnx.run(None, {name: crops})[0], atol=1e-5)


def _copied_pack(folder: Path, **changes) -> Path:
    """The shipped template-aware detector, its refiner and the knowledge base as a pack, `changes` to its manifest."""
    from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE

    folder.mkdir(parents=True)
    for path in (BUILTIN_MODEL, REFINER, DEFAULT_KNOWLEDGE):
        shutil.copy(path, folder / path.name)
    manifest = {"name": "copy", "labels": list(DEEPPCB_CLASSES.names), "domain": "pcb", "detectors": {"template": BUILTIN_MODEL.name},
                "knowledge": DEFAULT_KNOWLEDGE.name, **changes}
    write_manifest(folder, PackManifest.model_validate(manifest))
    return folder


def test_a_pack_without_runtime_keys_is_fp32_onnx_and_one_whose_files_are_for_another_runtime_is_refused(tmp_path):
    manifest = _copied_pack(tmp_path / "old") / "pack.yaml"
    old = {key: value for key, value in yaml.safe_load(manifest.read_text()).items() if key not in ("runtime", "precision", "tolerance")}
    manifest.write_text(yaml.safe_dump(old))  # as packs were written before `aivd export`
    pack = load_pack(manifest)
    assert (pack.runtime, pack.precision, pack.manifest.tolerance) == ("onnxruntime", "fp32", None)
    with pytest.raises(PackError, match="is a onnxruntime model, but the pack's runtime is openvino"):
        load_pack(_copied_pack(tmp_path / "mixed", runtime="openvino"))


def _deeppcb_without_images(root: Path) -> Path:
    (root / "PCBData").mkdir(parents=True)
    for split in ("trainval", "test"):
        (root / "PCBData" / f"{split}.txt").write_text("")
    return root


@pytest.mark.parametrize("case, message", [
    ("unknown target", "--to onnx-fp16: unknown target; choose one of onnx-int8, openvino, openvino-int8"),
    ("no pack", "--pack .*missing: .*not a model pack"),
    ("int8 without calibration", "--to onnx-int8 quantises to int8: give --calibration DATA"),
    ("no calibration data", "--calibration .*nowhere: "),
    ("empty calibration data", "--calibration .*empty: no usable training images"),
    ("output not empty", "--out .*: not empty; give a new folder"),
    ("broken model", "refiner.onnx: not a readable ONNX model"),
])
def test_export_refuses_bad_input_with_one_clear_error(tmp_path, case, message):
    pack, to, calibration, out = "builtin", "onnx-int8", tmp_path / "data", tmp_path / "out"
    if case == "unknown target":
        to = "onnx-fp16"
    elif case == "no pack":
        pack = str(tmp_path / "missing")
    elif case == "int8 without calibration":
        calibration = None
    elif case == "no calibration data":
        calibration = tmp_path / "nowhere"
    elif case == "empty calibration data":
        calibration = _deeppcb_without_images(tmp_path / "empty")
    elif case == "output not empty":
        out.mkdir()
        (out / "kept.txt").write_text("a user's file")
    elif case == "broken model":
        pack = str(_copied_pack(tmp_path / "broken"))
        (tmp_path / "broken" / "deeppcb_refiner.onnx").write_bytes(b"not a model")
        to, calibration = "openvino", None
    with pytest.raises(ExportError, match=message):
        export_pack(pack, to, out, calibration)
    if case == "output not empty":
        assert [p.name for p in out.iterdir()] == ["kept.txt"]


def _boxes(rows) -> Detections:
    rows = np.asarray(rows, np.float64).reshape(-1, 6)
    return Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), DEEPPCB_CLASSES)


def test_box_agreement_pairs_boxes_whatever_their_class_and_counts_flips_and_strays():
    truth = _boxes([])
    a = _boxes([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1], [50, 50, 60, 60, 0.7, 2], [70, 70, 80, 80, 0.2, 3]])
    # The same first box, the second's class flipped, the third missed, one box of B's own; A's 0.2 is below its threshold.
    b = _boxes([[0, 0, 10, 11, 0.85, 0], [21, 20, 30, 30, 0.9, 4], [90, 90, 99, 99, 0.6, 1]])
    found = box_agreement([("i", a, truth)], [("i", b, truth)], 0.5, 0.5)
    assert (found["matched"], found["class_flips"], found["only_a"], found["only_b"]) == (2, 1, 1, 1)
    assert found["score_delta"] == {"mean": 0.025, "mean_abs": 0.075, "p95_abs": 0.0975, "max_abs": 0.1}


def test_metric_deltas_and_losses():
    a = {"fscore": 0.9, "map50": 0.8, "map50_95": None, "per_class": {"open": {"f1": 0.5}}, "deeppcb": {"fscore": 0.97, "ap": 0.98}}
    b = {"fscore": 0.88, "map50": 0.81, "map50_95": None, "per_class": {"open": {"f1": 0.6}}, "deeppcb": {"fscore": 0.975, "ap": 0.96}}
    deltas = metric_deltas(a, b)
    assert deltas == {"fscore": -0.02, "map50": 0.01, "per_class": {"open": {"f1": 0.1}}, "deeppcb": {"fscore": 0.005, "ap": -0.02}}
    assert losses(deltas) == {"fscore": 0.02, "map50": -0.01, "deeppcb_fscore": -0.005, "deeppcb_ap": 0.02}


def test_eval_is_still_one_command_with_parity_beside_it(tmp_path):
    runner = CliRunner()
    assert "parity" in runner.invoke(app, ["eval", "--help"]).output
    scored = runner.invoke(app, ["eval", "--data", str(tmp_path / "nowhere"), "--json"])  # the old command runs, and fails as it did
    assert scored.exit_code == 2 and "nowhere" in scored.output
    one = runner.invoke(app, ["eval", "parity", "--pack", "builtin", "--data", str(tmp_path)])
    assert one.exit_code == 2 and "give exactly two packs, A then B (1 given)" in one.output
    misplaced = runner.invoke(app, ["eval", "--json", "parity", "--pack", "builtin", "--pack", "builtin", "--data", str(tmp_path)])
    assert misplaced.exit_code == 2 and "--json: options of `aivd eval` itself, not of `parity`" in misplaced.output


@pytest.mark.integration
@pytest.mark.parametrize("to, runtime, precision, suffix", [
    ("onnx-int8", "onnxruntime", "int8", ".onnx"), ("openvino", "openvino", "fp32", ".xml"), ("openvino-int8", "openvino", "int8", ".xml"),
])
def test_an_exported_pack_loses_no_more_than_its_tolerance_on_held_out_data(tmp_path, deeppcb_root, to, runtime, precision, suffix):
    """The shipped pack (its two detectors, their refiners, the cloud classifier) exported, int8 calibrated on
    DeepPCB's trainval, then compared with its source, edge and cloud, on the first 100 test pairs."""
    out = tmp_path / to
    aivd("export", "--pack", "builtin", "--to", to, "--out", out, "--calibration", deeppcb_root, "--samples", "20", timeout=900)
    pack = load_pack(out)
    assert (pack.runtime, pack.precision, pack.manifest.tolerance) == (runtime, precision, DEFAULT_TOLERANCE)
    models = sorted(path.name for path in out.iterdir() if path.suffix == suffix)
    assert models == ["deeppcb_centernet" + suffix, "deeppcb_classifier" + suffix, "deeppcb_image_only" + suffix,
                      "deeppcb_image_only_refiner" + suffix, "deeppcb_refiner" + suffix]
    # The labels, thresholds and refiner file name survive, the refiner's renamed with its model.
    source, exported = _metadata(BUILTIN_MODEL), _metadata(out / f"deeppcb_centernet{suffix}")
    assert exported == source | {"refiner": f"deeppcb_refiner{suffix}"}
    detector = pack.load_detector().template_aware.detector
    assert detector.session.runtime == runtime and detector.refiner.runtime == runtime
    result = aivd("eval", "parity", "--pack", "builtin", "--pack", out, "--data", deeppcb_root, "--split", "test", "--limit", "100", "--json",
                  rc=None, timeout=900)
    parity = json.loads(result.stdout)
    assert parity["images"] == 100 and parity["tolerance"] == DEFAULT_TOLERANCE and parity["b"]["runtime"] == runtime
    assert parity["boxes"]["matched"] > 500 and parity["a"]["metrics"]["deeppcb"]["fscore"] > 0.9
    assert set(parity["losses"]) == {"fscore", "map50", "deeppcb_fscore", "deeppcb_ap"}
    assert result.returncode == 0 and parity["within_tolerance"], parity["losses"]


@pytest.mark.integration
def test_bench_edge_runs_every_runtime_side_by_side(deeppcb_root):
    result = aivd("bench", "edge", "--deeppcb", deeppcb_root, "--limit", "6", "--warmup", "1", "--repeat", "2", "--samples", "4", timeout=900)
    output = json.loads(result.stdout)
    assert list(output["runs"]) == ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]
    for run in output["runs"].values():
        assert set(run) == {"images_per_s", "p50_ms", "p99_ms", "peak_rss_mb", "fscore", "ap"}
        assert run["images_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"] and run["peak_rss_mb"] > 50 and 0 < run["fscore"] <= 1
    assert [p["run"] for p in output["passes"]][3:5] == ["openvino-int8", "openvino-int8"]  # the second pass runs in reverse
