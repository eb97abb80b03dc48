"""The cloud service with API keys (create_app(access=...), `aivd serve cloud --db`): 401 without a valid key, 403
for a role too low, /healthz open; HttpAnalyzer sends AIVD_CLOUD_KEY; a non-loopback host needs keys."""

import logging
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from conftest import serving

from aivd.auth.keys import ApiKeys
from aivd.auth.web import Access
from aivd.cloud.analyzer import AnalyzerError
from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.cloud.http_client import HttpAnalyzer
from aivd.cloud.service import create_app
from aivd.core import Region
from aivd.schema.wire import AnalyzeRequest
from aivd.store import StoreError


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A served app with keys, and one key per role."""
    url = f"sqlite:///{tmp_path_factory.mktemp('keys') / 'keys.sqlite'}"
    analyzer = BuiltinAnalyzer()
    with ApiKeys(url) as keys:
        made = {role: keys.create(role) for role in ("viewer", "operator", "admin")}
    with Access.from_db(url, people=False) as access, serving(create_app(analyzer, access=access)) as base:
        yield base, made
    analyzer.close()


EMPTY = AnalyzeRequest(regions=[]).model_dump_json()


def call(base, method, path, key=None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, base + path, headers=headers, content=EMPTY if method == "POST" else None, timeout=30)


def test_every_endpoint_but_healthz_needs_a_key_of_a_high_enough_role(keyed, caplog):
    base, made = keyed
    caplog.set_level(logging.DEBUG)
    assert call(base, "GET", "/healthz").status_code == 200
    for method, path in (("POST", "/v1/analyze"), ("GET", "/metrics")):
        for key in (None, "aivd_123456789abc_wrong", made["viewer"] + "x"):
            answer = call(base, method, path, key)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", (path, answer.text)
            assert "aivd_" not in answer.text
    assert call(base, "GET", "/metrics", made["viewer"]).status_code == 200
    refused = call(base, "POST", "/v1/analyze", made["viewer"])
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"] and made["viewer"] not in refused.text
    for role in ("operator", "admin"):
        assert call(base, "POST", "/v1/analyze", made[role]).status_code == 200
    assert not [record for record in caplog.records if any(key in record.getMessage() for key in made.values())]


def test_an_unreachable_key_database_is_a_503_not_a_crash():
    def unreachable(key):
        raise StoreError("cannot read the result database sqlite:///gone.sqlite: disk I/O error")

    analyzer = BuiltinAnalyzer()
    with serving(create_app(analyzer, access=Access(unreachable))) as base:
        answer = call(base, "GET", "/metrics", "aivd_123456789abc_secret")
    analyzer.close()
    assert answer.status_code == 503 and "disk I/O error" in answer.json()["detail"] and "secret" not in answer.text


def test_the_openapi_document_names_the_bearer_scheme(keyed):
    base, _ = keyed
    document = httpx.get(base + "/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"401", "403"} <= set(document["paths"]["/v1/analyze"]["post"]["responses"])
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_http_analyzer_sends_the_key_from_its_variable_and_names_it_when_refused(keyed, monkeypatch):
    base, made = keyed
    region = Region("r#0", np.zeros((8, 8), np.uint8), None, (1, 1, 7, 7), (0, 0), "open", 0.9)
    monkeypatch.setenv("AIVD_CLOUD_KEY", made["operator"])
    client = HttpAnalyzer(base)
    assert len(client.analyze([region])) == 1
    client.close()
    for key, expected in ((made["viewer"], "the key in AIVD_CLOUD_KEY (HTTP 403)"), (None, "no key (AIVD_CLOUD_KEY is not set) (HTTP 401)")):
        if key is None:
            monkeypatch.delenv("AIVD_CLOUD_KEY")
        else:
            monkeypatch.setenv("AIVD_CLOUD_KEY", key)
        client = HttpAnalyzer(base, retries=3, backoff_s=5)  # a retry would take seconds: none happens
        started = time.monotonic()
        with pytest.raises(AnalyzerError) as raised:
            client.analyze([region])
        client.close()
        assert time.monotonic() - started < 5
        assert expected in str(raised.value) and "aivd_" not in str(raised.value)


def serve_cloud(*args):
    return subprocess.run([sys.executable, "-m", "aivd.cli.main", "serve", "cloud", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.integration
def test_a_non_loopback_host_without_keys_is_refused(tmp_path):
    refused = serve_cloud("--host", "0.0.0.0")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--insecure" in refused.stderr
    empty = serve_cloud("--host", "0.0.0.0", "--db", f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert empty.returncode == 2 and "has no active key" in empty.stderr
