"""Console accounts in the result database's `users` table: a username, a role of aivd.auth.keys.ROLES, and the
argon2 hash of a password that only its owner knows.

`authenticate` costs one argon2 verification whether or not the user exists (an unknown name is checked against a
dummy hash), so the time an answer takes does not tell which usernames exist.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from aivd.auth.keys import ROLES
from aivd.core.errors import AivdError
from aivd.store.database import StoreBacked, users

USERNAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_PASSWORD = 12  # NIST SP 800-63B asks for at least 8; these accounts can promote models and read every image
_hasher = PasswordHasher()  # argon2id with the defaults aivd.auth.keys uses for API keys


class UserError(AivdError, ValueError):
    """An account operation that cannot be done: a bad username, password or role, or an unknown user."""


@dataclass(frozen=True)
class User:
    """A signed-in (or signing-in) user."""

    id: int
    username: str
    role: str


@dataclass(frozen=True)
class StoredUser:
    """A user as `aivd users list` shows it: everything but the password hash."""

    username: str
    role: str
    created_at: datetime
    disabled_at: datetime | None


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, verified for unknown usernames so that they cost as much as known ones."""
    return _hasher.hash(secrets.token_urlsafe(16))


def check_account(username: str, role: str) -> None:
    """UserError for a username or role an account may not have (checked before anyone is asked for a password)."""
    if not USERNAME.fullmatch(username):
        raise UserError(f"invalid username {username!r}: use 1 to 64 letters, digits, '_', '.' or '-'")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")


class Users(StoreBacked):
    """The accounts in the result database at a SQLAlchemy URL (its schema brought up to date, as every store does)."""

    def create(self, username: str, password: str, role: str) -> User:
        """A new enabled user; UserError for a bad username, a short password, an unknown role or a taken name."""
        check_account(username, role)
        if len(password) < MIN_PASSWORD:
            raise UserError(f"the password has {len(password)} characters; it needs at least {MIN_PASSWORD}")
        values = {"username": username, "password_hash": _hasher.hash(password), "role": role, "created_at": datetime.now(timezone.utc)}
        try:
            with self._store.errors("write"), self._store.engine.begin() as connection:
                result = connection.execute(users.insert().values(**values))
        except AivdError as error:
            if isinstance(error.__cause__, IntegrityError):  # the unique username: the only constraint an insert can break
                raise UserError(f"the result database {self.url} has a user {username!r} already") from None
            raise
        key = result.inserted_primary_key
        assert key is not None
        return User(key[0], username, role)

    def authenticate(self, username: str, password: str) -> User | None:
        """The user, when `password` is theirs and they are not disabled; None otherwise. Always costs one argon2
        verification (tens of milliseconds, by design)."""
        row = None
        if USERNAME.fullmatch(username):
            query = select(users.c.id, users.c.username, users.c.role, users.c.password_hash, users.c.disabled_at).where(users.c.username == username)
            with self._store.errors("read"), self._store.engine.connect() as connection:
                row = connection.execute(query).one_or_none()
        try:
            _hasher.verify(row.password_hash if row is not None else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled_at is not None:
            return None
        return User(row.id, row.username, row.role)

    def disable(self, username: str) -> None:
        """Disable an enabled user: they can no longer sign in, and their sessions end (aivd.auth.sessions checks)."""
        with self._store.errors("write"), self._store.engine.begin() as connection:
            done = connection.execute(update(users).where(users.c.username == username, users.c.disabled_at.is_(None))
                                      .values(disabled_at=datetime.now(timezone.utc)))
        if done.rowcount != 1:
            raise UserError(f"the result database {self.url} has no enabled user {username!r}")

    def list(self) -> list[StoredUser]:
        """Every user, disabled ones included, oldest first."""
        query = select(users.c.username, users.c.role, users.c.created_at, users.c.disabled_at).order_by(users.c.id)
        with self._store.errors("read"), self._store.engine.connect() as connection:
            return [StoredUser(*row) for row in connection.execute(query)]

    def active(self) -> int:
        """How many users are enabled."""
        query = select(func.count()).select_from(users).where(users.c.disabled_at.is_(None))
        with self._store.errors("read"), self._store.engine.connect() as connection:
            return connection.execute(query).scalar_one()
