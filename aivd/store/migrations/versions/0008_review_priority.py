"""The review queue in the database: each image's drift flag and its queue priority, indexed in the queue's order.

Existing images are scored here with the code's own scoring (aivd.store.priority), so that an old row ranks exactly
as it would had it been written now; their drift flag stays null (unknown: no row recorded it), which adds nothing.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from aivd.store.priority import score_images

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:  # batch mode, as 0006: SQLite's ALTER TABLE does the rest
        batch.add_column(sa.Column("drifted", sa.Boolean))
        batch.add_column(sa.Column("priority", sa.Float))
    op.create_index("images_queue", "images", [sa.text("priority DESC"), "id"])
    op.create_index("images_run_queue", "images", ["run_id", sa.text("priority DESC"), "id"])
    # One UPDATE with a correlated subquery per image over the covering index of 0007: seconds for 100,000 images.
    score_images(op.get_bind(), sa.true())


def downgrade() -> None:
    op.drop_index("images_run_queue", "images")
    op.drop_index("images_queue", "images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("priority")
        batch.drop_column("drifted")
