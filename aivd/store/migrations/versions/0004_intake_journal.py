"""intake_files: `aivd watch`'s journal of the files it takes in hand (ab35905).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "intake_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("image_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_row_id", sa.Integer, sa.ForeignKey("images.id")),
        sa.UniqueConstraint("run_id", "path", "size", "mtime_ns"),
    )
    op.create_index("intake_files_state", "intake_files", ["run_id", "state"])
    op.create_index("intake_files_image", "intake_files", ["run_id", "image_id"])


def downgrade() -> None:
    op.drop_table("intake_files")
