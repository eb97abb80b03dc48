"""`aivd keys`: the cloud service's API keys in the result database (aivd.auth.keys)."""

from __future__ import annotations

from typing import Optional

import typer

keys_app = typer.Typer(help="API keys of aivd's services (`aivd serve ... --db`): create, list, revoke.", no_args_is_help=True)
DB_HELP = "SQLAlchemy URL of the result database that holds the keys, e.g. sqlite:///out/aivd.sqlite."


@keys_app.command("create")
def create(
    role: str = typer.Option(..., "--role", help="viewer (metrics), operator (also analyses) or admin."),
    db: str = typer.Option(..., "--db", envvar="AIVD_DB", help=DB_HELP),
    label: Optional[str] = typer.Option(None, "--label", help="Whose key this is, for `aivd keys list`."),
) -> None:
    """Create a key and print it as the last line: it is shown this once (only its hash is stored)."""
    from aivd.auth.audit import AuditLog, command_line_actor
    from aivd.auth.keys import ApiKeys
    from aivd.cli.ui import fail
    from aivd.core.errors import AivdError

    try:
        with ApiKeys(db) as keys, AuditLog(db) as audit:
            key = keys.create(role, label)
            audit.record(command_line_actor(), "key_created", key.split("_")[1], {"role": role, "label": label})
    except AivdError as error:
        raise fail(str(error)) from None
    typer.echo(f"a new {role} key; it is not shown again, and `aivd keys revoke {key.split('_')[1]}` revokes it:")
    typer.echo(key)


@keys_app.command("list")
def list_keys(db: str = typer.Option(..., "--db", envvar="AIVD_DB", help=DB_HELP)) -> None:
    """Every key's id, role, label, creation and revocation time (never the key or its hash)."""
    from aivd.auth.keys import ApiKeys
    from aivd.cli.ui import fail, shown
    from aivd.core.errors import AivdError

    try:
        with ApiKeys(db) as keys:
            stored = keys.list()
    except AivdError as error:
        raise fail(str(error)) from None
    for key in stored:
        revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        typer.echo(f"{key.key_id}  {key.role:<8}  created {key.created_at:%Y-%m-%d %H:%M}  {revoked}  {shown(key.label or '')}")


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id: the part between `aivd_` and the next underscore."),
    db: str = typer.Option(..., "--db", envvar="AIVD_DB", help=DB_HELP),
) -> None:
    """Revoke a key: a running service refuses it within a minute (it remembers verified keys that long)."""
    from aivd.auth.audit import AuditLog, command_line_actor
    from aivd.auth.keys import ApiKeys
    from aivd.cli.ui import fail
    from aivd.core.errors import AivdError

    try:
        with ApiKeys(db) as keys, AuditLog(db) as audit:
            keys.revoke(key_id)
            audit.record(command_line_actor(), "key_revoked", key_id)
    except AivdError as error:
        raise fail(str(error)) from None
    typer.echo(f"key {key_id} revoked")
