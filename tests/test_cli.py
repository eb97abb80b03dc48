"""The `aivd` command as a user runs it, in a subprocess."""

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import SAMPLES

from aivd.schema.records import InspectionRecord

pytestmark = pytest.mark.integration
SUBMISSION_LINE = re.compile(r"^\d+,\d+,\d+,\d+,\d+\.\d+,(open|short|mousebite|spur|copper|pin-hole)$")


def aivd(*args, check_rc=None, **kwargs):
    result = subprocess.run([sys.executable, "-m", "aivd.cli.main", *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stderr
    return result


def test_inspect_folder_writes_records_and_annotated_images(tmp_path):
    result = aivd("inspect", SAMPLES, "--out", tmp_path, check_rc=0)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 6  # templates are paired, not inspected
    for record in records:
        assert record["status"] == "ok" and record["error"] is None
        assert record["template"].endswith("_temp.jpg")
        assert set(record["timings_ms"]) == {"read", "detect", "crop", "analyze", "total"}
        assert record["analyzer"] == "builtin" and record["cloud_error"] is None
        for defect in record["defects"]:
            assert defect["source"] == "cloud:builtin" and 0 <= defect["confidence"] <= 1
            assert defect["severity"] in ("critical", "major", "minor") and defect["description"] and defect["recommended_action"]
            x1, y1, x2, y2 = defect["bbox"]
            assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 640
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == sorted(f"{r['image_id']}.jpg" for r in records)
    assert "6 of 6 images inspected" in result.stderr
    from aivd.store import ResultStore

    with ResultStore(f"sqlite:///{tmp_path / 'aivd.sqlite'}") as store:
        assert store.records(1) == [InspectionRecord.model_validate(r) for r in records]
    assert "Latency" in (tmp_path / "report.html").read_text()


def test_edge_only_inspection_skips_the_cloud(tmp_path):
    aivd("inspect", SAMPLES, "--out", tmp_path, "--edge-only", "--no-annotate", check_rc=0)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["analyzer"] for r in records} == {None}
    assert {d["source"] for r in records for d in r["defects"]} == {"edge"}
    assert set(records[0]["timings_ms"]) == {"read", "detect", "total"}


def test_augment_runs_the_detector_on_every_view_at_its_own_threshold(tmp_path):
    from aivd.data.images import read_pair
    from aivd.edge.detector import TemplateDetector

    aivd("inspect", SAMPLES, "--out", tmp_path, "--edge-only", "--no-annotate", "--no-report", "--augment", check_rc=0)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    augmented = TemplateDetector(augment=True)
    for record in records:
        expected = augmented.detect(*read_pair(record["image"], record["template"]))
        assert [d["confidence"] for d in record["defects"]] == pytest.approx(expected.confidence.tolist(), abs=1e-4)
        assert all(d["confidence"] >= 0.24 for d in record["defects"])
    assert sum(len(r["defects"]) for r in records) > 0


def test_an_unreachable_cloud_leaves_the_edge_results_marked(tmp_path):
    result = aivd("inspect", SAMPLES, "--out", tmp_path, "--cloud", "http://127.0.0.1:9", "--no-annotate", check_rc=0)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["cloud_error"] for r in records)
    assert {d["source"] for r in records for d in r["defects"]} == {"edge"}
    assert "cloud unavailable for 6 images" in result.stderr


def test_inspect_exits_non_zero_and_names_each_bad_file(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLES / "92000111_test.jpg", inputs / "good.jpg")
    (inputs / "zero.jpg").write_bytes(b"")
    result = aivd("inspect", inputs, "--out", tmp_path / "out", check_rc=1)
    assert f"{inputs / 'zero.jpg'}: empty file (0 bytes)" in result.stderr
    statuses = [json.loads(line)["status"] for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(statuses) == ["error", "ok"]


def test_bad_arguments_are_refused_clearly(tmp_path):
    assert "give one of image or video PATHS, --deeppcb ROOT or --stream URL" in aivd("inspect", "--out", tmp_path, check_rc=2).stderr
    assert "cannot open the result database" in aivd("inspect", SAMPLES, "--out", tmp_path, "--db", "nosuchdb://x", check_rc=2).stderr
    assert "not an aivd crop classifier" in aivd("inspect", SAMPLES, "--out", tmp_path, "--classifier", SAMPLES.parents[2] / "edge" / "models" / "deeppcb_centernet.onnx", check_rc=2).stderr
    broken = tmp_path / "broken.onnx"
    broken.write_text("nope")
    knowledge = tmp_path / "kb.yaml"
    knowledge.write_text("classes: [")
    assert f"{knowledge}: not valid YAML" in aivd("inspect", SAMPLES, "--out", tmp_path, "--knowledge", knowledge, check_rc=2).stderr
    assert "must be http(s)://" in aivd("inspect", SAMPLES, "--out", tmp_path, "--cloud", "ftp://x", check_rc=2).stderr
    assert "not a loadable ONNX model" in aivd("inspect", SAMPLES, "--out", tmp_path, "--model", broken, check_rc=2).stderr
    assert "edge.tile_size (--tile-size): tile size must be at least 32 px" in aivd("inspect", SAMPLES, "--out", tmp_path, "--tile-size", "10", check_rc=2).stderr
    assert "not a DeepPCB root" in aivd("eval", "--deeppcb", tmp_path, check_rc=2).stderr


def drop_permission_override() -> None:
    """In the child, before exec: drop the capabilities that let root read any folder (CAP_DAC_OVERRIDE = 1,
    CAP_DAC_READ_SEARCH = 2) from the bounding set, so root is refused like any other user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(97)


@pytest.mark.skipif(sys.platform != "linux", reason="uses Linux capabilities")
def test_unreadable_folder_is_reported_and_the_rest_inspected(tmp_path):
    locked = tmp_path / "in" / "locked"
    locked.mkdir(parents=True)
    shutil.copy(SAMPLES / "92000111_test.jpg", tmp_path / "in" / "a.jpg")
    shutil.copy(SAMPLES / "92000111_test.jpg", locked / "b.jpg")
    locked.chmod(0)
    try:
        result = aivd("inspect", tmp_path / "in", "--out", tmp_path / "out", preexec_fn=drop_permission_override)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert f"{locked}: cannot list folder (Permission denied)" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["error", "ok"]


def test_deeppcb_inspect_then_eval_matches_a_live_eval(tmp_path, deeppcb_root):
    aivd("inspect", "--deeppcb", deeppcb_root, "--split", "test", "--out", tmp_path, "--no-annotate", check_rc=0)
    files = sorted((tmp_path / "deeppcb").glob("*.txt"))
    with zipfile.ZipFile(deeppcb_root / "evaluation" / "gt.zip") as official_truth:
        assert [f.name for f in files] == sorted(official_truth.namelist())
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert lines and all(SUBMISSION_LINE.match(line) for line in lines)
    scored = json.loads(aivd("eval", "--deeppcb", deeppcb_root, "--results", tmp_path, "--json", check_rc=0).stdout)
    official = json.loads(
        aivd("eval", "--deeppcb", deeppcb_root, "--results", tmp_path, "--gt-zip", deeppcb_root / "evaluation" / "gt.zip", "--json",
             "--report", tmp_path / "report.html", check_rc=0).stdout
    )
    live = json.loads(aivd("eval", "--deeppcb", deeppcb_root, "--json", check_rc=0).stdout)
    assert scored == official
    # Result files round coordinates to integers, so the live run may differ in the last digits only.
    for key in ("fscore", "ap", "precision", "recall", "map50", "map50_95"):
        assert scored[key] == pytest.approx(live[key], abs=2e-3)
    assert set(scored["per_class"]) == {"open", "short", "mousebite", "spur", "copper", "pin-hole"}
    printed = aivd("eval", "--deeppcb", deeppcb_root, "--results", tmp_path, check_rc=0).stdout
    assert f"mAP@0.5 {scored['map50']:.4f}" in printed and f"mAP@0.5:0.95 {scored['map50_95']:.4f}" in printed
    html = (tmp_path / "report.html").read_text()
    assert "Confusion matrix" in html and "Per board group" in html and "data:image/jpeg;base64," in html
    assert set(scored["per_group"]) >= {"90100", "12100"}


def test_deeppcb_sample_with_a_missing_template_fails_alone(tmp_path):
    aivd("synth", "--out", tmp_path / "data", "--count", "6", "--size", "320", check_rc=0)
    templates = sorted((tmp_path / "data").rglob("*_temp.jpg"))
    assert len(templates) == 6
    test_list = (tmp_path / "data" / "PCBData" / "test.txt").read_text().split()
    victim = next(t for t in templates if t.name.replace("_temp", "") in " ".join(test_list).replace("/", " "))
    victim.unlink()
    result = aivd("inspect", "--deeppcb", tmp_path / "data", "--split", "test", "--out", tmp_path / "out", check_rc=1)
    assert f"template {victim} not found" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records].count("error") == 1 and len(records) == 2
    assert len(list((tmp_path / "out" / "deeppcb").glob("*.txt"))) == 1


def test_synth_refuses_an_unknown_layout(tmp_path):
    assert "unknown layout 'labelme'" in aivd("synth", "--out", tmp_path, "--layout", "labelme", check_rc=2).stderr


def test_demo_writes_a_report(tmp_path):
    result = aivd("demo", "--out", tmp_path, check_rc=0)
    assert "6 images" in result.stderr
    # The shipped model must still find the bundled samples' defects (it scores 0.95 on them).
    assert float(re.search(r"F-score (\d\.\d+)", result.stderr).group(1)) >= 0.9
    evaluation = (tmp_path / "evaluation.html").read_text()
    assert evaluation.count("data:image/jpeg;base64,") == 6
    report = (tmp_path / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") == 6 and "critical" in report
    assert len(list((tmp_path / "deeppcb").glob("*.txt"))) == 6
    assert (tmp_path / "aivd.sqlite").stat().st_size > 0


def test_error_messages_keep_square_brackets(capsys):
    from aivd.cli.ui import fail

    fail("install it with pip install 'aivd[train,vlm]'; see runs/[old]/log")
    assert "pip install 'aivd[train,vlm]'; see runs/[old]/log" in capsys.readouterr().err
