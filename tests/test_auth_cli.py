"""`aivd users create/list/disable` and the audit rows that they and `aivd keys create/revoke` write."""

import pytest
from conftest import aivd

from aivd.auth.audit import AuditLog
from aivd.auth.users import Users

pytestmark = pytest.mark.integration  # the CLI in a subprocess
PASSWORD = "correct horse battery"


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'aivd.sqlite'}"


def test_users_are_created_from_stdin_or_a_confirmed_prompt_listed_and_disabled(url):
    aivd("users", "create", "ada", "--role", "admin", "--db", url, "--password-stdin", input=PASSWORD + "\n")
    prompted = aivd("users", "create", "otto", "--role", "operator", "--db", url, input=f"{PASSWORD}\n{PASSWORD}\n")
    assert "user otto created (operator)" in prompted.stdout and PASSWORD not in prompted.stdout + prompted.stderr
    with Users(url) as users:
        assert users.authenticate("ada", PASSWORD).role == "admin" and users.authenticate("otto", PASSWORD).role == "operator"
    listed = aivd("users", "list", "--db", url).stdout
    assert [line.split()[:3] for line in listed.splitlines()] == [["ada", "admin", "created"], ["otto", "operator", "created"]]
    assert "argon2" not in listed and "enabled" in listed
    aivd("users", "disable", "otto", "--db", url)
    assert "disabled" in aivd("users", "list", "--db", url).stdout.splitlines()[1]
    with AuditLog(url) as audit:
        entries = [(entry.actor.split(":")[0], entry.action, entry.target, entry.detail) for entry in audit.entries()]
    assert entries == [("cli", "user_disabled", "otto", None), ("cli", "user_created", "otto", {"role": "operator"}),
                       ("cli", "user_created", "ada", {"role": "admin"})]


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (("users", "create", "a b", "--role", "admin"), PASSWORD + "\n", "invalid username 'a b'"),
    (("users", "create", "ada", "--role", "root"), PASSWORD + "\n", "unknown role 'root'"),
    (("users", "create", "ada", "--role", "admin"), "short\n", "needs at least 12"),
    (("users", "disable", "nobody"), None, "no enabled user 'nobody'"),
])
def test_bad_user_commands_fail_in_one_line_and_write_nothing(url, args, stdin, message):
    extra = ("--password-stdin",) if stdin is not None else ()
    failed = aivd(*args, "--db", url, *extra, rc=2, input=stdin)
    assert failed.stderr.count("\n") == 1 and message in failed.stderr
    assert PASSWORD not in failed.stderr and "short" not in failed.stderr
    with AuditLog(url) as audit:
        assert audit.entries() == []


def test_a_mistyped_confirmation_creates_nobody(url):
    aivd("users", "create", "ada", "--role", "admin", "--db", url, input=f"{PASSWORD}\n{PASSWORD}x\n\n\n", rc=None)
    with Users(url) as users:
        assert users.list() == []


def test_the_password_is_never_an_argument():
    assert aivd("users", "create", "ada", "--role", "admin", "--db", "sqlite://", "--password", PASSWORD, rc=2).returncode == 2


def test_keys_create_and_revoke_are_audited_without_the_key(url):
    key = aivd("keys", "create", "--role", "viewer", "--db", url, "--label", "edge 1").stdout.splitlines()[-1]
    key_id = key.split("_")[1]
    aivd("keys", "revoke", key_id, "--db", url)
    with AuditLog(url) as audit:
        entries = audit.entries()
    assert [(entry.action, entry.target) for entry in entries] == [("key_revoked", key_id), ("key_created", key_id)]
    assert entries[1].detail == {"role": "viewer", "label": "edge 1"} and key.split("_", 2)[2] not in str(entries)


def test_the_database_url_may_come_from_aivd_db_so_that_its_password_stays_out_of_ps(url):
    aivd("keys", "create", "--role", "viewer", env={"AIVD_DB": url})
    assert len(aivd("keys", "list", env={"AIVD_DB": url}).stdout.splitlines()) == 1
    assert "--db" in aivd("keys", "list", env={"AIVD_DB": ""}, rc=2).stderr
