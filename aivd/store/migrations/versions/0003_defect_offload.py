"""defects.offload: whether the region went to the cloud and why, as JSON (0d8104b); null for older defects.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("defects", sa.Column("offload", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("defects") as batch:  # SQLite drops a column by copying the table; batch does that
        batch.drop_column("offload")
