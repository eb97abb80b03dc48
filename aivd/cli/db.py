"""`aivd db`: the result database's schema (aivd.store.migrate)."""

from __future__ import annotations

import typer

db_app = typer.Typer(help="The result database: bring its schema up to date.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade_command(
    db: str = typer.Option(..., "--db", envvar="AIVD_DB", help="SQLAlchemy URL of the result database, e.g. sqlite:///out/aivd.sqlite or postgresql+psycopg://user:password@host/aivd."),
) -> None:
    """Migrate a result database to this aivd's newest schema revision, keeping its rows (every command that opens
    the database does the same first); prints the revision it was at and the one it is at now."""
    from aivd.cli.ui import fail, shown
    from aivd.store import ResultStore, StoreError

    try:
        with ResultStore(db) as store:
            schema, name = store.schema, store.url
    except StoreError as error:
        raise fail(str(error)) from None
    if schema.before is None:
        change = f"created at revision {schema.after}"
    elif schema.before == schema.after:
        change = f"at revision {schema.after}, up to date"
    else:
        change = f"upgraded from revision {schema.before} to {schema.after}"
    print(f"{shown(name)}: schema {change}")
