"""`aivd inspect --cloud-backend transformers`: the CLI loads the local-model backend with the --llm-* options."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_inspect_with_the_transformers_backend_records_the_models_analyses(tmp_path):
    pytest.importorskip("transformers", reason="the `vlm` extra is not installed")
    from aivd.cloud.llm.tiny import build_tiny_vlm

    model = build_tiny_vlm(tmp_path / "tiny-vlm")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "aivd.cli.main", "inspect", str(SAMPLES / "00041200_test.jpg"), "--out", str(out),
         "--cloud-backend", "transformers", "--llm-model", str(model), "--llm-prompt", "v1"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "results.jsonl").read_text())
    assert record["analyzer"] == "transformers:tiny-vlm" and record["cloud_error"] is None
    analysed = record["defects"] + record["rejected"]
    assert analysed and {d["source"] for d in analysed} == {"cloud:transformers:tiny-vlm"}
    assert all(d["measurements"]["width_px"] > 0 for d in analysed)  # aivd's own measurements, whatever the model said


def test_inspect_names_a_model_the_transformers_backend_cannot_load(tmp_path):
    pytest.importorskip("transformers", reason="the `vlm` extra is not installed")
    from typer.testing import CliRunner

    from aivd.cli.main import app

    result = CliRunner().invoke(app, ["inspect", str(SAMPLES / "00041200_test.jpg"), "--out", str(tmp_path), "--cloud-backend",
                                      "transformers", "--llm-model", str(tmp_path / "absent-model")])
    assert result.exit_code == 2 and "--llm-model" in result.output and "absent-model" in result.output, result.output
