"""API keys (aivd.auth.keys and `aivd keys`): created once, verified by argon2, revoked, never stored in clear."""


import pytest
from conftest import aivd
from sqlalchemy import create_engine, text

from aivd.auth.keys import ApiKeyError, ApiKeys, CachedVerifier, role_allows


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'keys.sqlite'}"


def test_a_created_key_verifies_to_its_role_and_only_its_hash_is_stored(url):
    with ApiKeys(url) as keys:
        key = keys.create("operator", label="line 3")
        assert keys.verify(key) == "operator"
        prefix, key_id, secret = key.split("_", 2)
        assert prefix == "aivd"
        assert keys.verify(f"aivd_{key_id}_{secret}x") is None  # wrong secret
        assert keys.verify(f"aivd_000000000000_{secret}") is None  # unknown key id
        assert keys.verify("Bearer nonsense") is None
        assert [(k.key_id, k.role, k.label, k.revoked_at) for k in keys.list()] == [(key_id, "operator", "line 3", None)]
    engine = create_engine(url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT secret_hash FROM api_keys")).scalar_one()
    engine.dispose()
    assert secret not in stored and stored.startswith("$argon2id$")


def test_a_revoked_key_no_longer_verifies(url):
    with ApiKeys(url) as keys:
        key = keys.create("viewer")
        keys.revoke(key.split("_")[1])
        assert keys.verify(key) is None
        assert keys.active() == 0
        with pytest.raises(ApiKeyError, match="no valid key"):
            keys.revoke(key.split("_")[1])
        with pytest.raises(ApiKeyError, match="unknown role 'root'"):
            keys.create("root")


def test_roles_are_ordered():
    assert role_allows("admin", "operator") and role_allows("operator", "operator") and role_allows("operator", "viewer")
    assert not role_allows("viewer", "operator")


def test_the_verifier_remembers_valid_keys_for_its_ttl_only(url):
    with ApiKeys(url) as keys:
        key = keys.create("admin")
        verify = CachedVerifier(keys, ttl_s=60)
        assert verify(key) == "admin"
        keys.revoke(key.split("_")[1])
        assert verify(key) == "admin"  # cached: a revoked key lasts up to the ttl in a running service
        assert CachedVerifier(keys, ttl_s=0)(key) is None
        assert verify("aivd_x_y") is None


def run_cli(*args):
    return aivd("keys", *args, rc=None, timeout=60)


@pytest.mark.integration
def test_the_keys_commands_create_list_and_revoke(url):
    created = run_cli("create", "--role", "operator", "--db", url, "--label", "edge 1")
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[-1]
    assert created.stdout.endswith(key + "\n")
    key_id = key.split("_")[1]
    listed = run_cli("list", "--db", url)
    assert listed.returncode == 0 and key_id in listed.stdout and "operator" in listed.stdout and "edge 1" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout and "argon2" not in listed.stdout
    assert run_cli("revoke", key_id, "--db", url).returncode == 0
    with ApiKeys(url) as keys:
        assert keys.verify(key) is None
    again = run_cli("revoke", key_id, "--db", url)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "no valid key" in again.stderr
    bad = run_cli("create", "--role", "root", "--db", url)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
