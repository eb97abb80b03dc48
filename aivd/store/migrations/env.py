"""Alembic's environment for the result database: aivd.store.migrate runs every migration on a connection it has
opened, locked and will commit itself, so this only hands that connection to Alembic. There is no alembic.ini."""

from alembic import context

from aivd.store.database import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():  # inside the caller's transaction: Alembic neither begins nor commits one
    context.run_migrations()
