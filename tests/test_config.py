"""`PipelineConfig`: one config from a YAML file and flags, validated with one line per problem, built by one factory."""

import json
from pathlib import Path

import pytest
from conftest import write_file

from aivd.collab.offload import BudgetController, MarginalErrorController
from aivd.config import ConfigError, PipelineConfig, build_config, dotted
from aivd.pipeline.factory import build_offloader, build_pipeline


def test_the_defaults_are_the_builtin_pack_with_the_builtin_cloud_sending_everything():
    config = build_config()
    assert (config.edge.pack, config.edge.model, config.cloud.backend, config.offload.budget) == (None, None, "builtin", 1.0)
    pipeline = build_pipeline(config)
    assert pipeline.name == "pack:deeppcb+cloud:builtin" and pipeline.offloader.name == "send_all"
    assert pipeline.pixels_per_mm is None  # the built-in pack does not fix the scale: DeepPCB input brings its own
    assert build_pipeline(config, pixels_per_mm=48.0).pixels_per_mm == 48.0
    assert build_pipeline(build_config(overrides=dotted("imaging.pixels_per_mm", 20)), pixels_per_mm=48.0).pixels_per_mm == 20


def test_a_file_with_flags_laid_over_it(tmp_path):
    file = write_file(tmp_path / "line.yaml", "cloud: {backend: none}\noffload:\n  budget: 0.5\n  filter: {name: margin}\n")
    config = build_config(file, {**dotted("offload.budget", 0.3), **dotted("imaging.pixels_per_mm", 20)})
    assert (config.cloud.backend, config.offload.budget, config.offload.filter.name) == ("none", 0.3, "margin")
    assert config.imaging.pixels_per_mm == 20
    pipeline = build_pipeline(config)
    assert pipeline.analyzer is None and pipeline.offloader.name == "edge_only"  # no cloud: every region stays at the edge


def test_every_problem_is_one_line_naming_the_file_and_the_key(tmp_path):
    file = write_file(tmp_path / "bad.yaml", "edge: {pack: builtin, model: x.onnx}\ncloud: {backend: http}\n"
                                              "offload: {budget: 1.5, filter: {name: psychic}}\nsurprise: 1\n")
    with pytest.raises(ConfigError) as failure:
        build_config(file)
    lines = str(failure.value).splitlines()
    assert all(line.startswith(f"{file}: ") for line in lines), lines
    text = str(failure.value)
    for expected in ("give edge.pack or edge.model, not both", "cloud.url (--cloud) is for backend http, which needs it",
                     "offload.budget: Input should be less than or equal to 1", "surprise: Extra inputs are not permitted"):
        assert expected in text
    assert len(lines) == 4  # the filter is checked once the budget is valid, not reported twice


def test_an_unknown_filter_or_backend_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown hard-example filter 'psychic'"):
        build_config(overrides={"offload": {"filter": {"name": "psychic"}}})
    with pytest.raises(ConfigError, match=r"cloud.llm.model \(--llm-model\): for backend openai or transformers"):
        build_config(overrides={"cloud": {"llm": {"model": "m"}}})
    with pytest.raises(ConfigError, match="backend openai needs cloud.llm.base_url and cloud.llm.model"):
        build_config(overrides={"cloud": {"backend": "openai", "llm": {"model": "m"}}})
    with pytest.raises(ConfigError, match="give offload.budget or offload.target_accuracy, not both"):
        build_config(overrides={"offload": {"budget": 0.3, "target_accuracy": 0.9}})
    with pytest.raises(ConfigError, match="update.enabled needs update.model_store"):
        build_config(overrides={"update": {"enabled": True}})


def test_unreadable_or_non_mapping_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        build_config(write_file(tmp_path / "list.yaml", "- 1\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(write_file(tmp_path / "broken.yaml", "edge: [\n"))
    # safe_load: a YAML tag that would build a Python object is refused, never run
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(write_file(tmp_path / "tag.yaml", "edge: !!python/object/apply:os.system ['true']\n"))


def test_shown_hides_passwords():
    config = build_config(overrides={"cloud": {"backend": "http", "url": "http://user:hunter2@cloud:8080"},
                                     "outputs": {"database": "postgresql+psycopg://aivd:s3cret@db/aivd"}})
    text = json.dumps(config.shown())
    assert "hunter2" not in text and "s3cret" not in text and "user:***@cloud" in text


def test_the_offloader_follows_the_budget_or_the_target():
    assert build_offloader(build_config().offload).name == "send_all"
    assert build_offloader(build_config(overrides={"offload": {"budget": 0}}).offload).name == "edge_only"
    budget = build_offloader(build_config(overrides={"offload": {"budget": 0.3, "window": 10}}).offload)
    assert isinstance(budget, BudgetController) and budget.budget == 0.3 and budget.recent.maxlen == 10
    target = build_offloader(build_config(overrides={"offload": {"target_accuracy": 0.95, "filter": {"name": "margin"}}}).offload)
    assert isinstance(target, MarginalErrorController) and target.filter.name == "margin"


def test_a_config_round_trips_through_its_own_dump_and_the_published_schema_describes_it(tmp_path):
    config = build_config(overrides={"offload": {"budget": 0.25}, "edge": {"model": "x.onnx"}})
    again = PipelineConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json"))))
    assert again == config
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "schema" / "pipeline_config.schema.json").read_text())
    assert set(schema["properties"]) == {"edge", "cloud", "offload", "update", "outputs", "imaging"}


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path):
    file = write_file(tmp_path / "lines" / "a.yaml", "edge: {model: models/edge.onnx}\nupdate: {model_store: /abs/store}\n")
    config = build_config(file, {"cloud": {"knowledge": "kb.yaml"}})
    assert config.edge.model == tmp_path / "lines" / "models" / "edge.onnx"
    assert str(config.update.model_store) == "/abs/store" and str(config.cloud.knowledge) == "kb.yaml"  # flags: as given


def run_cli(*args):
    from typer.testing import CliRunner

    from aivd.cli.main import app

    return CliRunner().invoke(app, list(map(str, args)))


def test_config_show_prints_the_effective_config_and_check_lists_problems(tmp_path):
    import yaml

    good = write_file(tmp_path / "good.yaml", "offload: {budget: 0.5}\ncloud: {backend: http, url: 'http://u:pw@cloud:8080'}\n")
    shown = run_cli("config", "show", good, "--set", "offload.filter.name=margin", "--set", "offload.budget=0.25")
    assert shown.exit_code == 0, shown.output
    effective = yaml.safe_load(shown.output)
    assert effective["offload"]["budget"] == 0.25 and effective["offload"]["filter"]["name"] == "margin"
    assert effective["cloud"]["url"] == "http://u:***@cloud:8080" and "pw@" not in shown.output
    bad = write_file(tmp_path / "bad.yaml", "edge: {pack: a, model: b}\noffload: {budget: two}\n")
    checked = run_cli("config", "check", good, bad)
    assert checked.exit_code == 2
    lines = checked.output.strip().splitlines()
    assert lines[0] == f"{good}: ok" and len(lines) == 3 and all(line.startswith(f"error: {bad}: ") for line in lines[1:])
    assert run_cli("config", "show", "--set", "offload").exit_code == 2  # not KEY=VALUE


def test_inspect_takes_a_config_whose_keys_the_flags_override(tmp_path):
    from aivd.pipeline.demo import SAMPLES

    config = write_file(tmp_path / "line.yaml", "offload: {budget: 0.0}\noutputs: {annotate: false, report: false}\n")
    result = run_cli("inspect", SAMPLES, "--config", config, "--offload-budget", "1", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["sent"] == summary["candidates"] > 0 and summary["offload_ratio"] == 1.0  # the flag won
    assert not (tmp_path / "out" / "annotated").exists() and not (tmp_path / "out" / "report.html").exists()  # the file's
    kept = run_cli("inspect", SAMPLES, "--config", config, "--out", tmp_path / "kept")
    assert kept.exit_code == 0, kept.output
    assert json.loads((tmp_path / "kept" / "summary.json").read_text())["sent"] == 0


def test_inspect_with_a_bad_config_prints_each_problem_on_its_own_error_line(tmp_path):
    from aivd.pipeline.demo import SAMPLES

    bad = write_file(tmp_path / "bad.yaml", "edge: {pack: a, model: b}\nsurprise: 1\n")
    result = run_cli("inspect", SAMPLES, "--config", bad, "--out", tmp_path / "out")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {bad}: ") for line in lines), result.output
