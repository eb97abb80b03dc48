"""`aivd users`: the console's user accounts in the result database (aivd.auth.users)."""

from __future__ import annotations

import sys

import typer

users_app = typer.Typer(help="Console user accounts (`aivd serve console`): create, list, disable.", no_args_is_help=True)
DB_HELP = "SQLAlchemy URL of the result database that holds the accounts, e.g. sqlite:///out/aivd.sqlite."


@users_app.command("create")
def create(
    username: str = typer.Argument(..., help="1 to 64 letters, digits, '_', '.' or '-'."),
    role: str = typer.Option(..., "--role", help="viewer (looks), operator (also reviews) or admin (also promotes and rolls back)."),
    db: str = typer.Option(..., "--db", envvar="AIVD_DB", help=DB_HELP),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin instead of asking for it twice."),
) -> None:
    """Create a user. The password is asked for (hidden, twice) or read from stdin, never taken as an argument:
    arguments show in the process list and the shell's history."""
    from aivd.auth.audit import AuditLog, command_line_actor
    from aivd.auth.users import MIN_PASSWORD, Users, check_account
    from aivd.cli.ui import fail
    from aivd.core.errors import AivdError

    try:
        check_account(username, role)
    except AivdError as error:
        raise fail(str(error)) from None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"password for {username} (at least {MIN_PASSWORD} characters)", hide_input=True,
                                confirmation_prompt=True)
    try:
        with Users(db) as users, AuditLog(db) as audit:
            users.create(username, password, role)
            audit.record(command_line_actor(), "user_created", username, {"role": role})
    except AivdError as error:
        raise fail(str(error)) from None
    typer.echo(f"user {username} created ({role})")


@users_app.command("list")
def list_users(db: str = typer.Option(..., "--db", envvar="AIVD_DB", help=DB_HELP)) -> None:
    """Every user's name, role, creation and disabling time (never a password or its hash)."""
    from aivd.auth.users import Users
    from aivd.cli.ui import fail
    from aivd.core.errors import AivdError

    try:
        with Users(db) as users:
            stored = users.list()
    except AivdError as error:
        raise fail(str(error)) from None
    for user in stored:
        state = f"disabled {user.disabled_at:%Y-%m-%d %H:%M}" if user.disabled_at else "enabled"
        typer.echo(f"{user.username:<20}  {user.role:<8}  created {user.created_at:%Y-%m-%d %H:%M}  {state}")


@users_app.command("disable")
def disable(
    username: str = typer.Argument(..., help="The user to disable."),
    db: str = typer.Option(..., "--db", envvar="AIVD_DB", help=DB_HELP),
) -> None:
    """Disable a user: they cannot sign in again, and their open sessions end at their next request."""
    from aivd.auth.audit import AuditLog, command_line_actor
    from aivd.auth.users import Users
    from aivd.cli.ui import fail
    from aivd.core.errors import AivdError

    try:
        with Users(db) as users, AuditLog(db) as audit:
            users.disable(username)
            audit.record(command_line_actor(), "user_disabled", username)
    except AivdError as error:
        raise fail(str(error)) from None
    typer.echo(f"user {username} disabled")
