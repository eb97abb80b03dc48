"""The cloud service fuzzed by schemathesis from its own OpenAPI document (see conftest.fuzz); the Ray ingress is
fuzzed in test_runtime.py, beside the cluster it needs."""

import httpx
import pytest
import schemathesis
from conftest import fuzz, serving

from aivd.auth.keys import ApiKeys
from aivd.auth.web import Access
from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.cloud.service import ServiceLimits, create_app


@pytest.fixture(scope="module")
def cloud_api(tmp_path_factory):
    """The service with API keys, as `aivd serve cloud --db` runs it, and an admin key to call it with."""
    analyzer = BuiltinAnalyzer()
    limits = ServiceLimits(max_body_bytes=1024 * 1024, max_regions=16, request_timeout_s=30)
    url = f"sqlite:///{tmp_path_factory.mktemp('keys') / 'keys.sqlite'}"
    with ApiKeys(url) as keys:
        key = keys.create("admin")
    with Access.from_db(url, people=False) as access, serving(create_app(analyzer, limits, access)) as base:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json"), key, base
    analyzer.close()


@pytest.mark.integration
def test_cloud_service_answers_as_its_openapi_document_says(cloud_api):
    schema, key, url = cloud_api
    authorization = {"Authorization": f"Bearer {key}"}
    assert fuzz(schema, authorization) == ["POST /v1/analyze", "GET /healthz", "GET /metrics"]
    # With keys, everything unauthenticated is a documented 401, which would pass alone: the key must have got
    # the fuzzed requests past it, to the checks of the body.
    metrics = httpx.get(f"{url}/metrics", headers=authorization).text
    assert 'aivd_cloud_requests_total{endpoint="/v1/analyze",status="422"}' in metrics
