"""The first schema: runs, images, defects and timings, as aivd wrote them from d574e17 on.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("images", sa.Integer),
        sa.Column("ok", sa.Integer),
        sa.Column("failed", sa.Integer),
        sa.Column("defects", sa.Integer),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("image_id", sa.String(255), nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("template", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("detector", sa.String(255)),
        sa.Column("analyzer", sa.String(255)),
        sa.Column("cloud_error", sa.Text),
        sa.Column("bytes_to_cloud", sa.BigInteger, nullable=False),
        sa.Column("bytes_from_cloud", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_images_run_id", "images", ["run_id"])
    op.create_table(
        "defects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_row_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
        sa.Column("rejected", sa.Boolean, nullable=False),
        sa.Column("x1", sa.Float, nullable=False),
        sa.Column("y1", sa.Float, nullable=False),
        sa.Column("x2", sa.Float, nullable=False),
        sa.Column("y2", sa.Float, nullable=False),
        sa.Column("defect_type", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("edge_type", sa.String(64)),
        sa.Column("edge_confidence", sa.Float),
        sa.Column("severity", sa.String(16)),
        sa.Column("likely_causes", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("recommended_action", sa.Text),
        sa.Column("measurements", sa.Text),
    )
    op.create_index("ix_defects_image_row_id", "defects", ["image_row_id"])
    op.create_index("ix_defects_defect_type", "defects", ["defect_type"])
    op.create_table(
        "timings",
        sa.Column("image_row_id", sa.Integer, sa.ForeignKey("images.id"), primary_key=True),
        sa.Column("stage", sa.String(64), primary_key=True),
        sa.Column("ms", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("timings", "defects", "images", "runs"):  # referencing tables first
        op.drop_table(table)
