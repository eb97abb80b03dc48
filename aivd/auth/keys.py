"""API keys with roles, kept in the result database's `api_keys` table.

A key is `aivd_<key id>_<secret>` and is shown once, when it is created: the table holds the key id, by which a
key is looked up, and the argon2 hash of the secret, by which it is verified, never the secret itself. Roles are
ordered: a viewer reads metrics, an operator also analyses, an admin may do everything.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update

from aivd.core.errors import AivdError
from aivd.store.database import StoreBacked, api_keys

ROLES = ("viewer", "operator", "admin")  # each role may do what the ones before it may
PREFIX = "aivd"
_hasher = PasswordHasher()  # argon2id with argon2-cffi's RFC 9106 low-memory defaults


class ApiKeyError(AivdError, ValueError):
    """A key operation that cannot be done: an unknown role or key id."""


def role_allows(role: str, needed: str) -> bool:
    """Whether a key of `role` may do what needs `needed`."""
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class StoredKey:
    """A key as `aivd keys list` shows it: everything but its hash."""

    key_id: str
    role: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def _split(key: str) -> tuple[str, str] | None:
    """The key id and secret of a key in aivd's format, or None."""
    parts = key.split("_", 2)  # the key id is hex: the first two underscores are the separators
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class ApiKeys(StoreBacked):
    """The keys in the result database at a SQLAlchemy URL (its schema brought up to date, as every store does)."""

    def create(self, role: str, label: str | None = None) -> str:
        """A new key with `role`; the returned text is the only time its secret exists outside the caller."""
        if role not in ROLES:
            raise ApiKeyError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self._store.errors("write"), self._store.engine.begin() as connection:
            connection.execute(api_keys.insert().values(
                key_id=key_id, secret_hash=_hasher.hash(secret), role=role, label=label, created_at=datetime.now(timezone.utc)))
        return f"{PREFIX}_{key_id}_{secret}"

    def verify(self, key: str) -> str | None:
        """The role of a valid, unrevoked key; None for any other text. Costs one argon2 verification (tens of
        milliseconds, by design) for a known key id."""
        parts = _split(key)
        if parts is None:
            return None
        key_id, secret = parts
        query = select(api_keys.c.secret_hash, api_keys.c.role).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        with self._store.errors("read"), self._store.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        if row is None:
            return None
        try:
            _hasher.verify(row.secret_hash, secret)
        except (VerificationError, InvalidHashError):
            return None
        return row.role

    def revoke(self, key_id: str) -> None:
        """Revoke the key with this id (the part between the first two underscores); ApiKeyError when there is no
        such key or it is revoked already."""
        with self._store.errors("write"), self._store.engine.begin() as connection:
            done = connection.execute(update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                                      .values(revoked_at=datetime.now(timezone.utc)))
        if done.rowcount != 1:
            raise ApiKeyError(f"the result database {self.url} has no valid key {key_id!r}")

    def list(self) -> list[StoredKey]:
        """Every key, revoked ones included, oldest first."""
        query = select(api_keys.c.key_id, api_keys.c.role, api_keys.c.label, api_keys.c.created_at, api_keys.c.revoked_at).order_by(api_keys.c.id)
        with self._store.errors("read"), self._store.engine.connect() as connection:
            return [StoredKey(*row) for row in connection.execute(query)]

    def active(self) -> int:
        """How many keys are not revoked."""
        query = select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
        with self._store.errors("read"), self._store.engine.connect() as connection:
            return connection.execute(query).scalar_one()


class CachedVerifier:
    """`ApiKeys.verify` with the roles of valid keys remembered for `ttl_s`: argon2 costs tens of milliseconds
    on purpose, too much for every request. The cache is keyed by the key's SHA-256, so the key itself is not
    kept in memory; a revoked key therefore stays valid for up to `ttl_s` in a running service. Only valid keys
    are remembered (and at most `max_entries`), so random keys cannot grow the cache."""

    def __init__(self, keys: ApiKeys, ttl_s: float = 60.0, max_entries: int = 1024) -> None:
        self.keys = keys
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[bytes, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        role = self.keys.verify(key)
        with self._lock:
            if role is None:
                self._cache.pop(digest, None)
            else:
                if len(self._cache) >= self.max_entries:
                    self._cache = {d: e for d, e in self._cache.items() if now - e[0] < self.ttl_s}
                if len(self._cache) < self.max_entries:
                    self._cache[digest] = (now, role)
        return role
