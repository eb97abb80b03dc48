"""The cloud service fuzzed by schemathesis from its own OpenAPI document (see conftest.fuzz); the Ray ingress is
fuzzed in test_runtime.py, beside the cluster it needs."""

import pytest
import schemathesis
from conftest import fuzz, serving

from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.cloud.service import ServiceLimits, create_app


@pytest.fixture(scope="module")
def cloud_api():
    analyzer = BuiltinAnalyzer()
    with serving(create_app(analyzer, ServiceLimits(max_body_bytes=1024 * 1024, max_regions=16, request_timeout_s=30))) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")
    analyzer.close()


@pytest.mark.integration
def test_cloud_service_answers_as_its_openapi_document_says(cloud_api):
    assert fuzz(cloud_api) == ["POST /v1/analyze", "GET /healthz", "GET /metrics"]
