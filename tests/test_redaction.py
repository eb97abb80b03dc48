"""No secret in records, reports or logs: command lines and URLs are recorded with `***` for each secret."""

import json
import sqlite3
import sys

import numpy as np
import pytest
from conftest import SAMPLES

from aivd.core.redaction import redact_command, redact_url

SECRET = "s3cret"


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://inspector:s3cret@db.example:5432/aivd", "postgresql+psycopg://inspector:***@db.example:5432/aivd"),
    # an unencoded @ in the password: SQLAlchemy's make_url would show "cret@db.example" as the host
    ("postgresql+psycopg://inspector:s3@cret@db.example/aivd", "postgresql+psycopg://inspector:***@db.example/aivd"),
    ("mysql+pymysql://inspector:s3%40cret@db/aivd?charset=utf8", "mysql+pymysql://inspector:***@db/aivd?charset=utf8"),
    ("http://user:s3cret@cloud.example:8700/v1", "http://user:***@cloud.example:8700/v1"),
    ("https://:s3cret@llm.example/v1", "https://:***@llm.example/v1"),
    ("postgresql://db.example/aivd?user=inspector&password=s3cret&sslmode=require",
     "postgresql://db.example/aivd?user=inspector&password=***&sslmode=require"),
    ("https://llm.example/v1?api_key=s3cret", "https://llm.example/v1?api_key=***"),
    ("http://[::1/broken:s3cret@host", "http://***"),  # no host part can be told apart: all of it goes
])
def test_redact_url_hides_passwords_and_secret_parameters(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["sqlite:////tmp/out/aivd.sqlite", "sqlite:///out/aivd.sqlite", "http://user@cloud.example:8700",
                                 "https://cloud.example/v1?max_tokens=16", "localhost:8000", "out/aivd.sqlite"])
def test_redact_url_leaves_urls_without_secrets_alone(url):
    assert redact_url(url) == url


@pytest.mark.parametrize("argv, shown", [
    (["aivd", "inspect", "boards", "--db", "postgresql+psycopg://inspector:s3cret@db/aivd"],
     "aivd inspect boards --db postgresql+psycopg://inspector:***@db/aivd"),
    (["aivd", "inspect", "boards", "--db=postgresql+psycopg://inspector:s3cret@db/aivd"],
     "aivd inspect boards --db=postgresql+psycopg://inspector:***@db/aivd"),
    (["aivd", "inspect", "--llm-api-key", "s3cret", "boards"], "aivd inspect --llm-api-key *** boards"),
    (["aivd", "inspect", "--api-key=s3cret", "boards"], "aivd inspect --api-key=*** boards"),
    (["aivd", "x", "--token", "s3cret", "--client-secret=s3cret", "--db-password", "s3cret", "--API_KEY", "s3cret"],
     "aivd x --token *** --client-secret=*** --db-password *** --API_KEY ***"),
    (["aivd", "inspect", "--cloud", "http://edge:s3cret@cloud:8700", "boards"], "aivd inspect --cloud http://edge:***@cloud:8700 boards"),
    (["aivd", "x", "note=see https://u:s3cret@host/a and http://v:s3cret@host/b"],
     "aivd x note=see https://u:***@host/a and http://v:***@host/b"),
    (["aivd", "finetune", "--max-new-tokens", "256", "--out", "keys/run"], "aivd finetune --max-new-tokens 256 --out keys/run"),
    (["aivd", "x", "--api-key"], "aivd x --api-key"),  # a secret option without its value: nothing to hide
])
def test_redact_command_hides_each_secret_form(argv, shown):
    assert redact_command(argv) == shown
    assert SECRET not in redact_command(argv)


def test_a_result_store_error_names_the_database_without_its_password(tmp_path):
    from aivd.store import ResultStore, StoreError

    with pytest.raises(StoreError) as raised:
        ResultStore("nosuchdialect://inspector:s3@cret@db.example/aivd")
    assert SECRET not in str(raised.value) and "s3@" not in str(raised.value) and "inspector:***@db.example" in str(raised.value)


def test_cloud_and_llm_errors_name_their_server_without_its_password():
    from aivd.cloud.analyzer import AnalyzerError
    from aivd.cloud.http_client import HttpAnalyzer
    from aivd.cloud.llm.openai_backend import ConfigError, OpenAIConfig
    from aivd.core import Region

    cloud = HttpAnalyzer("http://edge:s3cret@127.0.0.1:9", retries=0, backoff_s=0)  # port 9: nothing listens
    crop = np.zeros((8, 8), np.uint8)
    with pytest.raises(AnalyzerError) as raised:
        cloud.analyze([Region("r0", crop, None, (0, 0, 8, 8), (0, 0), "open", 0.9)])
    assert SECRET not in str(raised.value) and "edge:***@127.0.0.1:9" in str(raised.value)
    with pytest.raises(ConfigError) as refused:
        OpenAIConfig.build({"base_url": "ftp://edge:s3cret@llm.example/v1", "model": "m"})
    assert SECRET not in str(refused.value) and "edge:***@llm.example" in str(refused.value)


def test_an_inspect_run_records_and_reports_its_command_without_secrets(tmp_path, monkeypatch):
    """The record and report.html of a real `aivd inspect` run whose command line held a password (in the cloud
    URL: a SQLite URL cannot hold one), through the code path that builds them."""
    from typer.testing import CliRunner

    from aivd.cli.main import app

    database = tmp_path / "runs.sqlite"
    args = ["inspect", str(SAMPLES / "00041200_test.jpg"), "--out", str(tmp_path / "out"), "--db", f"sqlite:///{database}",
            "--cloud", f"http://inspector:{SECRET}@127.0.0.1:9", "--no-annotate"]
    monkeypatch.setattr(sys, "argv", ["aivd", *args])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert "inspector:***@127.0.0.1:9" in record["cloud_error"]  # the unreachable cloud is named, without its password
    with sqlite3.connect(database) as connection:
        (command,) = connection.execute("select command from runs").fetchone()
    assert command == " ".join(["aivd", *args]).replace(SECRET, "***")
    report = (tmp_path / "out" / "report.html").read_text()
    assert "http://inspector:***@127.0.0.1:9" in report
    for name, text in [("output", result.output), ("results.jsonl", json.dumps(record)), ("report.html", report),
                       ("database", database.read_bytes().decode("latin-1"))]:
        assert SECRET not in text, f"{name} holds the password"
