"""runs.status: running, finished or interrupted, for resumable runs (8046456); null for runs recorded before.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("runs", sa.Column("status", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:  # SQLite drops a column by copying the table; batch does that
        batch.drop_column("status")
