"""HTTPS (ServerSettings.tls_cert/tls_key, `aivd serve cloud --tls-cert --tls-key`) with a self-signed certificate
(conftest's `certificate`), and clients that trust it."""

import ssl
import subprocess
import sys

import httpx
import pytest
from conftest import serving
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aivd.cloud.builtin import BuiltinAnalyzer
from aivd.cloud.http_client import HttpAnalyzer
from aivd.cloud.service import create_app
from aivd.serving.server import ServerSettings


def test_the_service_answers_over_https_to_a_client_trusting_its_certificate(certificate, monkeypatch):
    cert, key = certificate
    analyzer = BuiltinAnalyzer()
    with serving(create_app(analyzer), ServerSettings(tls_cert=cert, tls_key=key)) as url:
        assert url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"{url}/healthz", verify=trusted).json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz")  # the system's trust store does not know it
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how the edge's HttpAnalyzer (httpx) is told to trust it
        client = HttpAnalyzer(url)
        client.check(timeout_s=5)
        assert client.name == f"remote:{analyzer.name}"
        client.close()
    analyzer.close()


def test_settings_need_both_the_certificate_and_its_key(certificate):
    with pytest.raises(ValueError, match="both a certificate and its key"):
        ServerSettings(tls_cert=certificate[0])


def test_serve_cloud_refuses_a_key_that_is_not_the_certificates_in_one_line(certificate, tmp_path):
    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = subprocess.run([sys.executable, "-m", "aivd.cli.main", "serve", "cloud", "--port", "0", "--tls-cert",
                             str(certificate[0]), "--tls-key", str(other)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "for HTTPS" in result.stderr
