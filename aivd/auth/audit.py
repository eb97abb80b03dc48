"""The audit log: who did what to the system, and when, in the result database's `audit_log` table.

Only the actions in ACTIONS are recorded, so that a misspelt action fails where it is written rather than
vanishing from every query. `detail` is JSON for context (a model version, a key id, a verdict) and must never
hold a secret: `record` refuses detail names that look like one.
"""

from __future__ import annotations

import getpass
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from aivd.core.errors import AivdError
from aivd.store.database import StoreBacked, audit_log

ACTIONS = frozenset({
    "login", "login_failed", "login_locked", "logout", "review", "promote", "rollback",
    "key_created", "key_revoked", "user_created", "user_disabled",
})
_SECRET_NAME = re.compile(r"password|secret|token|cookie|authorization", re.IGNORECASE)


def command_line_actor() -> str:
    """The actor of a change made with the `aivd` command: `cli:` and the operating-system account running it."""
    try:
        return f"cli:{getpass.getuser()}"
    except OSError:  # no account name for this uid (some containers)
        return "cli"


class AuditError(AivdError, ValueError):
    """An entry that may not be recorded: an unknown action, or a detail that looks like a secret."""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None
    remote_addr: str | None


class AuditLog(StoreBacked):
    """The audit log in the result database at a SQLAlchemy URL."""

    def record(self, actor: str, action: str, target: str | None = None, detail: dict[str, Any] | None = None,
               remote_addr: str | None = None) -> None:
        """Append an entry. `actor` is a username, `key:<key id>`, `local` or `cli:<account>`; `target` what was acted on."""
        if action not in ACTIONS:
            raise AuditError(f"unknown audit action {action!r}: one of {', '.join(sorted(ACTIONS))}")
        secret = [name for name in detail or {} if _SECRET_NAME.search(name)]
        if secret:
            raise AuditError(f"audit detail {', '.join(secret)} looks like a secret; the audit log never holds one")
        with self._store.errors("write"), self._store.engine.begin() as connection:
            connection.execute(audit_log.insert().values(
                at=datetime.now(timezone.utc), actor=actor, action=action, target=target,
                detail=None if detail is None else json.dumps(detail, default=str), remote_addr=remote_addr))

    def entries(self, limit: int = 100, action: str | None = None) -> list[AuditEntry]:
        """The newest `limit` entries, newest first, of one action or of all."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        with self._store.errors("read"), self._store.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [AuditEntry(row.id, row.at, row.actor, row.action, row.target,
                           None if row.detail is None else json.loads(row.detail), row.remote_addr) for row in rows]
