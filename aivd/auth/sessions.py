"""Signed-in console sessions in the result database's `sessions` table.

The browser holds a random token in a cookie; the table holds only the token's SHA-256, so a copy of the
database does not let anyone sign in as a user. (A plain hash is enough here, unlike for passwords: the token is
256 random bits, not something a person chose.) Sessions live on the server, so signing out, disabling a user or
the end of `ttl_s` ends them at once, whatever the browser still holds.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select

from aivd.auth.users import User
from aivd.store.database import StoreBacked, sessions, users


@dataclass(frozen=True)
class Session:
    """A live session: whose it is and the CSRF token its forms must carry."""

    user: User
    csrf_token: str
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions(StoreBacked):
    """Sessions in the result database at a SQLAlchemy URL, each lasting `ttl_s` from sign-in."""

    def __init__(self, url: str, ttl_s: float = 8 * 3600) -> None:
        super().__init__(url)
        self.ttl_s = ttl_s

    def start(self, user: User) -> tuple[str, str]:
        """A new session for `user`: its token (for the cookie) and its CSRF token. Expired sessions are deleted
        on the way, so the table holds about as many rows as there are live sessions."""
        token, csrf_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        with self._store.errors("write"), self._store.engine.begin() as connection:
            connection.execute(delete(sessions).where(sessions.c.expires_at <= now))
            connection.execute(sessions.insert().values(token_hash=_digest(token), user_id=user.id, csrf_token=csrf_token,
                                                        created_at=now, expires_at=now + timedelta(seconds=self.ttl_s)))
        return token, csrf_token

    def resolve(self, token: str) -> Session | None:
        """The live session of this token; None for an unknown or expired token or a disabled user."""
        query = (select(users.c.id, users.c.username, users.c.role, sessions.c.csrf_token, sessions.c.expires_at)
                 .join(users, users.c.id == sessions.c.user_id)
                 .where(sessions.c.token_hash == _digest(token), sessions.c.expires_at > datetime.now(timezone.utc),
                        users.c.disabled_at.is_(None)))
        with self._store.errors("read"), self._store.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        if row is None:
            return None
        return Session(User(row.id, row.username, row.role), row.csrf_token, row.expires_at)

    def end(self, token: str) -> None:
        """End the session of this token (nothing happens for an unknown one)."""
        with self._store.errors("write"), self._store.engine.begin() as connection:
            connection.execute(delete(sessions).where(sessions.c.token_hash == _digest(token)))
