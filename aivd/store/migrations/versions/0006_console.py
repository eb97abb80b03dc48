"""The operator console's tables: when each image was inspected, user accounts and their sessions, human reviews
and the audit log.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:  # batch mode: SQLite cannot add an indexed column otherwise
        batch.add_column(sa.Column("inspected_at", sa.DateTime(timezone=True)))
        batch.create_index("images_inspected_at", ["inspected_at"])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_row_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False, index=True),
        sa.Column("reviewer", sa.String(255), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False, index=True),
        sa.Column("target", sa.Text),
        sa.Column("detail", sa.Text),
        sa.Column("remote_addr", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("reviews")
    op.drop_table("sessions")
    op.drop_table("users")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("images_inspected_at")
        batch.drop_column("inspected_at")
