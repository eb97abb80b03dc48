"""Accounts, sessions, the audit log and the sign-in limiter on a real result database (aivd.auth.users,
sessions, audit, limits)."""

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, select, update

from aivd.auth.audit import AuditError, AuditLog
from aivd.auth.limits import LoginLimiter
from aivd.auth.sessions import Sessions
from aivd.auth.users import UserError, Users
from aivd.store.database import sessions as sessions_table
from aivd.store.database import users as users_table

PASSWORD = "correct horse battery"


@pytest.fixture
def users(store_url):
    with Users(store_url) as opened:
        yield opened


def test_a_user_authenticates_with_their_password_only_and_only_its_hash_is_stored(users, store_url):
    made = users.create("ada.l-1", PASSWORD, "operator")
    assert users.authenticate("ada.l-1", PASSWORD) == made and made.role == "operator"
    assert users.authenticate("ada.l-1", PASSWORD + "x") is None
    assert users.authenticate("nobody", PASSWORD) is None
    assert users.authenticate("not a name!", PASSWORD) is None
    engine = create_engine(store_url)
    with engine.connect() as connection:
        stored = connection.execute(select(users_table.c.password_hash)).scalar_one()
    engine.dispose()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_unknown_users_cost_an_argon2_verification_like_known_ones(users):
    users.create("ada", PASSWORD, "viewer")
    users.authenticate("nobody", PASSWORD)  # the dummy hash is made on first use

    def slowest(name):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            users.authenticate(name, "wrong password!")
            times.append(time.perf_counter() - start)
        return min(times)

    known, unknown = slowest("ada"), slowest("nobody")
    assert unknown > known / 3, (known, unknown)  # without the dummy hash an unknown name answers ~100x faster


@pytest.mark.parametrize(("username", "password", "role", "message"), [
    ("a b", PASSWORD, "viewer", "invalid username 'a b'"),
    ("x" * 65, PASSWORD, "viewer", "invalid username"),
    ("", PASSWORD, "viewer", "invalid username"),
    ("ada", "short", "viewer", "needs at least 12"),
    ("ada", PASSWORD, "root", "unknown role 'root'"),
])
def test_bad_accounts_are_refused_in_one_line(users, username, password, role, message):
    with pytest.raises(UserError, match=message) as raised:
        users.create(username, password, role)
    assert "\n" not in str(raised.value) and password not in str(raised.value)


def test_a_taken_username_is_refused(users):
    users.create("ada", PASSWORD, "viewer")
    with pytest.raises(UserError, match="has a user 'ada' already"):
        users.create("ada", PASSWORD + "2", "admin")


def test_a_disabled_user_cannot_sign_in_and_is_listed_as_disabled(users):
    users.create("ada", PASSWORD, "admin")
    users.create("bob", PASSWORD, "viewer")
    assert users.active() == 2
    users.disable("ada")
    assert users.authenticate("ada", PASSWORD) is None and users.active() == 1
    assert [(u.username, u.role, u.disabled_at is not None) for u in users.list()] == [("ada", "admin", True), ("bob", "viewer", False)]
    with pytest.raises(UserError, match="no enabled user 'ada'"):
        users.disable("ada")


def test_sessions_resolve_until_they_end_expire_or_their_user_is_disabled(users, store_url):
    ada = users.create("ada", PASSWORD, "operator")
    with Sessions(store_url) as sessions:
        token, csrf_token = sessions.start(ada)
        found = sessions.resolve(token)
        assert found is not None and found.user == ada and found.csrf_token == csrf_token
        assert sessions.resolve(token + "x") is None
        sessions.end(token)
        assert sessions.resolve(token) is None
        expiring, _ = sessions.start(ada)
        engine = create_engine(store_url)
        with engine.begin() as connection:
            stored = connection.execute(select(sessions_table.c.token_hash)).scalars().all()
            assert expiring not in stored and len(stored[0]) == 64
            connection.execute(update(sessions_table).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        assert sessions.resolve(expiring) is None
        live, _ = sessions.start(ada)  # starting one deletes the expired ones
        with engine.connect() as connection:
            assert len(connection.execute(select(sessions_table.c.id)).all()) == 1
        engine.dispose()
        users.disable("ada")
        assert sessions.resolve(live) is None


def test_the_audit_log_keeps_known_actions_without_secrets_newest_first(store_url):
    with AuditLog(store_url) as audit:
        audit.record("ada", "login", "ada", remote_addr="10.0.0.7")
        audit.record("ada", "promote", "edge v3", {"from": 2, "to": 3})
        audit.record("cli", "key_created", "a1b2c3", {"role": "viewer"})
        with pytest.raises(AuditError, match="unknown audit action 'promoted'"):
            audit.record("ada", "promoted")
        with pytest.raises(AuditError, match="password looks like a secret"):
            audit.record("ada", "user_created", "bob", {"password": "x"})
        entries = audit.entries()
        assert [entry.action for entry in entries] == ["key_created", "promote", "login"]
        assert entries[1].detail == {"from": 2, "to": 3} and entries[2].remote_addr == "10.0.0.7"
        assert [entry.action for entry in audit.entries(action="login")] == ["login"]
        assert len(audit.entries(limit=1)) == 1


def test_the_limiter_locks_a_pair_after_five_failures_in_the_window_and_forgets_after_the_lockout():
    now = [0.0]
    limiter = LoginLimiter(clock=lambda: now[0])
    assert [limiter.failed("ada", "10.0.0.1") for _ in range(4)] == [False] * 4
    limiter.succeeded("ada", "10.0.0.1")  # a success forgets the failures
    assert [limiter.failed("ada", "10.0.0.1") for _ in range(5)] == [False] * 4 + [True]
    assert limiter.retry_after("ada", "10.0.0.1") == pytest.approx(300)
    assert limiter.retry_after("ada", "10.0.0.2") is None and limiter.retry_after("bob", "10.0.0.1") is None
    now[0] = 299.0
    assert limiter.retry_after("ada", "10.0.0.1") == pytest.approx(1)
    now[0] = 300.0
    assert limiter.retry_after("ada", "10.0.0.1") is None
    for _ in range(4):  # failures spread wider than the window never lock
        limiter.failed("bob", "10.0.0.1")
        now[0] += 100
    assert not limiter.failed("bob", "10.0.0.1")


def test_the_limiter_keeps_at_most_max_tracked_pairs():
    limiter = LoginLimiter(max_failures=2, max_tracked=3)
    for index in range(10):
        limiter.failed(f"user{index}", "10.0.0.1")
        limiter.failed(f"user{index}", "10.0.0.1")  # locks
        limiter.failed(f"other{index}", "10.0.0.1")
    assert len(limiter._failures) <= 3 and len(limiter._locked_until) <= 3
    assert limiter.retry_after("user9", "10.0.0.1") is not None
