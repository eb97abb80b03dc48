"""The result database's schema, versioned with Alembic: the revisions in migrations/versions, applied in code.

A store brings its database to the newest revision (head) when it opens it, so users never run Alembic
themselves. A database written before aivd versioned its schema has no alembic_version table; its tables show
which revision it is at (each revision added what one release of the code added), and it is stamped so before
it is upgraded. Opening is safe from many processes at once: one migrates while the others wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from aivd.store.errors import StoreError

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed 64-bit number, the same in every aivd: PostgreSQL's advisory lock that serialises migrations.
_POSTGRES_LOCK = 0x61697664_6D696772  # "aivdmigr"


@dataclass(frozen=True)
class SchemaUpgrade:
    before: str | None  # the revision the database was at; None for a database without aivd's tables
    after: str


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for running commands (upgrade, stamp, downgrade) on `connection`: no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def unversioned_revision(connection: Connection) -> str | None:
    """The revision of a database without an alembic_version table, from the tables and columns it has; None when
    it has no runs table (a new database, or one of another application)."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if "runs" not in tables:
        return None
    if "priority" in {column["name"] for column in inspector.get_columns("images")}:
        return "0008"
    if "defects_image_filter" in {index["name"] for index in inspector.get_indexes("defects")}:
        return "0007"
    if "users" in tables:
        return "0006"
    if "api_keys" in tables:
        return "0005"
    if "intake_files" in tables:
        return "0004"
    if "offload" in {column["name"] for column in inspector.get_columns("defects")}:
        return "0003"
    if "status" in {column["name"] for column in inspector.get_columns("runs")}:
        return "0002"
    return "0001"


def _lock(connection: Connection) -> None:
    """Start the migration's transaction holding a lock that other aivd processes opening the database wait for,
    so that two of them never create the same tables; the lock ends with the transaction."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        # Python's sqlite3 would begin a deferred transaction only at the first INSERT, after the DDL: take
        # SQLite's write lock first (waiting up to the driver's busy timeout, 5 s).
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_POSTGRES_LOCK})")


def upgrade(engine: Engine, name: str) -> SchemaUpgrade:
    """Bring the database to head in one transaction (SQLite and PostgreSQL both roll back DDL), stamping a
    database written before versioning first. StoreError, naming the database `name`, for a revision this aivd
    does not know."""
    with engine.connect() as connection:
        config = alembic_config(connection)
        script = ScriptDirectory.from_config(config)
        newest = script.get_current_head()
        assert newest is not None
        # A current database, the usual case, is only read: no write lock for every process that opens it.
        if MigrationContext.configure(connection).get_current_revision() == newest:
            return SchemaUpgrade(newest, newest)
        connection.rollback()  # the lock must begin the transaction, and what was read may change before it is held
        _lock(connection)
        before = MigrationContext.configure(connection).get_current_revision()
        if before is None:
            before = unversioned_revision(connection)
            if before is not None:
                command.stamp(config, before)
        elif before not in {revision.revision for revision in script.walk_revisions()}:
            raise StoreError(f"the result database {name} has schema revision {before!r}, which this aivd does not know "
                             f"(its newest is {newest!r}): it was written by a newer aivd")
        if before != newest:
            command.upgrade(config, "head")
        connection.commit()
    return SchemaUpgrade(before, newest)
